"""Storage commands: list, upload, download and delete local paths or s3:// URLs.

S3 endpoint and credentials come from the environment or a .env file
(CALIBSEG_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
"""

from __future__ import annotations

from contextlib import contextmanager

import typer

app = typer.Typer(no_args_is_help=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def _progress(verb: str):
    """A rich byte-progress bar; yields (on_start, on_bytes) callbacks for push/pull."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from calibseg.cli.common import console

    with Progress(
        TextColumn(f"[bold]{verb}[/] {{task.description}}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        state: dict = {}

        def on_start(todo: list, total: int) -> None:
            state["task"] = bar.add_task(f"{len(todo)} file(s)", total=max(total, 1))
            if total == 0:
                bar.update(state["task"], completed=1)

        def on_bytes(n: int) -> None:
            bar.advance(state["task"], n)

        yield on_start, on_bytes


def _report(verb: str, result) -> None:
    from calibseg.cli.common import console

    console.print(
        f"{verb} {len(result.copied)} file(s) ({_human(result.bytes)}), "
        f"skipped {len(result.skipped)} identical file(s)."
    )


@app.command("ls")
def ls_cmd(
    urls: list[str] = typer.Argument(..., help="Local folders/files or s3:// URLs."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Descend."),
) -> None:
    """List files with sizes (any number of keys; S3 listings are paginated).

    Example: calibseg storage ls s3://my-bucket/bundles/
    """
    from calibseg import storage
    from calibseg.cli.common import console, print_table

    for url in urls:
        files = storage.list_files(url, recursive=recursive)
        print_table(
            storage.redact(url), ("path", "size"), [[e["rel"], _human(e["size"])] for e in files]
        )
        console.print(f"{len(files)} file(s), {_human(sum(e['size'] for e in files))}")


@app.command("push")
def push_cmd(
    src: str = typer.Argument(..., help="Local file or folder."),
    dst: str = typer.Argument(..., help="Destination s3:// URL (prefix)."),
    part_size_mib: int = typer.Option(8, "--part-size", help="Multipart part size in MiB."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be sent."),
) -> None:
    """Upload a file or folder recursively; files identical to the remote copy are skipped.

    Example: calibseg storage push bundles/ s3://my-bucket/bundles
    """
    from calibseg import storage
    from calibseg.cli.common import console

    with _progress("push") as (on_start, on_bytes):
        result = storage.push(
            src,
            dst,
            part_size=part_size_mib * 2**20,
            dry_run=dry_run,
            on_start=on_start,
            on_bytes=on_bytes,
        )
    if dry_run:
        for rel in result.copied:
            console.print(f"would upload {rel}", highlight=False)
    _report("would upload" if dry_run else "uploaded", result)


@app.command("pull")
def pull_cmd(
    src: str = typer.Argument(..., help="Source s3:// URL (object or prefix)."),
    dst: str = typer.Argument(..., help="Local file or folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be fetched."),
) -> None:
    """Download an object or prefix recursively; identical local files are skipped.

    Every key is checked first: keys that would land outside DST (``..``), absolute keys and
    keys with backslashes are refused and nothing is written.

    Example: calibseg storage pull s3://my-bucket/bundles/kits23_hardl1ace_dice_1a2b3c4d bundles/kits23_hardl1ace_dice_1a2b3c4d
    """
    from calibseg import storage
    from calibseg.cli.common import console

    with _progress("pull") as (on_start, on_bytes):
        result = storage.pull(src, dst, dry_run=dry_run, on_start=on_start, on_bytes=on_bytes)
    if dry_run:
        for rel in result.copied:
            console.print(f"would download {rel}", highlight=False)
    _report("would download" if dry_run else "downloaded", result)


@app.command("rm")
def rm_cmd(
    urls: list[str] = typer.Argument(..., help="Files, folders or s3:// URLs/prefixes."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Really delete (otherwise only list)."),
) -> None:
    """Delete files recursively. Without --yes, prints what would be deleted and exits 1.

    Example: calibseg storage rm s3://my-bucket/tmp/ --yes
    """
    from calibseg import storage
    from calibseg.cli.common import console, fail

    planned = {url: storage.remove(url, dry_run=True) for url in urls}
    total = sum(len(v) for v in planned.values())
    if not yes:
        for files in planned.values():
            for f in files:
                console.print(f"would delete {storage.redact(f)}", highlight=False)
        fail(f"refusing to delete {total} file(s) without --yes.")
    for url in urls:
        storage.remove(url)
    console.print(f"deleted {total} file(s).")

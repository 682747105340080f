"""Shared CLI helpers: the rich consoles and the one error path of every command.

Exit codes: 0 done; 1 error or refusal; 2 usage error (click's convention: unknown option,
missing argument, bad value — click prints the usage line); 130 interrupted (Ctrl-C; a rerun
of the same command resumes). Errors are one line on stderr; ``calibseg --debug …`` or
``CALIBSEG_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from types import TracebackType

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# errors whose message is written for the user: shown as one line (no traceback)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
    TimeoutError,
)
# OS write/read failures whose cause the user can fix (disk full, quota, read-only, I/O error)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_OS_USER_ERRNOS = _WRITE_ERRNOS | {errno.EIO, errno.EACCES}
# modules whose exceptions mean "the object store / network failed", not a calibseg bug
_REMOTE_MODULES = ("s3fs", "botocore", "aiobotocore", "aiohttp", "fsspec", "urllib3")

_STATE = {"debug": False}


def _exception_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage) exception classes of typer, and of click where typer still uses it
    (typer vendors click since 0.2x; older versions raise click's classes)."""
    exit_, abort = [typer.Exit], [typer.Abort]
    usage = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click
    except ImportError:  # pragma: no cover - typer without click
        pass
    else:
        exit_.append(click.exceptions.Exit)
        abort.append(click.exceptions.Abort)
        usage.append(click.ClickException)
    return tuple(exit_), tuple(abort), tuple(usage)


_EXIT, _ABORT, _USAGE = _exception_classes()


class CalibsegError(Exception):
    """An error whose message is meant for the user."""


def set_debug(enabled: bool) -> None:
    """Show tracebacks with every error (``calibseg --debug``)."""
    _STATE["debug"] = bool(enabled)


def debug_enabled() -> bool:
    """True with ``--debug`` or ``CALIBSEG_DEBUG`` set to 1/true/yes."""
    env = os.environ.get("CALIBSEG_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return _STATE["debug"] or env


def fail(message: str) -> None:
    """Print one error line and exit 1."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``raise … from None`` ends the chain)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = (
            exc.__cause__
            if exc.__cause__ is not None
            else (None if exc.__suppress_context__ else exc.__context__)
        )
    return out


def _modules(tb: TracebackType | None) -> set[str]:
    mods = set()
    while tb is not None:
        mods.add(str(tb.tb_frame.f_globals.get("__name__", "")).split(".", 1)[0])
        tb = tb.tb_next
    return mods


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _remote_message(exc: BaseException) -> str | None:
    """One line for an object-store / network failure anywhere in the exception chain."""
    from calibseg import storage

    for e in _chain(exc):
        if not (_modules(e.__traceback__) & set(_REMOTE_MODULES)) and not type(
            e
        ).__module__.startswith(_REMOTE_MODULES):
            continue
        msg = storage.describe_remote_error(e)
        if msg is not None:
            return msg
    return None


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """``(one-line message, is_user_error)`` for an exception that ended a command.

    User errors: calibseg's own validation (ValueError, FileNotFoundError, …, CalibsegError),
    storage failures (unreachable endpoint, rejected credentials, missing bucket) and OS
    failures the user can fix (disk full, read-only file system), named with the file.
    Anything else (RuntimeError, KeyError, CUDA out of memory, …) is an internal error.
    """
    from calibseg import storage

    remote = _remote_message(exc)
    if remote is not None:
        return remote, True
    if isinstance(exc, OSError) and exc.errno in _OS_USER_ERRNOS:
        where = f" {storage.redact(exc.filename)}" if exc.filename else ""
        verb = "cannot write" if exc.errno in _WRITE_ERRNOS else "cannot access"
        reason = exc.strerror or os.strerror(exc.errno)
        return f"{verb}{where}: {reason} (errno {errno.errorcode.get(exc.errno, exc.errno)}).", True
    if isinstance(exc, (CalibsegError, *USER_ERRORS)):
        return storage.redact(_first_line(exc)), True
    name = type(exc).__name__
    hint = ""
    if "out of memory" in str(exc).lower():
        hint = " (reduce batch_size or roi_size in the bundle's configs)"
    return (
        f"internal error ({name}): {storage.redact(_first_line(exc))}{hint} — rerun with "
        "--debug (or CALIBSEG_DEBUG=1) for the traceback and report it.",
        False,
    )


def _interrupted() -> int:
    err_console.print(
        "[bold red]interrupted[/]: nothing was lost; rerun the same command to resume.",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_INTERRUPTED


def run_app(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run a typer app and return the process exit code (see the module notes).

    Every command's errors go through here: one red line on stderr (``--debug`` /
    ``CALIBSEG_DEBUG=1``: with the traceback).
    """
    try:
        rc = app(args=args, standalone_mode=False)
    except _EXIT as e:
        rc = e.exit_code
    except _ABORT as e:
        if any(isinstance(x, KeyboardInterrupt) for x in _chain(e)):
            return _interrupted()
        err_console.print("[bold red]aborted[/]", highlight=False)
        return EXIT_ERROR
    except _USAGE as e:  # usage errors: click's own message and exit code (2)
        if hasattr(e, "show"):
            e.show()
        else:  # pragma: no cover - a bare TyperException
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return int(getattr(e, "exit_code", EXIT_ERROR))
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # noqa: BLE001 - the one error path of every command
        msg, _user = describe_error(e)
        if debug_enabled():
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    if rc == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130) and returns the code
        return _interrupted()
    return rc if isinstance(rc, int) else EXIT_OK


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Sequence[bool] | None = None,
    out: Console | None = None,
) -> None:
    """Print a table whose cells are never cut, whatever the terminal width.

    When every cell fits on one line within the console width the rows are drawn as a rich
    table (cells never wrapped); otherwise each row is printed vertically as ``column  value``
    lines under the row's first cell, so numbers stay whole and long names wrap at spaces.

    Args:
        title: line printed above the table.
        columns: header of each column.
        rows: the cells (strings), one sequence per row, as many as ``columns``.
        right: per column, True to right-align (numbers); default: all but the first.
        out: console to print to (default: the standard output console).
    """
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    out = out or console
    rows = [[str(c) for c in r] for r in rows]
    right = list(right) if right is not None else [i > 0 for i in range(len(columns))]
    widths = [
        max([cell_len(str(h))] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(columns)
    ]
    needed = sum(widths) + 3 * len(widths) + 1  # one space of padding each side, borders
    if needed <= out.width:
        table = Table(title=title, title_justify="left")
        for h, r in zip(columns, right, strict=True):
            table.add_column(str(h), justify="right" if r else "left", no_wrap=True)
        for r in rows:
            table.add_row(*r)
        out.print(table)
        return
    out.print(Text(title, style="italic"))
    key_w = max(cell_len(str(h)) for h in columns[1:]) if len(columns) > 1 else 0
    for r in rows:
        out.print(Text(f"{columns[0]}: {r[0]}", style="bold"), highlight=False)
        for h, v in zip(columns[1:], r[1:], strict=True):
            out.print(Text(f"  {str(h).ljust(key_w)}  {v}"), highlight=False)

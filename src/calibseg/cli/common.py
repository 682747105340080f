"""Shared CLI helpers: one-line errors, the rich console."""

from __future__ import annotations

import click
import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

# errors shown as one line (no traceback); anything else is a bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    KeyError,
    PermissionError,
    OSError,
    RuntimeError,
)


class CalibsegError(Exception):
    """An error whose message is meant for the user."""


def fail(message: str) -> None:
    """Print one error line and exit 1."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def run_app(app: typer.Typer) -> int:
    """Run a typer app standalone; user errors → one line on stderr, exit code 1."""
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print("[bold red]aborted[/]")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: rerun the same command to resume.")
        return 130
    except (CalibsegError, *USER_ERRORS) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            msg = f"unknown key {msg}"
        err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        return 1
    return 0

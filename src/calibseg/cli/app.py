"""The ``calibseg`` command. Each command group lives in its own module; heavy libraries
(torch, MONAI) are imported inside commands so ``calibseg --help`` stays fast."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="calibseg",
    help="Calibrated probabilities and honest uncertainty for segmentation networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, attribute): a typer app mounted as a group, or a register(app) function
_GROUPS: list[tuple[str, str | None]] = [
    ("calibseg.cli.bundle", "bundle"),
    ("calibseg.cli.data", "data"),
    ("calibseg.cli.run", None),
    ("calibseg.cli.evaluate", None),
    ("calibseg.cli.ensemble", "ensemble"),
    ("calibseg.cli.metrics", "metrics"),
    ("calibseg.cli.report", None),
    ("calibseg.cli.storage", "storage"),
    ("calibseg.cli.demo", None),
    ("calibseg.cli.study", None),
    ("calibseg.cli.nnunet", "nnunet"),
]


@app.callback()
def _options(
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show the traceback of any error (same as CALIBSEG_DEBUG=1). Give it before the "
        "command: calibseg --debug train …",
    ),
) -> None:
    """Calibrated probabilities and honest uncertainty for segmentation networks.

    Exit codes: 0 done, 1 error or refusal, 2 usage error (unknown option, missing or bad
    argument), 130 interrupted (rerun the same command to resume).
    """
    from calibseg.cli.common import set_debug

    set_debug(debug)


for _module, _name in _GROUPS:
    _mod = importlib.import_module(_module)
    if _name is None:
        _mod.register(app)
    else:
        app.add_typer(_mod.app, name=_name, help=_mod.__doc__.strip().splitlines()[0])


def main() -> None:
    """Entry point: run the app and exit with its code (0 done, 1 error, 2 usage, 130 Ctrl-C)."""
    from calibseg.cli.common import run_app

    sys.exit(run_app(app))

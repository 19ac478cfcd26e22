"""The ``salt`` application: the root command, its options, and the command groups.

Each group lives in its own module (one job each); this module only assembles them.
"""

from __future__ import annotations

import typer

from salt_vla import __version__
from salt_vla.cli import cache, data, demo, masks, runs, teacher, train
from salt_vla.cli import eval as evaluate
from salt_vla.cli.common import SaltGroup, say

app = typer.Typer(
    name="salt",
    cls=SaltGroup,
    help=(
        "salt-vla: train video encoders with SALT. Stage 1 caches a frozen VideoMAEv2 "
        "teacher's latents once (`salt cache build`); stage 2 trains a ViT student to "
        "predict them at masked positions (`salt train`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version_callback(value: bool) -> None:
    if value:
        say(f"salt-vla {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """salt-vla command line."""


app.add_typer(data.app, name="data")
app.add_typer(masks.app, name="masks")
app.add_typer(cache.app, name="cache")
app.add_typer(train.exp_app, name="exp")
app.command("train", help=train.TRAIN_HELP)(train.train_cmd)
app.add_typer(evaluate.app, name="eval")
app.command("sweep", help=runs.SWEEP_HELP)(runs.sweep_cmd)
app.command("status", help=runs.STATUS_HELP)(runs.status_cmd)
app.command("report", help=runs.REPORT_HELP)(runs.report_cmd)
app.command("export", help=runs.EXPORT_HELP)(runs.export_cmd)
app.add_typer(teacher.app, name="teacher")
app.command("demo", help=demo.DEMO_HELP)(demo.demo_cmd)


def main() -> None:
    """Console-script entry point."""
    app()

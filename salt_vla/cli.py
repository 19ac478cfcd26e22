"""The ``salt`` command line. Thin: it parses options, resolves paths, calls library code.

Each command group lives in its own section below; library code never imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from salt_vla import __version__
from salt_vla.paths import Resolved, resolve_cache_dir, resolve_data_root

app = typer.Typer(
    name="salt",
    help=(
        "salt-vla: train video encoders with SALT. Stage 1 caches a frozen VideoMAEv2 "
        "teacher's latents once (`salt cache build`); stage 2 trains a ViT student to "
        "predict them at masked positions (`salt train`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Inspect SSv2-layout datasets and generate synthetic ones.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
masks_app = typer.Typer(help="Inspect the masks the trainer will use.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")
cache_app = typer.Typer(
    help="Stage 1: build, verify and inspect the teacher-latent cache.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

DataOpt = typer.Option(
    None,
    "--data",
    help="Dataset root in the SSv2 layout. Default: $SALT_DATA, else /mnt/ssv2.",
    show_default=False,
)
CacheOpt = typer.Option(
    None,
    "--cache",
    help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
    show_default=False,
)


def say(msg: str) -> None:
    """Print a line to stdout (progress and results)."""
    typer.echo(msg)


def fail(msg: str, code: int = 1) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise."""
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def show_resolved(name: str, resolved: Resolved) -> None:
    """Every command prints the paths it resolved, and from where."""
    say(f"{name}: {resolved}")


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


# --- data -------------------------------------------------------------------------------

# --- masks ------------------------------------------------------------------------------

# --- cache ------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


# keep names used by command sections importable for ruff while sections are filled in
__all__ = ["app", "main", "Path", "Optional", "resolve_cache_dir", "resolve_data_root"]

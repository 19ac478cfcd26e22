"""What every command module shares: printing, the one error-to-exit-code mapping, options.

Library errors are :class:`~salt_vla.errors.SaltError`; :class:`SaltGroup` (the root
command's class) catches them once for every command, prints ``error: <message>`` to stderr
and exits 1. Any other exception is a bug and keeps its traceback. Command bodies therefore
never catch library errors themselves; they raise :func:`fail` only for mistakes in the
command line itself (two options that exclude each other, ...).

Importing this module must stay cheap (no torch): ``salt --help`` imports every command
module, and each command imports the library it needs inside its body.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from salt_vla.errors import SaltError
from salt_vla.paths import Resolved


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


def main_rank_echo() -> tuple[Callable[[str], None], bool]:
    """``(echo, is_main)``: under torchrun only rank 0 prints."""
    from salt_vla.distributed import is_main_process

    main = is_main_process()
    return (say if main else (lambda s: None)), main


class SaltGroup(TyperGroup):
    """The root command: maps every :class:`SaltError` a command raises to exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SaltError as e:
            raise fail(str(e)) from None


def group(help: str) -> typer.Typer:
    """A command group (``salt data``, ``salt cache``, ...) that prints its help when bare."""
    return typer.Typer(help=help, no_args_is_help=True)


def cache_dir_arg(directory: Path | None, data: Path | None, split: str) -> Path:
    """DIR if given, else the default cache of ``split`` (printed with where it came from)."""
    from salt_vla.paths import resolve_cache_dir

    if directory is not None:
        say(f"cache: {directory}  (from DIR)")
        return directory
    resolved = resolve_cache_dir(None, data, split)
    show_resolved("cache", resolved)
    return resolved.path

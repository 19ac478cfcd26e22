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
from typer.core import TyperArgument, TyperGroup, TyperOption

from salt_vla.errors import SaltError
from salt_vla.paths import Resolved


def say(msg: str) -> None:
    """Print a line to stdout (progress and results)."""
    typer.echo(msg)


def fail(msg: str, code: int = 1) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise."""
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def warn(msg: str) -> None:
    """Print a warning to stderr (the command goes on)."""
    typer.secho(f"warning: {msg}", err=True, fg=typer.colors.YELLOW)


def deprecated_option(old: str, old_value: str | None, new: str, value: str | None
                      ) -> str | None:
    """The value of option ``new``, also accepted under its old name ``old`` (with one
    deprecation line); both at once is refused."""
    if old_value is None:
        return value
    if value is not None:
        raise fail(f"{old} is the old name of {new}: give only {new}")
    warn(f"{old} is deprecated: it is now {new} (same value)")
    return old_value


def show_resolved(name: str, resolved: Resolved) -> None:
    """Every command prints the paths it resolved, and from where."""
    say(f"{name}: {resolved}")


def main_rank_echo() -> tuple[Callable[[str], None], bool]:
    """``(echo, is_main)``: under torchrun only rank 0 prints."""
    from salt_vla.distributed import is_main_process

    main = is_main_process()
    return (say if main else (lambda s: None)), main


# --- help text: what a value looks like, in words, not Python type names ---------------------
#
# This typer renders each option's type from its annotation: `<bool>` beside flags, `<str>`,
# `<list[str]>`, `<list[Path]>`. The help shows an option's metavar instead where one is set
# (``metavar="KEY=VALUE"``); for the rest, the classes below print click's words (TEXT,
# INTEGER, FLOAT, PATH), nothing beside a flag, and no type column for arguments, whose name
# (NAME, DIR, ...) says what to give. SaltGroup applies them to every command once.

_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH",
               "Path": "PATH", "bool": ""}


def _plain_type(label: str) -> str:
    """``<int>`` -> ``INTEGER``, ``<list[str]>`` -> ``TEXT``, ``<a|b>`` -> ``a|b``."""
    inner = label.strip("<>")
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[5:-1]
    return _TYPE_WORDS.get(inner, inner)


class _PlainOption(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        return _plain_type(str(self.display_type(ctx))) or None


class _PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _plain_help(command: Any) -> None:
    """Give ``command`` (and a group's subcommands) the plain type words above; arguments
    without a metavar are named in capitals (``NAME``), and an optional argument's metavar
    loses its own brackets (the usage line adds them: ``[DIR]``, not ``[[DIR]]``)."""
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
    params = list(getattr(command, "params", []))
    if hasattr(command, "get_help_option"):
        helper = command.get_help_option(typer.Context(command))
        params += [helper] if helper is not None else []
    for param in params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = param.name.upper()
            elif not param.required and param.metavar.startswith("[") and \
                    param.metavar.endswith("]"):
                param.metavar = param.metavar[1:-1]
            param.__class__ = _PlainArgument
        elif isinstance(param, TyperOption):
            param.__class__ = _PlainOption


class SaltGroup(TyperGroup):
    """The root command: maps every :class:`SaltError` a command raises to exit code 1, and
    words its commands' help plainly (see ``_plain_help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

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

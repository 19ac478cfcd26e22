"""The ``salt`` command line: thin modules that parse options, call one library function and
print. ``salt_vla.cli.app`` is the Typer application, ``main`` the console-script entry."""

from salt_vla.cli.main import app, main

__all__ = ["app", "main"]

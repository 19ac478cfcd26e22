"""The ``salt`` command line: thin modules that parse options, call one library function and
print. ``salt_vla.cli.app`` is the Typer application, ``main`` the console-script entry.

The command line is part of the training stack (`pip install 'salt-vla[train]'`); the slim
install (`pip install salt-vla`, for loading exported encoders) lacks it, and ``main`` says so
in one line instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

# Import names of the `train` extra's packages (pyproject.toml; a test keeps the two in step).
# decord is left out: it is optional even there (Linux x86-64 only; PyAV decodes otherwise).
TRAIN_MODULES: dict[str, str] = {
    "typer": "typer", "wandb": "wandb", "av": "av", "zarr": "zarr", "numcodecs": "numcodecs",
    "webdataset": "webdataset", "matplotlib": "matplotlib", "pillow": "PIL",
}
INSTALL_HINT = "pip install 'salt-vla[train]'"


def missing_train_packages() -> list[str]:
    """Distributions of the `train` extra that cannot be imported here."""
    missing = []
    for dist, module in TRAIN_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def main() -> None:
    """Console-script entry point: the training stack must be installed."""
    missing = missing_train_packages()
    if missing:
        sys.exit(f"error: the salt command needs the training stack ({', '.join(missing)} "
                 f"missing): {INSTALL_HINT}")
    from salt_vla.cli.main import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "app":  # lazily: importing the package must not need typer
        from salt_vla.cli.main import app

        return app
    raise AttributeError(f"module 'salt_vla.cli' has no attribute {name!r}")


__all__ = ["app", "main"]

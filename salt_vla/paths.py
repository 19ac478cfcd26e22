"""Default locations shared by every command.

Data root: ``--data``, else ``$SALT_DATA``, else ``/mnt/ssv2``.
Cache dir: ``--cache``, else ``$SALT_CACHE``, else ``<data root>/salt-cache/<split>``.
Each resolver returns the path and where it came from, so commands can print both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_ROOT = Path("/mnt/ssv2")
DATA_ENV = "SALT_DATA"
CACHE_ENV = "SALT_CACHE"


@dataclass(frozen=True)
class Resolved:
    """A path and the rule that produced it (``--data``, ``$SALT_DATA``, ``default``)."""

    path: Path
    source: str

    def __str__(self) -> str:
        return f"{self.path}  (from {self.source})"


def resolve_data_root(data: Path | str | None = None) -> Resolved:
    """Data root from the option, the environment, or the default, in that order."""
    if data is not None and str(data) != "":
        return Resolved(Path(data).expanduser(), "--data")
    env = os.environ.get(DATA_ENV)
    if env:
        return Resolved(Path(env).expanduser(), f"${DATA_ENV}")
    return Resolved(DEFAULT_DATA_ROOT, "default")


def resolve_cache_dir(
    cache: Path | str | None = None,
    data_root: Path | str | None = None,
    split: str = "train",
) -> Resolved:
    """Cache directory for ``split`` from the option, the environment, or under the data root."""
    if cache is not None and str(cache) != "":
        return Resolved(Path(cache).expanduser(), "--cache")
    env = os.environ.get(CACHE_ENV)
    if env:
        return Resolved(Path(env).expanduser(), f"${CACHE_ENV}")
    root = resolve_data_root(data_root)
    source = f"<data root from {root.source}>/salt-cache/{split}"
    return Resolved(root.path / "salt-cache" / split, source)

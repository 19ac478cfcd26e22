"""Default locations shared by every command.

Data root: ``--data``, else ``$SALT_DATA``, else ``/mnt/ssv2``.
Cache dir: ``--cache``, else ``$SALT_CACHE``, else ``<data root>/salt-cache/<split>``.
Each resolver returns the path and where it came from, so commands can print both. Paths
are absolute (against the current directory), so what a command records — a run's
config.json, a store's cache.json — names the same files when read from elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_ROOT = Path("/mnt/ssv2")
DATA_ENV = "SALT_DATA"
CACHE_ENV = "SALT_CACHE"


def absolute(path: Path | str) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory (``..``
    folded; symlinks are kept as typed)."""
    return Path(os.path.abspath(Path(path).expanduser()))


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
        return Resolved(absolute(data), "--data")
    env = os.environ.get(DATA_ENV)
    if env:
        return Resolved(absolute(env), f"${DATA_ENV}")
    return Resolved(DEFAULT_DATA_ROOT, "default")


def resolve_cache_dir(
    cache: Path | str | None = None,
    data_root: Path | str | None = None,
    split: str = "train",
) -> Resolved:
    """Cache directory for ``split`` from the option, the environment, or under the data root."""
    if cache is not None and str(cache) != "":
        return Resolved(absolute(cache), "--cache")
    env = os.environ.get(CACHE_ENV)
    if env:
        return Resolved(absolute(env), f"${CACHE_ENV}")
    root = resolve_data_root(data_root)
    source = f"<data root from {root.source}>/salt-cache/{split}"
    return Resolved(root.path / "salt-cache" / split, source)

"""The one atomic writer: readers see the old file or the new one, never a torn one.

Every file salt-vla writes for later reading (config.json, checkpoints, cache.json, exported
weights, probe results, heartbeats) goes through :func:`atomic_path`:

1. write to a temp file with a unique name in the target's own folder (same file system, so
   the rename is atomic; unique, so two processes never write the same temp file);
2. flush and fsync it, set its mode (0644 unless asked: a teammate must be able to read an
   exported encoder; ``mkstemp`` alone would leave it 0600);
3. ``os.replace`` it over the target, then fsync the folder so the rename itself survives a
   power cut.

A crash before step 3 leaves only a temp file, named ``.<name>.tmp-<pid>-<random>``;
:func:`remove_stale_temps` deletes those of a folder (the trainer does at start).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_MODE = 0o644


def temp_prefix(path: Path) -> str:
    """The prefix of every temp file :func:`atomic_path` makes for ``path``."""
    return f".{path.name}.tmp-"


def fsync_dir(path: Path | str) -> None:
    """Make a rename or create in folder ``path`` durable (POSIX needs the folder synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str, mode: int = DEFAULT_MODE, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on a clean exit it replaces ``path`` (see module doc).

    For libraries that write by file name (``safetensors.save_file``, ``torch.save``,
    ``np.save``). On an exception the temp file is removed and ``path`` is untouched.
    ``durable=False`` skips both fsyncs (for files that are rewritten every few seconds and
    whose loss costs nothing, such as a heartbeat); the rename stays atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes, mode: int = DEFAULT_MODE,
                       durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, mode, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Path | str, text: str, mode: int = DEFAULT_MODE,
                      durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode(), mode, durable)


def write_json_atomic(path: Path | str, obj: Any, mode: int = DEFAULT_MODE,
                      durable: bool = True) -> Path:
    """Write ``obj`` as indented JSON with a final newline, atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(obj, indent=1) + "\n", mode, durable)


def remove_stale_temps(folder: Path | str, name: str | None = None) -> list[Path]:
    """Delete temp files a killed writer left in ``folder`` (only those of ``name`` when
    given); returns what was removed. Only call it where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = temp_prefix(Path(name)) if name else "."
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(prefix) and ".tmp-" in p.name and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed

"""A sweep directory: ``SWEEP/sweep.json`` (the queue state, written atomically) and the lock
that lets one `salt sweep` at a time run its queue; the runs themselves are subdirectories.

Read by `salt sweep` (to resume), `salt status` (to list the stages) and `salt report` (a
sweep directory stands for its runs), so it sits below all three.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.files import write_json_atomic

STATE_NAME = "sweep.json"
LOCK_NAME = ".sweep.lock"
STATE_FORMAT = 1


class SweepError(SaltError, ValueError):
    """A bad spec, a sweep directory in an inconsistent state, or a run the sweep cannot
    continue past; the message names the file or run and the fix."""


def state_path(sweep_dir: Path | str) -> Path:
    """Where a sweep keeps its queue state."""
    return Path(sweep_dir) / STATE_NAME


def is_sweep_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a sweep's queue state."""
    return state_path(path).is_file()


def read_state(sweep_dir: Path | str) -> dict[str, Any] | None:
    """The queue state of ``sweep_dir``; None when it has none yet."""
    path = state_path(sweep_dir)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise SweepError(f"{path} is unreadable ({e}); it is written atomically, so something "
                         "else damaged it: move it away to start the queue afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SweepError(f"{path} is not a salt sweep state (format {STATE_FORMAT})")
    return state


def save_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    """Write the queue state (stamped with the time) atomically."""
    state["updated"] = time.time()
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path(sweep_dir), state)


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One `salt sweep` per directory: an exclusive lock, released when the process dies."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(sweep_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = read_state(sweep_dir) or {}
            raise SweepError(f"another `salt sweep` (pid {state.get('pid')} on "
                             f"{state.get('host')}) is running the queue in {sweep_dir}; "
                             f"watch it with `salt status {sweep_dir}`") from None
        yield
    finally:
        f.close()

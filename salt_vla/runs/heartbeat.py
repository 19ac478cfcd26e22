"""The run's heartbeat: ``RUN_DIR/heartbeat.json``, rewritten atomically as training advances.

It answers "is this run alive?" without ``ps | grep``: it names the training process (pid and
host), the step reached and when, and how the run ended (``finished``, ``stopped`` by a
signal with a checkpoint, or ``failed`` with the error). A run whose heartbeat says
``running`` but whose pid is gone died without a word (OOM kill, node loss); one whose pid
lives but whose heartbeat is old is stuck. `salt status` and `salt sweep` read it (through
:func:`salt_vla.runs.rundir.read_heartbeat`, with the other run files) and check its pid with
:func:`pid_alive`; here are the writer and those process checks.

Only the main rank writes it. Writes are throttled (``min_interval``) so calling
:meth:`Heartbeat.beat` every step costs one ``time.time()`` on most steps.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from salt_vla.files import write_json_atomic
from salt_vla.runs.rundir import heartbeat_path

STATUSES = ("running", "finished", "stopped", "failed")


def this_host() -> str:
    """The host name heartbeats record (compared to tell whether a pid can be checked here)."""
    return platform.node()


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux ``/proc``); None elsewhere. With
    the pid it names one process for good: pids are reused, start times are not."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as gone); with
    ``start`` (see :func:`process_start`) also that it is the same process, not a reuse."""
    if pid <= 0:
        return False
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: a zombie (exited, not yet reaped) is not a live run
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Heartbeat:
    """Writes ``RUN_DIR/heartbeat.json`` for the process that trains.

    Call :meth:`start` once, :meth:`beat` every step (or log interval), :meth:`checkpoint`
    after each checkpoint and :meth:`end` once with how the run ended.
    """

    def __init__(self, run_dir: Path | str, total: int, min_interval: float = 10.0) -> None:
        self.path = heartbeat_path(run_dir)
        self.min_interval = min_interval
        self.state: dict[str, Any] = {
            "pid": os.getpid(),
            "proc_start": process_start(os.getpid()),
            "host": this_host(),
            "status": "running",
            "step": 0,
            "total": int(total),
            "started": time.time(),
            "time": time.time(),
            "ckpt_step": None,
            "error": None,
        }
        self._last_write = 0.0

    def _write(self) -> None:
        self.state["time"] = time.time()
        # Rewritten every few seconds: atomic, but not worth an fsync each time.
        write_json_atomic(self.path, self.state, durable=False)
        self._last_write = time.monotonic()

    def start(self, step: int = 0) -> None:
        """The run starts (or resumes) at ``step``."""
        self.state["step"] = int(step)
        self.state["start_step"] = int(step)
        self._write()

    def beat(self, step: int, force: bool = False) -> None:
        """``step`` optimiser steps are done; written at most every ``min_interval`` s."""
        self.state["step"] = int(step)
        if force or time.monotonic() - self._last_write >= self.min_interval:
            self._write()

    def checkpoint(self, step: int) -> None:
        """A checkpoint of ``step`` is on disk (always written)."""
        self.state["step"] = max(int(self.state["step"]), int(step))
        self.state["ckpt_step"] = int(step)
        self._write()

    def end(self, status: str, step: int | None = None, error: str | None = None) -> None:
        """The run ended: ``finished`` (all steps), ``stopped`` (signal, resumable) or
        ``failed`` (an exception; ``error`` says which)."""
        if status not in STATUSES[1:]:
            raise ValueError(f"heartbeat end status {status!r}: choose finished|stopped|failed")
        if step is not None:
            self.state["step"] = int(step)
        self.state["status"] = status
        self.state["error"] = error
        self.state["ended"] = time.time()
        self._write()

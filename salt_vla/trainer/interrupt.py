"""Graceful stop: the first Ctrl-C / SIGTERM (e.g. a cluster preemption notice) lets the
current step finish, writes a checkpoint and ends the run; a second Ctrl-C aborts at once.

A run stopped this way exits with 128 + the signal number (:func:`exit_code_for`: 130 for
SIGINT, 143 for SIGTERM), the shell's convention for "killed by that signal", so a job
scheduler, `salt sweep` or ``salt train && salt export`` never takes a preempted run for a
finished one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


def exit_code_for(signal_name: str) -> int:
    """128 + the number of signal ``signal_name`` ("SIGINT" -> 130, "SIGTERM" -> 143)."""
    return 128 + int(signal.Signals[signal_name])


class StopRequest:
    """Context manager installing the handlers (main thread only; elsewhere a no-op)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}


# What a run stopped by each of StopRequest's signals exits with: (130, 143).
STOP_EXIT_CODES = tuple(128 + int(sig) for sig in StopRequest.SIGNALS)

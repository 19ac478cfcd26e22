"""A dependency-free progress line for long builds (done/total, videos/s, ETA, failures) and
the number formats of build summaries."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


class Progress:
    """Redraws one line on a terminal (every ``interval`` s); prints a line every
    ``log_interval`` s when the stream is a file or pipe, so logs stay readable."""

    def __init__(self, total: int, *, label: str = "build", stream: TextIO | None = None,
                 interval: float = 0.5, log_interval: float = 30.0,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self.start = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def update(self, ok: int = 0, failed: int = 0) -> None:
        self.done += ok + failed
        self.failed += failed
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = format_seconds(eta) if eta == eta else "--:--"
        return (f"{self.label}: {self.done}/{self.total} ({pct:5.1f}%)  {rate:6.1f} videos/s  "
                f"elapsed {format_seconds(self.elapsed)}  ETA {eta_s}  failures {self.failed}")

    def _draw(self) -> None:
        if not self.enabled:
            return
        end = "\r" if self.tty else "\n"
        self.stream.write(self.line() + end)
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.stream.write(self.line() + "\n")
        self.stream.flush()

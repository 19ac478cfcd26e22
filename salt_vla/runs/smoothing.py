"""Smoothed metrics, shared by `salt status`, `salt sweep` and `salt report`: a decision or a
table built on one noisy batch misleads, so they work on means over the last ``window``
logged records (each record is itself a mean over ``log_every`` steps).
"""

from __future__ import annotations

import math

DEFAULT_WINDOW = 20  # logged records averaged for "smoothed" values


def smoothed(
    points: list[tuple[int, float]], window: int = DEFAULT_WINDOW, up_to: int | None = None
) -> tuple[float, int, int] | None:
    """Mean of the last ``window`` values at steps ``<= up_to`` (all when None), as
    ``(mean, values used, last step used)``; None when there are none. A non-finite value
    in the window makes the mean non-finite, on purpose: such a run must not look good."""
    pts = [p for p in points if up_to is None or p[0] <= up_to]
    if not pts:
        return None
    tail = pts[-max(1, window):]
    return math.fsum(v for _, v in tail) / len(tail), len(tail), tail[-1][0]


def rolling_best(
    points: list[tuple[int, float]], window: int = DEFAULT_WINDOW
) -> tuple[float, int] | None:
    """Lowest mean over any ``window`` consecutive values (fewer at the start) and the step
    it ends at; None without values. Windows holding a non-finite value are skipped."""
    best: tuple[float, int] | None = None
    for i in range(len(points)):
        tail = points[max(0, i - window + 1): i + 1]
        if len(tail) < min(window, len(points)):
            continue
        mean = math.fsum(v for _, v in tail) / len(tail)
        if math.isfinite(mean) and (best is None or mean < best[0]):
            best = (mean, points[i][0])
    return best

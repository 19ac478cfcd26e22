"""Per-step schedules: learning rate (linear warmup, cosine to a floor) and weight decay
(cosine from start to end value, rising in the SALT/V-JEPA recipe).

Pure functions of the step and the run's *legs*, so a resumed run needs only the step (and
the legs its checkpoint records) to be exactly where it was.

Legs: ``[(0, T0), (s1, T1), ...]`` says that from step ``s_i`` on the run's total was
``T_i``: a run extended at ``s_i`` (`salt train --out RUN --resume --set epochs=...`). At an
extension each cosine keeps the value it had reached at ``s_i`` and the rest of its course
(the remaining fraction of the half-cosine) is stretched over the steps left to the new total:
the curve is continuous, ends at ``min_lr`` / ``weight_decay_end`` on the new last step, a
run extended after it finished stays at those end values, and warmup (a number of steps) is
never stretched. With one leg this is exactly the plain schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Legs = Sequence[tuple[int, int]]


def _fraction(step: int, start: int, end: int) -> float:
    if end <= start:
        return 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def progress(step: int, begin: int, legs: Legs) -> float:
    """How far (0..1) a decay that starts at step ``begin`` has come at ``step``.

    The first leg is linear, ``(step - begin) / (T0 - begin)``; each extension keeps the
    progress reached at its first step and spreads the rest linearly over the steps left to
    its total."""
    anchor, reached, end = begin, 0.0, legs[0][1]
    for start, total in legs[1:]:
        if step < start:
            break
        at = max(start, begin)
        reached = reached + (1.0 - reached) * _fraction(at, anchor, end)
        anchor, end = at, total
    return reached + (1.0 - reached) * _fraction(step, anchor, end)


def half_cosine(p: float, start: float, end: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1, a half-cosine between."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * p))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``), flat after."""
    return half_cosine(progress(step, 0, [(0, total)]), start, end)


def lr_at(
    step: int, total: int, warmup: int, lr: float, min_lr: float, legs: Legs | None = None
) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total``.

    Linear warmup over the first ``warmup`` steps reaching ``lr`` at step ``warmup - 1``
    (so step 0 already moves), then a half-cosine down to ``min_lr`` at step ``total``
    (``legs``: an extended run's, see the module docstring).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    return half_cosine(progress(step, warmup, legs or [(0, total)]), lr, min_lr)


def weight_decay_at(
    step: int, total: int, start: float, end: float, legs: Legs | None = None
) -> float:
    """Weight decay for step ``step``: cosine from ``start`` to ``end`` over ``total`` steps."""
    return half_cosine(progress(step, 0, legs or [(0, total)]), start, end)

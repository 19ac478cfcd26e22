"""Per-step schedules: learning rate (linear warmup, cosine to a floor) and weight decay
(cosine from start to end value, rising in the SALT/V-JEPA recipe).

Pure functions of the step, so a resumed run needs only the step to be exactly where it was.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``), flat after."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total``.

    Linear warmup over the first ``warmup`` steps reaching ``lr`` at step ``warmup - 1``
    (so step 0 already moves), then a half-cosine down to ``min_lr`` at step ``total``.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    return cosine(step - warmup, total - warmup, lr, min_lr)


def weight_decay_at(step: int, total: int, start: float, end: float) -> float:
    """Weight decay for step ``step``: cosine from ``start`` to ``end`` over ``total`` steps."""
    return cosine(step, total, start, end)

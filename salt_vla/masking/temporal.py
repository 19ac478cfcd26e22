"""Temporal-split masks: predict the later time steps of a clip from the earlier ones (or,
drawn per batch, the earlier from the later).

Why: every block of V-JEPA's multiblock groups and of ratio/tube masks spans the whole clip,
so the target region is visible at no time step and the context shows the object wherever it
is outside the region at *every* time step. On the demo's tiny grids that means a target
token is predictable from "what is in this clip" and "where things are" without knowing which
way anything moves. With a temporal split the context holds the first ``k`` time steps and
the target all later ones (or the last ``k`` and all earlier ones): where the object is in
the target depends on its velocity, so the context tokens must carry motion direction.
Both directions have the same statistics under time reversal, so the masks say nothing
about a clip's class (the demo's classes are time-reversal pairs).

Rule (one draw per batch, so every sample of a batch has the same counts and the collator
drops nothing): ``k`` uniform in ``[1, T-1]`` context time steps; with ``direction="both"``
a fair coin picks forward (context ``t < k``, target ``t >= k``) or backward (context
``t >= T-k``, target ``t < T-k``); ``"forward"`` always predicts the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from salt_vla.masking.blocks import GroupMask
from salt_vla.models.grid import TokenGrid

DIRECTIONS = ("both", "forward")


@dataclass(frozen=True)
class TemporalSplit:
    """One batch's split: ``context`` time steps at the start (``forward``) or the end."""

    context: int
    forward: bool

    def label(self) -> str:
        return f"{'fwd' if self.forward else 'bwd'}{self.context}"


def draw_temporal_split(grid: TokenGrid, direction: str, rng: np.random.Generator,
                        max_context: int = 0) -> TemporalSplit:
    """``k`` in ``[1, max_context or T-1]`` then (``direction="both"``) the direction; two
    draws."""
    if grid.t < 2:
        raise ValueError(f"temporal masks need at least 2 time steps, the grid has {grid.t}")
    if direction not in DIRECTIONS:
        raise ValueError(f"temporal direction {direction!r}: choose one of {DIRECTIONS}")
    top = grid.t - 1 if max_context <= 0 else min(max_context, grid.t - 1)
    k = int(rng.integers(1, top + 1))
    forward = True if direction == "forward" else bool(rng.integers(2))
    return TemporalSplit(k, forward)


def temporal_mask(grid: TokenGrid, split: TemporalSplit) -> GroupMask:
    """Target = every token outside the split's ``context`` time steps."""
    target = np.ones(grid.as_tuple(), dtype=bool)
    if split.forward:
        target[: split.context] = False
    else:
        target[grid.t - split.context :] = False
    return GroupMask(target=target)

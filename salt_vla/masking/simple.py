"""Tube and random masks: exact token counts, no blocks.

- tube: ``round(ratio * H * W)`` spatial positions (clipped to [1, H*W-1]), chosen uniformly
  without replacement, masked at every time step (VideoMAE's tube masking).
- random: ``round(ratio * N)`` of all N tokens (clipped to [1, N-1]), chosen uniformly
  without replacement.
"""

from __future__ import annotations

import numpy as np

from salt_vla.masking.blocks import GroupMask
from salt_vla.masking.ratio import target_positions
from salt_vla.models.grid import TokenGrid


def tube_mask(grid: TokenGrid, ratio: float, rng: np.random.Generator) -> GroupMask:
    """Random spatial positions masked at all time steps."""
    k = target_positions(grid, ratio)
    plane = np.zeros(grid.per_frame, dtype=bool)
    plane[rng.choice(grid.per_frame, size=k, replace=False)] = True
    target = np.broadcast_to(plane.reshape(grid.h, grid.w), grid.as_tuple()).copy()
    return GroupMask(target=target)


def random_mask(grid: TokenGrid, ratio: float, rng: np.random.Generator) -> GroupMask:
    """Random tokens anywhere in the clip."""
    n = grid.num_tokens
    k = min(max(int(round(ratio * n)), 1), n - 1)
    flat = np.zeros(n, dtype=bool)
    flat[rng.choice(n, size=k, replace=False)] = True
    return GroupMask(target=flat.reshape(grid.as_tuple()))

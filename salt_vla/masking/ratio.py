"""Ratio mode: a union of whole time-spanning blocks that masks a chosen fraction of tokens.

Rule (per sample, on the H x W plane; every block spans all T time steps):

1. ``k = round(ratio * H * W)`` spatial positions to mask, clipped to [1, H*W - 1] so at
   least one position (T tokens) stays visible.
2. Place blocks of the batch's block size (drawn once per batch like a multiblock group's,
   from ``MaskConfig.ratio_block``) at random positions; a block whose new positions keep
   the union at or below ``k`` is added whole.
3. A block that would overshoot is cut: of the sub-rectangles anchored at one of its
   corners (corner chosen at random so cuts have no directional bias), take the one whose
   union lands closest to ``k`` (ties: the larger sub-rectangle). If even the closest cut
   lands further from ``k`` than stopping here would, the draw is discarded and another
   position tried.

A cut that undershoots is kept and placement goes on, so a mask has zero, one or (rarely)
two cut blocks; all others have the batch's size. Measured on 8x14x14 with the default
0.15-scale blocks, 1000 samples: 0/1/2 cut blocks in 24/71/5% of masks at ratio 0.75
(35/63/2% at 0.9); the union lands exactly on ``k`` in 87% (92%) of masks, and the mean
realised ratio is within 0.002 of ``k / (H*W)``. No per-token top-up: the mask stays made of
rectangles.
"""

from __future__ import annotations

import numpy as np

from salt_vla.masking.blocks import Block, BlockSize, GroupMask, place_block
from salt_vla.models.grid import TokenGrid

# Draws that add no new position (or only overshoot) before we accept the union as it is;
# far above what 14x14 grids need (measured: a few per sample at ratio 0.9).
_MAX_IDLE_DRAWS = 10_000


def target_positions(grid: TokenGrid, ratio: float) -> int:
    """Number of spatial positions ratio mode and tube masks cover."""
    hw = grid.per_frame
    return min(max(int(round(ratio * hw)), 1), hw - 1)


def ratio_mask(
    grid: TokenGrid, ratio: float, size: BlockSize, rng: np.random.Generator
) -> GroupMask:
    """Time-spanning block union masking ``ratio`` of the tokens (module docstring)."""
    k = target_positions(grid, ratio)
    spatial = BlockSize(t=grid.t, h=size.h, w=size.w)
    covered = np.zeros((grid.h, grid.w), dtype=bool)
    count = 0
    blocks: list[Block] = []
    idle = 0
    while count < k and idle < _MAX_IDLE_DRAWS:
        b = place_block(grid, spatial, rng)
        region = ~covered[b.y0 : b.y0 + b.h, b.x0 : b.x0 + b.w]
        new = int(region.sum())
        if new == 0:
            idle += 1
            continue
        if count + new <= k:
            covered[b.y0 : b.y0 + b.h, b.x0 : b.x0 + b.w] = True
            count += new
            blocks.append(b)
            continue
        cut = _closest_cut(b, region, k - count, rng)
        if cut is None:
            idle += 1
            continue
        covered[cut.y0 : cut.y0 + cut.h, cut.x0 : cut.x0 + cut.w] = True
        count = int(covered.sum())
        blocks.append(cut)
    target = np.broadcast_to(covered, grid.as_tuple()).copy()
    return GroupMask(target=target, blocks=tuple(blocks))


def _closest_cut(b: Block, region: np.ndarray, need: int, rng: np.random.Generator) -> Block | None:
    """Sub-rectangle of ``b`` anchored at a random corner whose new positions are closest to
    ``need``; None when stopping short (``need`` away) is at least as close."""
    flip_y, flip_x = bool(rng.integers(2)), bool(rng.integers(2))
    r = region[::-1] if flip_y else region
    r = r[:, ::-1] if flip_x else r
    # new[i, j] = uncovered positions in the (i+1) x (j+1) sub-rectangle at the anchor corner
    new = r.cumsum(axis=0).cumsum(axis=1)
    err = np.abs(new - need)
    area = np.arange(1, b.h + 1)[:, None] * np.arange(1, b.w + 1)[None, :]
    # lexicographic: smallest error, then largest area
    best = np.lexsort((-area.ravel(), err.ravel()))[0]
    i, j = divmod(int(best), b.w)
    if err[i, j] >= need or new[i, j] == 0:
        return None
    h, w = i + 1, j + 1
    y0 = b.y0 + b.h - h if flip_y else b.y0
    x0 = b.x0 + b.w - w if flip_x else b.x0
    return Block(t0=b.t0, y0=y0, x0=x0, t=b.t, h=h, w=w)

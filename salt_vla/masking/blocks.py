"""Block geometry on the token grid: V-JEPA's block-size rule, block placement, group masks.

Block size, following V-JEPA's ``_MaskGenerator._sample_block_size`` (three uniform draws,
in this order):

1. temporal scale ``ts`` in [min, max]; ``t = max(1, int(T * ts))``;
2. spatial scale ``s`` in [min, max]; ``keep = int(H * W * s)`` (truncated, as V-JEPA does:
   196 * 0.15 -> 29, 196 * 0.7 -> 137);
3. aspect ratio ``ar`` in [min, max]; ``h = round(sqrt(keep * ar))``,
   ``w = round(sqrt(keep / ar))`` with Python's round (halves to even), then clipped to
   ``h <= H``, ``w <= W``. We also clip to ``>= 1`` (V-JEPA would make an empty block when
   ``keep`` rounds to 0 on a tiny grid).

On the 16x224 grid (8x14x14) this gives h 5..7, w 4..6 (24..30 positions) at scale 0.15
and h, w 10..14 (130..144 positions) at 0.7. Positions are uniform over all placements
that fit: ``top in [0, H-h]``, ``left in [0, W-w]``, ``start in [0, T-t]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from salt_vla.masking.config import BlockGroup
from salt_vla.models.grid import TokenGrid


@dataclass(frozen=True)
class BlockSize:
    """Extent of a block in tokens: ``t`` time steps x ``h`` rows x ``w`` columns."""

    t: int
    h: int
    w: int


@dataclass(frozen=True)
class Block:
    """A placed block: start corner (t0, y0, x0) and extent (t, h, w)."""

    t0: int
    y0: int
    x0: int
    t: int
    h: int
    w: int

    def slices(self) -> tuple[slice, slice, slice]:
        return (
            slice(self.t0, self.t0 + self.t),
            slice(self.y0, self.y0 + self.h),
            slice(self.x0, self.x0 + self.w),
        )


@dataclass(frozen=True)
class GroupMask:
    """One group's mask for one clip: ``target`` bool [T,H,W] and the blocks that made it
    (empty for tube/random masks)."""

    target: np.ndarray
    blocks: tuple[Block, ...] = ()

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(context, target) token indices, int64, sorted, in time-major order."""
        flat = self.target.reshape(-1)
        return np.flatnonzero(~flat).astype(np.int64), np.flatnonzero(flat).astype(np.int64)

    @property
    def ratio(self) -> float:
        """Masked (target) fraction of all tokens."""
        return float(self.target.mean())


def draw_block_size(grid: TokenGrid, group: BlockGroup, rng: np.random.Generator) -> BlockSize:
    """One block size by V-JEPA's rule (module docstring); consumes three uniform draws."""
    lo, hi = group.temporal_scale
    t = max(1, int(grid.t * (lo + rng.random() * (hi - lo))))
    lo, hi = group.spatial_scale
    keep = int(grid.h * grid.w * (lo + rng.random() * (hi - lo)))
    lo, hi = group.aspect_ratio
    ar = lo + rng.random() * (hi - lo)
    h = int(round(math.sqrt(keep * ar)))
    w = int(round(math.sqrt(keep / ar)))
    return BlockSize(t=min(t, grid.t), h=min(max(h, 1), grid.h), w=min(max(w, 1), grid.w))


def place_block(grid: TokenGrid, size: BlockSize, rng: np.random.Generator) -> Block:
    """A block of ``size`` at a uniformly random position where it fits entirely."""
    y0 = int(rng.integers(0, grid.h - size.h + 1))
    x0 = int(rng.integers(0, grid.w - size.w + 1))
    t0 = int(rng.integers(0, grid.t - size.t + 1))
    return Block(t0=t0, y0=y0, x0=x0, t=size.t, h=size.h, w=size.w)

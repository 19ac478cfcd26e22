"""V-JEPA multiblock-3D: one group's target is the union of ``num_blocks`` blocks of one size.

The size is drawn once per batch (``blocks.draw_block_size``); positions are drawn per sample.
Like V-JEPA, a sample whose context (the complement of the target) is too small is redrawn
with new positions and the same size; V-JEPA requires a non-empty context and loops until it
gets one, we require ``min_context`` tokens and give up with a clear error after
``max_tries`` draws (the block size then covers the grid whatever the positions).
"""

from __future__ import annotations

import numpy as np

from salt_vla.masking.blocks import BlockSize, GroupMask, place_block
from salt_vla.masking.config import BlockGroup
from salt_vla.models.grid import TokenGrid


def multiblock_mask(
    grid: TokenGrid,
    group: BlockGroup,
    size: BlockSize,
    rng: np.random.Generator,
    min_context: int = 1,
    max_tries: int = 1000,
) -> GroupMask:
    """Union of ``group.num_blocks`` blocks of ``size`` at random positions, redrawn until at
    least ``min_context`` tokens stay visible."""
    for _ in range(max_tries):
        target = np.zeros(grid.as_tuple(), dtype=bool)
        blocks = tuple(place_block(grid, size, rng) for _ in range(group.num_blocks))
        for b in blocks:
            target[b.slices()] = True
        if grid.num_tokens - int(target.sum()) >= min_context:
            return GroupMask(target=target, blocks=blocks)
    raise ValueError(
        f"multiblock: {group.num_blocks} blocks of {size.t}x{size.h}x{size.w} tokens left fewer "
        f"than min_context={min_context} visible tokens on grid {grid.as_tuple()} in "
        f"{max_tries} draws; lower spatial_scale/num_blocks or use a larger grid"
    )

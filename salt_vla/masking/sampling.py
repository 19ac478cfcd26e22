"""Masks for a sample: strategy dispatch and the per-batch / per-sample random streams.

Reproducibility contract: a sample's masks are a pure function of
``(cfg, grid, seed, epoch, index, batch_key)``.

- Block sizes (multiblock groups, ratio mode) are drawn once per batch, per group, from
  ``(seed, epoch, batch_key, group)``. The collator's batch key is the smallest sample index
  in the batch: the batch's composition is fixed by the sampler in the main process, so the
  key — and the masks — do not depend on how many DataLoader workers collate.
- Positions / token choices are drawn per sample from ``(seed, epoch, index, group)``.
- Tube and random masks draw no block size, so ``batch_key`` does not affect them.
- Temporal groups draw their split (context steps, direction) once per batch, like a
  block size, so every sample of a batch has the same counts.
"""

from __future__ import annotations

import numpy as np

from salt_vla.masking.blocks import BlockSize, GroupMask, draw_block_size
from salt_vla.masking.config import MaskConfig
from salt_vla.masking.multiblock import multiblock_mask
from salt_vla.masking.ratio import ratio_mask
from salt_vla.masking.seeding import BATCH_SIZE_DRAW, PLACEMENT, mask_rng
from salt_vla.masking.simple import random_mask, tube_mask
from salt_vla.masking.temporal import TemporalSplit, draw_temporal_split, temporal_mask
from salt_vla.models.grid import TokenGrid

# What a group draws once per batch: a block size, a temporal split, or nothing.
BatchDraw = BlockSize | TemporalSplit | None


def _base_sizes(
    cfg: MaskConfig, grid: TokenGrid, seed: int, epoch: int, batch_key: int
) -> list[BatchDraw]:
    if cfg.strategy == "multiblock":
        return [
            draw_block_size(grid, g, mask_rng(seed, epoch, batch_key, gi, BATCH_SIZE_DRAW))
            for gi, g in enumerate(cfg.groups)
        ]
    if cfg.strategy == "ratio":
        rng = mask_rng(seed, epoch, batch_key, 0, BATCH_SIZE_DRAW)
        return [draw_block_size(grid, cfg.ratio_block, rng)]
    if cfg.strategy == "temporal":
        rng = mask_rng(seed, epoch, batch_key, 0, BATCH_SIZE_DRAW)
        return [draw_temporal_split(grid, cfg.temporal_direction, rng, cfg.temporal_max_context)]
    return [None]


def batch_block_sizes(
    cfg: MaskConfig, grid: TokenGrid, seed: int, epoch: int, batch_key: int
) -> list[BatchDraw]:
    """Each group's per-batch draw: block size (multiblock, ratio), temporal split
    (temporal groups) or None (tube, random)."""
    sizes = _base_sizes(cfg, grid, seed, epoch, batch_key)
    if cfg.temporal_group:
        gi = len(sizes)
        rng = mask_rng(seed, epoch, batch_key, gi, BATCH_SIZE_DRAW)
        sizes.append(draw_temporal_split(grid, cfg.temporal_direction, rng,
                                         cfg.temporal_max_context))
    return sizes


def sample_group_masks(
    cfg: MaskConfig,
    grid: TokenGrid,
    sizes: list[BatchDraw],
    seed: int,
    epoch: int,
    index: int,
) -> list[GroupMask]:
    """Each group's mask for sample ``index``, given the batch's block sizes."""
    out = []
    for gi, size in enumerate(sizes):
        rng = mask_rng(seed, epoch, index, gi, PLACEMENT)
        if isinstance(size, TemporalSplit):  # the temporal strategy or the appended group
            out.append(temporal_mask(grid, size))
        elif cfg.strategy == "multiblock":
            assert isinstance(size, BlockSize)
            out.append(
                multiblock_mask(grid, cfg.groups[gi], size, rng, cfg.min_context, cfg.max_tries)
            )
        elif cfg.strategy == "ratio":
            assert isinstance(size, BlockSize)
            out.append(ratio_mask(grid, cfg.ratio, size, rng))
        elif cfg.strategy == "tube":
            out.append(tube_mask(grid, cfg.ratio, rng))
        else:
            out.append(random_mask(grid, cfg.ratio, rng))
    return out


def sample_masks(
    cfg: MaskConfig,
    grid: TokenGrid,
    seed: int,
    epoch: int,
    index: int,
    batch_key: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(context, target) token indices (int64, sorted, disjoint, together all tokens) per
    group for one sample, before any batch equalisation. ``batch_key`` defaults to ``index``
    (a batch of one); pass the batch's smallest index to reproduce what the collator drew."""
    key = index if batch_key is None else batch_key
    sizes = batch_block_sizes(cfg, grid, seed, epoch, key)
    return [m.indices() for m in sample_group_masks(cfg, grid, sizes, seed, epoch, index)]

"""Multiblock-3D, ratio, tube and random masks, and their collation."""

from salt_vla.masking.collator import MaskCollator, truncate_indices
from salt_vla.masking.config import RATIO_BLOCK, VJEPA_GROUPS, BlockGroup, MaskConfig
from salt_vla.masking.sampling import batch_block_sizes, sample_group_masks, sample_masks

__all__ = [
    "RATIO_BLOCK",
    "VJEPA_GROUPS",
    "BlockGroup",
    "MaskCollator",
    "MaskConfig",
    "batch_block_sizes",
    "sample_group_masks",
    "sample_masks",
    "truncate_indices",
]

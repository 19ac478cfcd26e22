"""Batch collation: default-collate the samples, draw their masks, equalise counts.

Block masks cover a different number of tokens in each sample, and a batch tensor needs one
count, so — as V-JEPA's collator does — every sample's context and target are cut to the
batch minimum (per group, context and target separately). Which tokens go depends on
``MaskConfig.truncate``:

- ``"tail"`` (V-JEPA): keep the first indices of the sorted list. Tokens are time-major, so
  the dropped ones are the highest indices: the last time step(s), bottom rows first.
- ``"random"``: drop a random subset drawn from ``(seed, epoch, index, group)``, so drops
  spread over the clip; the kept indices stay sorted.

Both are deterministic. Tube and random masks have equal counts already and lose nothing;
ratio masks lose at most a few tokens.

Every batch's indices are checked here, on the host, once (:func:`check_group`): in range for
the grid and non-empty. The model does not read index values during training (on a GPU that
read would synchronise with the host every step; under ``torch.compile`` it breaks the graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from salt_vla.masking.config import MaskConfig
from salt_vla.masking.sampling import batch_block_sizes, sample_group_masks
from salt_vla.masking.seeding import TRUNCATION, mask_rng
from salt_vla.models.grid import TokenGrid


def truncate_indices(idx: np.ndarray, keep: int, rng: np.random.Generator | None) -> np.ndarray:
    """First ``keep`` of sorted ``idx`` (``rng`` None, V-JEPA's rule), or a sorted random
    subset of ``keep`` drawn with ``rng``."""
    if keep > len(idx):
        raise ValueError(f"cannot keep {keep} of {len(idx)} indices")
    if rng is None or keep == len(idx):
        return idx[:keep]
    return np.sort(idx[rng.choice(len(idx), size=keep, replace=False)])


def check_group(ctx: np.ndarray, tgt: np.ndarray, num_tokens: int, group: int) -> None:
    """A batch's ``[B, Nc]`` context and ``[B, Nt]`` target indices of mask group ``group``
    must be non-empty token positions of a grid of ``num_tokens`` tokens."""
    for what, idx in (("ctx_idx", ctx), ("tgt_idx", tgt)):
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError(f"MaskCollator: mask group {group} has {what} of shape "
                             f"{idx.shape}; every sample needs at least one {what[:3]} token "
                             "(lower mask_ratio or change the mask strategy)")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_tokens:
            raise ValueError(f"MaskCollator: mask group {group} has {what} in [{lo}, {hi}] but "
                             f"the grid has {num_tokens} tokens: the mask strategy drew "
                             "positions outside the grid it was given")


def _as_int(sample: dict[str, Any], key: str, pos: int) -> int:
    if key not in sample:
        raise KeyError(
            f"MaskCollator: sample {pos} of the batch has no {key!r} key (keys: "
            f"{sorted(sample)}); the dataset must return 'index' and 'epoch' ints"
        )
    value = sample[key]
    if isinstance(value, torch.Tensor):
        value = value.item()
    if int(value) != value or value < 0:
        raise ValueError(f"MaskCollator: sample {pos} has {key}={value!r}; need an int >= 0")
    return int(value)


class MaskCollator:
    """``collate_fn`` for DataLoaders: samples (dicts with ``"index"`` and ``"epoch"`` ints)
    -> batch dict with every sample key default-collated plus ``"masks"``: one
    ``(ctx_idx LongTensor [B,Nc], tgt_idx LongTensor [B,Nt])`` per group.

    Picklable and stateless, so workers can run it; masks depend only on
    (seed, epoch, sample indices) — see ``salt_vla.masking.sampling``.
    """

    def __init__(self, cfg: MaskConfig, grid: TokenGrid, seed: int = 0) -> None:
        self.cfg = cfg
        self.grid = grid
        self.seed = int(seed)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(samples)

    def collate(
        self, samples: Sequence[dict[str, Any]], batch_key: int | None = None
    ) -> dict[str, Any]:
        """Collate ``samples``; ``batch_key`` (default: the smallest sample index) keys the
        batch's block-size draw. The batch's epoch is that of its first sample."""
        if not samples:
            raise ValueError("MaskCollator: empty batch")
        if any("masks" in s for s in samples):
            raise ValueError("MaskCollator: samples already have a 'masks' key; rename it")
        indices = [_as_int(s, "index", i) for i, s in enumerate(samples)]
        epochs = [_as_int(s, "epoch", i) for i, s in enumerate(samples)]
        epoch = epochs[0]
        key = min(indices) if batch_key is None else int(batch_key)
        batch = default_collate(list(samples))
        batch["masks"] = self.batch_masks(indices, epoch, key)
        return batch

    def batch_masks(
        self, indices: Sequence[int], epoch: int, batch_key: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Equal-count (ctx_idx, tgt_idx) LongTensors per group for these sample indices."""
        sizes = batch_block_sizes(self.cfg, self.grid, self.seed, epoch, batch_key)
        per_sample = [
            sample_group_masks(self.cfg, self.grid, sizes, self.seed, epoch, i) for i in indices
        ]
        out = []
        for g in range(len(sizes)):
            pairs = [masks[g].indices() for masks in per_sample]
            n_ctx = min(len(c) for c, _ in pairs)
            n_tgt = min(len(t) for _, t in pairs)
            ctx, tgt = [], []
            for i, (c, t) in zip(indices, pairs, strict=True):
                rng = None
                if self.cfg.truncate == "random":
                    rng = mask_rng(self.seed, epoch, i, g, TRUNCATION)
                ctx.append(truncate_indices(c, n_ctx, rng))
                tgt.append(truncate_indices(t, n_tgt, rng))
            ctx_b = np.stack(ctx).astype(np.int64, copy=False)
            tgt_b = np.stack(tgt).astype(np.int64, copy=False)
            check_group(ctx_b, tgt_b, self.grid.num_tokens, g)
            out.append((torch.from_numpy(ctx_b), torch.from_numpy(tgt_b)))
        return out

"""Mask statistics for ``salt masks preview``: realised ratios, collated counts, block shapes.

Samples ``0..n-1`` are drawn in consecutive batches of ``batch_size`` exactly as the collator
draws them (batch key = smallest index in the batch), so the collated counts are the ones a
training run with that batch size would see.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from salt_vla.errors import ConfigError
from salt_vla.masking.blocks import GroupMask
from salt_vla.masking.config import MaskConfig
from salt_vla.masking.sampling import batch_block_sizes, sample_group_masks
from salt_vla.masking.temporal import TemporalSplit
from salt_vla.models.grid import TokenGrid


def summary(values: list[float] | np.ndarray) -> dict[str, float]:
    """mean/std/min/max of ``values`` as plain floats."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def _border(grid: TokenGrid) -> np.ndarray:
    ring = np.ones((grid.h, grid.w), dtype=bool)
    ring[1:-1, 1:-1] = False
    return ring


def mask_statistics(
    cfg: MaskConfig,
    grid: TokenGrid,
    seed: int = 0,
    epoch: int = 0,
    n: int = 1000,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Statistics of ``n`` samples' masks, per group (JSON-able dict).

    Per group: ``ratio`` (target fraction before equalisation), ``target_tokens`` /
    ``context_tokens`` per sample before and ``collated_*`` per batch after equalisation,
    ``dropped_*_frac`` (share of a sample's tokens the collator drops), ``blocks_per_mask``
    and block extents (``block_t/h/w`` over all blocks placed; ratio mode's last block is
    the cut one), the most common batch block sizes, ``spans_time`` (every mask identical at
    all time steps) and ``context_border_frac`` (share of context positions on the outer
    ring of the grid, against ``border_share`` of positions there: block masks leave the
    edges visible more often than the centre).
    """
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n={n} and batch_size={batch_size} must be >= 1")
    ring = _border(grid)
    groups: list[dict[str, list[Any]]] = [
        {k: [] for k in ("ratio", "tgt", "ctx", "nt", "nc", "dt", "dc", "nb", "bt", "bh", "bw")}
        | {"sizes": [], "spans": [], "border": []}
        for _ in range(cfg.num_groups)
    ]
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        sizes = batch_block_sizes(cfg, grid, seed, epoch, min(indices))
        masks: list[list[GroupMask]] = [
            sample_group_masks(cfg, grid, sizes, seed, epoch, i) for i in indices
        ]
        for g, acc in enumerate(groups):
            s = sizes[g]
            if isinstance(s, TemporalSplit):
                acc["sizes"].append(s.label())
            elif s is not None:
                acc["sizes"].append(f"{s.t}x{s.h}x{s.w}")
            tgt = np.array([int(m[g].target.sum()) for m in masks])
            ctx = grid.num_tokens - tgt
            acc["ratio"].extend((tgt / grid.num_tokens).tolist())
            acc["tgt"].extend(tgt.tolist())
            acc["ctx"].extend(ctx.tolist())
            acc["nt"].append(int(tgt.min()))
            acc["nc"].append(int(ctx.min()))
            acc["dt"].extend((1.0 - tgt.min() / tgt).tolist())
            acc["dc"].extend((1.0 - ctx.min() / ctx).tolist())
            for m in masks:
                gm = m[g]
                acc["nb"].append(len(gm.blocks))
                acc["bt"].extend(b.t for b in gm.blocks)
                acc["bh"].extend(b.h for b in gm.blocks)
                acc["bw"].extend(b.w for b in gm.blocks)
                acc["spans"].append(bool((gm.target == gm.target[:1]).all()))
                visible = ~gm.target.any(axis=0)
                if visible.any():
                    acc["border"].append(float(visible[ring].sum() / visible.sum()))
    out_groups = []
    for acc in groups:
        has_blocks = bool(acc["bh"])
        out_groups.append(
            {
                "ratio": summary(acc["ratio"]),
                "target_tokens": summary(acc["tgt"]),
                "context_tokens": summary(acc["ctx"]),
                "collated_target_tokens": summary(acc["nt"]),
                "collated_context_tokens": summary(acc["nc"]),
                "dropped_target_frac": summary(acc["dt"]),
                "dropped_context_frac": summary(acc["dc"]),
                "blocks_per_mask": summary(acc["nb"]) if has_blocks else None,
                "block_t": summary(acc["bt"]) if has_blocks else None,
                "block_h": summary(acc["bh"]) if has_blocks else None,
                "block_w": summary(acc["bw"]) if has_blocks else None,
                "batch_block_sizes": dict(Counter(acc["sizes"]).most_common(8)),
                "spans_time": all(acc["spans"]),
                "context_border_frac": summary(acc["border"]) if acc["border"] else None,
            }
        )
    return {
        "strategy": cfg.strategy,
        "grid": list(grid.as_tuple()),
        "num_tokens": grid.num_tokens,
        "n": n,
        "batch_size": batch_size,
        "seed": seed,
        "epoch": epoch,
        "truncate": cfg.truncate,
        "border_share": float(ring.mean()),
        "config": cfg.to_dict(),
        "groups": out_groups,
    }


def format_mask_statistics(stats: dict[str, Any], cfg: MaskConfig, grid: TokenGrid, *,
                           frames: int, size: int, tubelet: int, patch: int, seed: int,
                           epoch: int, n: int, batch: int) -> list[str]:
    """The lines `salt masks preview` prints for :func:`mask_statistics`'s ``stats`` (drawn
    for ``cfg`` on ``grid``: ``frames`` x ``size`` px clips in ``tubelet`` x ``patch`` tokens)."""
    strategy, ratio, truncate = cfg.strategy, cfg.ratio, cfg.truncate
    lines: list[str] = []
    lines.append(
        f"grid: {grid.t}x{grid.h}x{grid.w} = {grid.num_tokens} tokens ({frames} frames, "
        f"{size} px, tubelet {tubelet}, patch {patch})"
    )
    lines.append(
        f"strategy: {strategy}, seed {seed}, epoch {epoch}, {n} samples in batches of "
        f"{batch}, truncate {truncate}"
    )
    for g, s in enumerate(stats["groups"]):
        if strategy == "multiblock":
            spec = cfg.groups[g]
            head = (
                f"{spec.num_blocks} blocks, spatial scale {spec.spatial_scale}, aspect "
                f"{spec.aspect_ratio}, temporal scale {spec.temporal_scale}"
            )
        elif strategy == "ratio":
            head = f"ratio {ratio}, block spatial scale {cfg.ratio_block.spatial_scale}"
        else:
            head = f"ratio {ratio}"
        r = s["ratio"]
        lines.append(f"group {g} ({head})")
        lines.append(
            f"  realised ratio     mean {r['mean']:.4f}  std {r['std']:.4f}  "
            f"min {r['min']:.4f}  max {r['max']:.4f}"
        )
        lines.append(
            f"  per sample         target {s['target_tokens']['mean']:.1f}  "
            f"context {s['context_tokens']['mean']:.1f} tokens"
        )
        lines.append(
            f"  after collation    target {s['collated_target_tokens']['mean']:.1f} "
            f"(drops {100 * s['dropped_target_frac']['mean']:.1f}%)  context "
            f"{s['collated_context_tokens']['mean']:.1f} "
            f"(drops {100 * s['dropped_context_frac']['mean']:.1f}%)"
        )
        if s["blocks_per_mask"] is not None:
            common = ", ".join(f"{k} ({v})" for k, v in s["batch_block_sizes"].items())
            lines.append(
                f"  blocks             {s['blocks_per_mask']['mean']:.2f} per mask "
                f"(min {s['blocks_per_mask']['min']:.0f}, max {s['blocks_per_mask']['max']:.0f});"
                f" h x w mean {s['block_h']['mean']:.2f} x {s['block_w']['mean']:.2f}"
            )
            lines.append(f"  batch block sizes  t x h x w (batches): {common}")
        lines.append(f"  spans all time     {'yes' if s['spans_time'] else 'no'}")
        if s["context_border_frac"] is not None:
            lines.append(
                f"  context on border  {100 * s['context_border_frac']['mean']:.1f}% of "
                f"visible positions (the border is {100 * stats['border_share']:.1f}% of them)"
            )
    return lines

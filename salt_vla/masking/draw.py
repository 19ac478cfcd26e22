"""Draw masks as a PNG grid: one row per (sample, group), one column per time step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salt_vla.errors import ConfigError
from salt_vla.files import atomic_path
from salt_vla.masking.config import MaskConfig
from salt_vla.masking.sampling import batch_block_sizes, sample_group_masks
from salt_vla.models.grid import TokenGrid


def draw_masks_png(
    cfg: MaskConfig,
    grid: TokenGrid,
    out: Path,
    seed: int = 0,
    epoch: int = 0,
    samples: int = 4,
    batch_key: int = 0,
) -> Path:
    """Write ``samples`` samples' masks (indices 0.., one batch keyed ``batch_key``) to ``out``.

    Target (masked, predicted) tokens are dark, context (visible) tokens light. Uses
    matplotlib's Agg canvas directly, so no display and no global backend change is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if samples < 1:
        raise ConfigError(f"samples={samples} must be >= 1")
    sizes = batch_block_sizes(cfg, grid, seed, epoch, batch_key)
    rows = []
    for i in range(samples):
        for g, m in enumerate(sample_group_masks(cfg, grid, sizes, seed, epoch, i)):
            rows.append((i, g, m.target, len(m.blocks)))
    # one image for all panels: a single imshow is much cheaper than rows x T subplots
    gap = 1
    ph, pw = grid.h + gap, grid.w + gap
    canvas = np.ones((len(rows) * ph - gap, grid.t * pw - gap, 3))
    for r, (_, _, target, _) in enumerate(rows):
        for t in range(grid.t):
            shade = np.where(target[t], 0.1, 0.85)[..., None]
            canvas[r * ph : r * ph + grid.h, t * pw : t * pw + grid.w] = shade
    # inches per token (panels at least ~0.8 in); labels outside the axes are kept by "tight"
    scale = max(0.06, 0.8 / max(grid.h, grid.w))
    fig = Figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for t in range(grid.t):
        ax.text(t * pw + grid.w / 2, -1, f"t={t}", ha="center", va="bottom", fontsize=7)
    for r, (i, g, target, nb) in enumerate(rows):
        label = f"#{i} g{g} {target.mean():.2f}" + (f"\n{nb} blocks" if nb else "")
        ax.text(-1, r * ph + grid.h / 2, label, ha="right", va="center", fontsize=7)
    ax.set_title(
        f"{cfg.strategy} masks, grid {grid.t}x{grid.h}x{grid.w} (dark = target)",
        fontsize=9,
        pad=14,
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)
    return out

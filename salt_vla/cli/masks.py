"""``salt masks``: inspect the masks the trainer will use before spending GPU days on them."""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import group, say

app = group("Inspect the masks the trainer will use.")


@app.command("preview")
def masks_preview(
    strategy: str = typer.Option(
        "multiblock",
        "--strategy",
        help="multiblock (V-JEPA's two groups: 8 blocks at scale 0.15 + 2 at 0.7), ratio "
        "(time-spanning blocks up to --ratio), tube (random positions at all times) or "
        "random (random tokens).",
    ),
    ratio: float = typer.Option(
        0.9, "--ratio", help="Masked fraction for ratio/tube/random; multiblock ignores it."
    ),
    block_scale: float | None = typer.Option(
        None,
        "--block-scale",
        help="Ratio mode only: spatial scale of its blocks (fraction of a frame). "
        "Default: 0.15, V-JEPA's short-range block.",
        show_default=False,
    ),
    truncate: str = typer.Option(
        "tail",
        "--truncate",
        help="How the collator equalises counts in a batch: tail (V-JEPA: drop the "
        "highest indices, i.e. the last time steps) or random (seeded random drops).",
    ),
    n: int = typer.Option(1000, "--n", help="Number of samples to draw."),
    batch: int = typer.Option(
        32, "--batch", help="Batch size for block-size draws and collated counts."
    ),
    frames: int = typer.Option(16, "--frames", help="Frames per clip."),
    size: int = typer.Option(224, "--size", help="Square frame size in pixels."),
    tubelet: int = typer.Option(2, "--tubelet", help="Frames per token."),
    patch: int = typer.Option(16, "--patch", help="Pixels per token side."),
    seed: int = typer.Option(0, "--seed", help="Mask seed (masks depend on seed, epoch, index)."),
    epoch: int = typer.Option(0, "--epoch", help="Epoch the masks are drawn for."),
    png: Path | None = typer.Option(
        None,
        "--png",
        help="Also draw 4 samples' masks, one panel per time step, to this PNG file.",
        show_default=False,
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the statistics as one JSON object (for scripts)."
    ),
) -> None:
    """Draw masks and print realised mask ratios, collated token counts and block shapes,
    per mask group, so you can check a mask setting before spending GPU days on it."""
    import json
    from dataclasses import replace

    from salt_vla.masking.config import RATIO_BLOCK, MaskConfig
    from salt_vla.masking.draw import draw_masks_png
    from salt_vla.masking.stats import format_mask_statistics, mask_statistics
    from salt_vla.models.grid import token_grid

    grid = token_grid(frames, size, tubelet=tubelet, patch=patch)
    block = RATIO_BLOCK
    if block_scale is not None:
        block = replace(RATIO_BLOCK, spatial_scale=(block_scale, block_scale))
    cfg = MaskConfig(strategy=strategy, ratio=ratio, ratio_block=block, truncate=truncate)
    stats = mask_statistics(cfg, grid, seed=seed, epoch=epoch, n=n, batch_size=batch)
    png_path = None
    if png is not None:
        png_path = draw_masks_png(cfg, grid, png.expanduser().resolve(), seed, epoch)
    if as_json:
        stats["png"] = str(png_path) if png_path else None
        say(json.dumps(stats))
        return
    for line in format_mask_statistics(stats, cfg, grid, frames=frames, size=size,
                                       tubelet=tubelet, patch=patch, seed=seed, epoch=epoch,
                                       n=n, batch=batch):
        say(line)
    if png_path:
        say(f"png: {png_path}")

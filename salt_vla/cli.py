"""The ``salt`` command line. Thin: it parses options, resolves paths, calls library code.

Each command group lives in its own section below; library code never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from salt_vla import __version__
from salt_vla.files import write_json_atomic
from salt_vla.paths import Resolved, resolve_cache_dir, resolve_data_root

app = typer.Typer(
    name="salt",
    help=(
        "salt-vla: train video encoders with SALT. Stage 1 caches a frozen VideoMAEv2 "
        "teacher's latents once (`salt cache build`); stage 2 trains a ViT student to "
        "predict them at masked positions (`salt train`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Inspect SSv2-layout datasets and generate synthetic ones.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
masks_app = typer.Typer(help="Inspect the masks the trainer will use.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")
cache_app = typer.Typer(
    help="Stage 1: build, verify and inspect the teacher-latent cache.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

DataOpt = typer.Option(
    None,
    "--data",
    help="Dataset root in the SSv2 layout. Default: $SALT_DATA, else /mnt/ssv2.",
    show_default=False,
)
CacheOpt = typer.Option(
    None,
    "--cache",
    help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
    show_default=False,
)


def say(msg: str) -> None:
    """Print a line to stdout (progress and results)."""
    typer.echo(msg)


def fail(msg: str, code: int = 1) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise."""
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def show_resolved(name: str, resolved: Resolved) -> None:
    """Every command prints the paths it resolved, and from where."""
    say(f"{name}: {resolved}")


def version_callback(value: bool) -> None:
    if value:
        say(f"salt-vla {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """salt-vla command line."""


# --- data -------------------------------------------------------------------------------


def _parse_range(option: str, text: str) -> tuple[int, int]:
    """``"1-2"`` -> ``(1, 2)``; ``"3"`` -> ``(3, 3)``."""
    from salt_vla.data.synth import SynthError

    parts = text.replace(" ", "").split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if 1 <= len(parts) <= 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None:
        raise SynthError(f"{option} {text!r}: expected MIN-MAX, e.g. 1-2, or one number")
    return lo, hi


@data_app.command(
    "synth",
    help="Generate a synthetic SSv2-style dataset whose classes show only in motion: textured "
    "objects on textured backgrounds move, turn, grow, appear or stop, with distractors, camera "
    "shake and noise; each class is the time-reversal of another, so no single frame tells "
    "them apart. Writes train/validation/test.json, labels.json, test-answers.csv, synth.json "
    "(the config) and VP9 videos/<id>.webm, exactly as SSv2 lays them out.",
)
def data_synth(
    out: Path = typer.Argument(
        ..., help="Output dataset root (SSv2 layout); created if missing.", show_default=False
    ),
    videos: int = typer.Option(200, "--videos", help="Number of videos over all splits."),
    classes: int = typer.Option(
        6,
        "--classes",
        help="Number of classes K: the first K of the built-in template list, which comes in "
        "time-reversal pairs (left/right, up/down, towards/away from the camera, "
        "clockwise/counterclockwise, appearing/disappearing, slide-and-stop/start-from-rest, "
        "closer/away from each other); 1-14.",
    ),
    frames: int = typer.Option(32, "--frames", help="Frames per video."),
    size: str = typer.Option("96x96", "--size", help="Frame size HEIGHTxWIDTH (even numbers)."),
    fps: int = typer.Option(12, "--fps", help="Frame rate written into the files (SSv2: 12)."),
    seed: int = typer.Option(
        0, "--seed", help="Seed; the same seed gives identical decoded frames."
    ),
    splits: str = typer.Option(
        "0.7/0.15/0.15",
        "--splits",
        help="Relative train/validation/test weights, applied per class so classes stay "
        "balanced in every split.",
    ),
    background: float = typer.Option(
        1.0,
        "--background",
        help="Contrast of the background texture, 0-1 (0: one flat colour per video). Lower "
        "means less of each clip's variance is static scenery; no frame reveals the class "
        "either way.",
    ),
    distractors: str = typer.Option(
        "1-2",
        "--distractors",
        help="MIN-MAX smaller objects drifting in random directions per video (e.g. 0-0).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Processes rendering and encoding videos. Default: min(2, CPU count).",
        show_default=False,
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty OUT that is not a previous synth output; files with the "
        "generated names are overwritten, nothing else is deleted.",
    ),
    intphys: bool = typer.Option(
        False,
        "--intphys",
        help="Instead, write matched possible/impossible pairs for `salt eval intphys` "
        "(--videos/2 pairs; a ball vanishes, teleports, passes through a wall or changes "
        "colour vs the same scene played physically): OUT/pairs.json + OUT/videos/*.webm, "
        "see docs/intphys.md. --classes and --splits do not apply.",
    ),
) -> None:
    """Generate a synthetic SSv2-style dataset (see the command's help)."""
    if intphys:  # the eval section's generator (salt_vla.eval.intphys_synth)
        _data_synth_intphys(out, videos, frames, size, fps, seed, workers, force)
        return
    from salt_vla.data.synth import (
        SynthConfig,
        SynthError,
        generate_dataset,
        parse_size,
        parse_splits,
    )

    try:
        height, width = parse_size(size)
        cfg = SynthConfig(
            videos=videos,
            classes=classes,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            seed=seed,
            splits=parse_splits(splits),
            distractors=_parse_range("--distractors", distractors),
            background=background,
        )
    except SynthError as e:
        raise fail(str(e)) from None
    out = out.expanduser().resolve()
    say(f"out: {out}  (from OUT)")
    say(
        f"config: {videos} videos, {classes} classes, {frames} frames of {height}x{width} at "
        f"{fps} fps, seed {seed}, splits {'/'.join(f'{w:g}' for w in cfg.splits)}"
    )
    step = max(1, videos // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            say(f"  {done}/{total} videos")

    try:
        summary = generate_dataset(out, cfg, workers=workers, force=force, progress=progress)
    except SynthError as e:
        raise fail(str(e)) from None
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items())
    plural = "s" if summary.workers != 1 else ""
    say(f"wrote {counts} videos in {summary.seconds:.1f} s ({summary.workers} worker{plural})")
    say(f"classes: {'; '.join(f'{i}: {c}' for i, c in enumerate(summary.class_names))}")
    say(f"config: {out / 'synth.json'}")


@data_app.command(
    "info",
    help="Summarise an SSv2-layout dataset: videos per split and per class, videos the split "
    "files list but the disk lacks, and a decode check of a sample of videos (first, middle and "
    "last frame) that lists corrupt files with the reason and reports frame counts, fps and "
    "sizes. Exits non-zero with the fix when labels.json or a split file is missing or malformed, "
    "a template is unknown, an id is duplicated, or videos are missing without --allow-missing.",
)
def data_info(
    root: Path | None = typer.Argument(
        None,
        help="Dataset root (same as --data). Default: $SALT_DATA, else /mnt/ssv2.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: list[str] | None = typer.Option(
        None,
        "--split",
        help="Split to read: train, validation or test; repeat for several. Default: every "
        "split whose file exists.",
        show_default=False,
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Report videos listed in a split but absent on disk instead of failing.",
    ),
    missing_out: Path | None = typer.Option(
        None,
        "--missing-out",
        help="With --allow-missing: write the missing video ids to this file, one per line "
        "(an exclusion list).",
        show_default=False,
    ),
    scan: str = typer.Option(
        "8",
        "--scan",
        help="How many videos to decode-check, drawn at random over the splits read; 'all' "
        "(or -1) checks every video, 0 none.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed choosing which videos --scan checks."),
    backend: str = typer.Option(
        "auto",
        "--backend",
        help="Decoder for the check: auto (decord, PyAV when decord fails), decord or pyav.",
    ),
    workers: int = typer.Option(
        1, "--workers", help="Processes decoding in parallel (useful with --scan all)."
    ),
    classes: bool = typer.Option(
        True, "--classes/--no-classes", help="Print the videos-per-class table."
    ),
) -> None:
    """Summarise an SSv2-layout dataset (see the command's help)."""
    from salt_vla.data.info import format_summary, parse_scan, summarize_dataset, write_missing
    from salt_vla.data.ssv2 import SSv2Error

    if root is not None and data is not None and root != data:
        raise fail(f"two data roots given ({root} and --data {data}); give one")
    resolved = Resolved(root.expanduser(), "ROOT argument") if root else resolve_data_root(data)
    show_resolved("data", resolved)
    if missing_out is not None and not allow_missing:
        raise fail("--missing-out needs --allow-missing (without it missing videos are an error)")
    if backend not in ("auto", "decord", "pyav"):
        raise fail(f"--backend must be auto, decord or pyav; got {backend!r}")
    if workers < 1:
        raise fail(f"--workers must be >= 1; got {workers}")
    try:
        count = parse_scan(scan)
    except ValueError as e:
        raise fail(str(e)) from None

    def progress(done: int, total: int) -> None:
        if total >= 100 and (done % max(1, total // 10) == 0 or done == total):
            say(f"  decode check {done}/{total}")

    try:
        summary = summarize_dataset(
            resolved.path,
            splits=split or None,
            allow_missing=allow_missing,
            scan=count,
            seed=seed,
            backend=backend,
            workers=workers,
            progress=progress,
        )
    except SSv2Error as e:
        raise fail(str(e)) from None
    for line in format_summary(summary, show_classes=classes):
        say(line)
    if missing_out is not None:
        n = write_missing(missing_out, summary)
        say(f"missing ids: {n} written to {missing_out}")


# --- masks ------------------------------------------------------------------------------


@masks_app.command("preview")
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
    from salt_vla.masking.stats import mask_statistics
    from salt_vla.models.grid import token_grid

    try:
        grid = token_grid(frames, size, tubelet=tubelet, patch=patch)
        block = RATIO_BLOCK
        if block_scale is not None:
            block = replace(RATIO_BLOCK, spatial_scale=(block_scale, block_scale))
        cfg = MaskConfig(strategy=strategy, ratio=ratio, ratio_block=block, truncate=truncate)
        stats = mask_statistics(cfg, grid, seed=seed, epoch=epoch, n=n, batch_size=batch)
        png_path = None
        if png is not None:
            png_path = draw_masks_png(cfg, grid, png.expanduser().resolve(), seed, epoch)
    except ValueError as e:
        raise fail(str(e)) from None
    if as_json:
        stats["png"] = str(png_path) if png_path else None
        say(json.dumps(stats))
        return
    say(
        f"grid: {grid.t}x{grid.h}x{grid.w} = {grid.num_tokens} tokens ({frames} frames, "
        f"{size} px, tubelet {tubelet}, patch {patch})"
    )
    say(
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
        say(f"group {g} ({head})")
        say(
            f"  realised ratio     mean {r['mean']:.4f}  std {r['std']:.4f}  "
            f"min {r['min']:.4f}  max {r['max']:.4f}"
        )
        say(
            f"  per sample         target {s['target_tokens']['mean']:.1f}  "
            f"context {s['context_tokens']['mean']:.1f} tokens"
        )
        say(
            f"  after collation    target {s['collated_target_tokens']['mean']:.1f} "
            f"(drops {100 * s['dropped_target_frac']['mean']:.1f}%)  context "
            f"{s['collated_context_tokens']['mean']:.1f} "
            f"(drops {100 * s['dropped_context_frac']['mean']:.1f}%)"
        )
        if s["blocks_per_mask"] is not None:
            common = ", ".join(f"{k} ({v})" for k, v in s["batch_block_sizes"].items())
            say(
                f"  blocks             {s['blocks_per_mask']['mean']:.2f} per mask "
                f"(min {s['blocks_per_mask']['min']:.0f}, max {s['blocks_per_mask']['max']:.0f});"
                f" h x w mean {s['block_h']['mean']:.2f} x {s['block_w']['mean']:.2f}"
            )
            say(f"  batch block sizes  t x h x w (batches): {common}")
        say(f"  spans all time     {'yes' if s['spans_time'] else 'no'}")
        if s["context_border_frac"] is not None:
            say(
                f"  context on border  {100 * s['context_border_frac']['mean']:.1f}% of "
                f"visible positions (the border is {100 * stats['border_share']:.1f}% of them)"
            )
    if png_path:
        say(f"png: {png_path}")


# --- cache ------------------------------------------------------------------------------


def _cache_dir_arg(directory: Path | None, data: Path | None, split: str) -> Path:
    """DIR if given, else the default cache of ``split`` (printed with where it came from)."""
    if directory is not None:
        say(f"cache: {directory}  (from DIR)")
        return directory
    resolved = resolve_cache_dir(None, data, split)
    show_resolved("cache", resolved)
    return resolved.path


@cache_app.command(
    "build",
    help="Run the frozen teacher once over a split and store its latents: decode each video's "
    "view in worker processes, JPEG-encode the frames and decode them back (the teacher sees "
    "exactly the pixels the student will), run the teacher in batches, and write "
    "latents.zarr (sharded zarr v3) + frames/ (webdataset tars) + cache.json. Resumable: a "
    "re-run of the same command skips committed shards. Bad videos are listed in "
    "failures.jsonl and the build goes on. Multi-GPU / multi-node: `torchrun "
    "--nproc_per_node N $(which salt) cache build ...` (each rank builds its own shards).",
)
def cache_build(
    data_root: Path | None = typer.Argument(
        None,
        help="Dataset root in the SSv2 layout. Default: --data, else $SALT_DATA, else /mnt/ssv2.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split to cache: train, validation, test."),
    teacher_ckpt: Path | None = typer.Option(
        None,
        "--teacher-ckpt",
        help="VideoMAEv2 checkpoint (.pth/.pt/.safetensors, fine-tuned or distilled encoder, "
        "e.g. vit_b_k710_dl_from_giant.pth). Its sha256 is recorded in cache.json.",
        show_default=False,
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="Instead of --teacher-ckpt: 'random:ARCH:SEED', a seeded randomly initialised "
        "teacher (tests and the demo), e.g. random:vit_tiny:0.",
        show_default=False,
    ),
    teacher_arch: str = typer.Option(
        "vit_base",
        "--teacher-arch",
        help="Architecture of the checkpoint: vit_tiny, vit_small, vit_base, vit_large, "
        "vit_huge, vit_giant (random: sources name their own).",
    ),
    layer: int = typer.Option(
        -1, "--layer", help="Block whose tokens are the targets (negative counts from the end)."
    ),
    target_norm: bool = typer.Option(
        True,
        "--target-norm/--no-target-norm",
        help="Layer-normalise the targets without affine (V-JEPA's convention).",
    ),
    view_preset: str = typer.Option(
        "ssv2-16x224",
        "--view-preset",
        help="Named view (frames, sampling, size, augmentation): ssv2-16x224, ssv2-16x224-mv4, "
        "vjepa-16x224-s4, tiny-8x64, tiny-8x64-mv2. The options below override its fields.",
    ),
    num_frames: int | None = typer.Option(
        None, "--frames", help="View: frames per clip (default: the preset's).", show_default=False
    ),
    size: int | None = typer.Option(
        None, "--size", help="View: output frame side in pixels.", show_default=False
    ),
    sampling: str | None = typer.Option(
        None,
        "--sampling",
        help="View: 'segment' (one frame per equal segment, TSN-style) or 'stride' (every "
        "--frame-step-th frame of a window).",
        show_default=False,
    ),
    frame_step: int | None = typer.Option(
        None, "--frame-step", help="View: frame step of 'stride' sampling.", show_default=False
    ),
    resize: int | None = typer.Option(
        None,
        "--resize",
        help="View: short side before the centre crop (default: --size, i.e. no margin).",
        show_default=False,
    ),
    temporal_jitter: float | None = typer.Option(
        None,
        "--temporal-jitter",
        help="View: 0 = deterministic frame positions, 1 = fully random per view.",
        show_default=False,
    ),
    crop_scale: str | None = typer.Option(
        None,
        "--crop-scale",
        help="View: area scale range LO,HI of a random square crop per view; 1,1 = centre crop.",
        show_default=False,
    ),
    hflip: bool | None = typer.Option(
        None,
        "--hflip/--no-hflip",
        help="View: mirror half of the views (leave off for SSv2: its labels say left/right).",
        show_default=False,
    ),
    view_seed: int | None = typer.Option(
        None, "--view-seed", help="View: seed of the per-view random choices.", show_default=False
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        help="Views per video (rows per video); >1 needs jitter or crop-scale to differ.",
        show_default=False,
    ),
    shard_size: int = typer.Option(
        256,
        "--shard-size",
        help="Rows per shard (one zarr shard file + one frames tar; the unit of commit/resume).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Clips per teacher forward pass."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Decoder processes per rank. Default: CPU cores per rank minus one.",
        show_default=False,
    ),
    decode_timeout: float = typer.Option(
        120.0,
        "--decode-timeout",
        help="Seconds one video may take to decode before its worker is killed and the video "
        "recorded as failed.",
    ),
    limit: int | None = typer.Option(
        None, "--limit", help="Cache only the first N videos of the split.", show_default=False
    ),
    dtype: str = typer.Option(
        "float16", "--dtype", help="Storage dtype of the latents: float16 or float32."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
        show_default=False,
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="Teacher device: auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:N. "
        "bf16 autocast on CUDA, fp32 on CPU.",
    ),
    video_backend: str = typer.Option(
        "auto", "--video-backend", help="Decoder: auto (decord, else PyAV), decord or pyav."
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Skip videos listed in the split but absent from disk (listed in failures.jsonl) "
        "instead of stopping.",
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show the progress line (videos/s, ETA)."
    ),
) -> None:
    import dataclasses
    import os
    import sys

    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.cache.progress import format_bytes
    from salt_vla.cache.store_writer import CacheBuildError
    from salt_vla.data.view import view_preset as get_view_preset

    rank0 = os.environ.get("RANK", "0") == "0"
    echo = say if rank0 else (lambda s: None)
    if (teacher_ckpt is None) == (teacher is None):
        raise fail("give the teacher as --teacher-ckpt PATH or --teacher random:ARCH:SEED "
                   "(exactly one)")
    source = str(teacher_ckpt) if teacher_ckpt is not None else str(teacher)
    try:
        spec = get_view_preset(view_preset)
        changes = {k: v for k, v in {
            "num_frames": num_frames, "size": size, "sampling": sampling,
            "frame_step": frame_step, "resize": resize, "temporal_jitter": temporal_jitter,
            "hflip": hflip, "seed": view_seed, "n_views": views,
        }.items() if v is not None}
        if crop_scale is not None:
            lo, hi = (float(x) for x in crop_scale.split(","))
            changes["crop_scale"] = (lo, hi)
        spec = dataclasses.replace(spec, **changes)
    except ValueError as e:
        raise fail(f"bad view options: {e}") from None
    root = resolve_data_root(data_root if data_root is not None else data)
    if data_root is not None:
        root = Resolved(root.path, "DATA_ROOT")
    if out is not None:
        out_dir = Resolved(out, "--out")
    else:
        out_dir = resolve_cache_dir(None, root.path, split)
    if rank0:
        show_resolved("data root", root)
        show_resolved("cache", out_dir)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n_workers = workers if workers is not None else max(
        1, len(os.sched_getaffinity(0)) // local_world - 1)
    echo(f"teacher: {source}  view: {spec.hash()} {spec.to_dict()}")
    echo(f"shards of {shard_size} rows, teacher batch {batch_size}, {n_workers} decoder "
         f"processes per rank, {dtype}")
    cfg = BuildConfig(
        data_root=root.path, out=out_dir.path, teacher=source, view=spec, split=split,
        teacher_arch=teacher_arch, layer=layer, target_norm=target_norm, dtype=dtype,
        shard_size=shard_size, limit=limit, allow_missing=allow_missing, device=device,
        video_backend=video_backend,
        pipeline=PipelineConfig(batch_size=batch_size, workers=n_workers,
                                decode_timeout=decode_timeout),
        command=("salt", *sys.argv[1:]), show_progress=progress,
    )
    try:
        result = build_cache(cfg)
    except CacheBuildError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; committed shards are kept, re-run the same command to "
                   "resume", code=130) from None
    rate = result.videos_per_s
    echo(f"done: {result.rows_done} rows in {result.seconds:.1f} s ({rate:.1f} videos/s), "
         f"{format_bytes(result.bytes_written)} written, {result.failures} failures"
         + (f", {result.rows_skipped} rows already committed" if result.rows_skipped else ""))
    echo(f"cache: {result.root} ({result.status}); check it with `salt cache verify "
         f"{result.root}`")
    if result.failures:
        echo(f"failures: {result.root / 'failures.jsonl'}")


@cache_app.command(
    "verify",
    help="Check a cache: manifest vs files, every row present except recorded failures, "
    "checksums (per-file sha256, per-row crc32c), finite values, frames per shard, the view "
    "hash vs what this code computes. Exit 0 only when everything holds; else exit 1 "
    "listing each problem.",
)
def cache_verify(
    directory: Path | None = typer.Argument(
        None,
        metavar="[DIR]",
        help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split of the default cache."),
    recompute: int = typer.Option(
        0,
        "--recompute",
        help="Also re-run the teacher on K random rows' stored frames and compare with their "
        "latents (needs a random: teacher or its checkpoint at the recorded path or "
        "--teacher-ckpt).",
    ),
    teacher_ckpt: Path | None = typer.Option(
        None,
        "--teacher-ckpt",
        help="Checkpoint for --recompute when it moved since the build (sha256 must match).",
        show_default=False,
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Structure only: manifest, commit records, sizes, shard indexes, tar headers; "
        "skip reading the data (checksums, finite values).",
    ),
    device: str = typer.Option("cpu", "--device", help="Device for --recompute."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the --recompute rows."),
) -> None:
    import sys

    from salt_vla.cache.verify import verify_store

    root = _cache_dir_arg(directory, data, split)

    def tick(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rverifying shard {done}/{total}")
            if done == total:
                sys.stderr.write("\n")

    report = verify_store(root, quick=quick, recompute=recompute, teacher_ckpt=teacher_ckpt,
                          device=device, seed=seed, progress=tick)
    say(report.table())
    for note in report.notes:
        say(f"note: {note}")
    if report.ok:
        say(f"OK: {root}")
        return
    typer.secho(f"{len(report.problems)} problem(s) in {root}:", err=True, fg=typer.colors.RED)
    for p in report.problems:
        typer.echo(f"  - {p}", err=True)
    raise typer.Exit(1)


@cache_app.command(
    "info",
    help="Summarise a cache: rows, failures, bytes on disk, teacher, view, checksummed "
    "fraction, build status.",
)
def cache_info(
    directory: Path | None = typer.Argument(
        None,
        metavar="[DIR]",
        help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split of the default cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    import json

    from salt_vla.cache.format import CacheFormatError
    from salt_vla.cache.info import format_info, store_info

    root = _cache_dir_arg(directory, data, split)
    try:
        info = store_info(root)
    except CacheFormatError as e:
        raise fail(str(e)) from None
    if as_json:
        say(json.dumps(info, indent=1))
    else:
        for line in format_info(info):
            say(line)


# --- exp / train ------------------------------------------------------------------------

exp_app = typer.Typer(
    help="List and inspect the experiment presets `salt train --exp NAME` runs.",
    no_args_is_help=True,
)
app.add_typer(exp_app, name="exp")

SetOpt = typer.Option(
    [],
    "--set",
    help="Override one config key, KEY=VALUE (repeatable), e.g. --set lr=3e-4 --set "
    "betas=0.9,0.99. Values are type-checked; unknown keys are refused with the list of "
    "valid keys (see `salt exp show NAME`).",
    show_default=False,
)

# Options shared by `salt train` and `salt teacher train` (one loop, one run-directory contract).
RunOutOpt = typer.Option(
    None,
    "--out",
    help="Run directory. Default: runs/<exp> under the current directory.",
    show_default=False,
)
ResumeOpt = typer.Option(
    False,
    "--resume",
    help="Continue the run in --out from its checkpoint, exactly (error if it has none). "
    "`--resume auto`: continue if there is a checkpoint, else start fresh. `--resume "
    "CKPT`: continue from that checkpoint file. Without --resume a run directory that "
    "already holds a checkpoint is refused.",
)
ResumeFromArg = typer.Argument(
    None,
    metavar="[auto|CKPT]",
    help="Only after --resume: `auto` or a checkpoint path.",
    show_default=False,
)
WandbOpt = typer.Option(
    None,
    "--wandb",
    help="online | offline | disabled. Default: disabled unless WANDB_MODE or "
    "WANDB_API_KEY is set. Offline runs write under the run directory, no network. "
    "Project and run name: --set wandb_project=... --set wandb_run=...",
    show_default=False,
)


@dataclass(frozen=True)
class _RunStart:
    """What both training commands settle before building their config."""

    echo: Callable[[str], None]  # prints on rank 0 only
    main_rank: bool
    run_dir: Path
    run_dir_from: str
    resume: str | None  # RunSpec.resume: None, "yes", "auto" or a checkpoint path
    wandb: str

    def say_run_dir(self) -> None:
        self.echo(f"run dir: {self.run_dir}  ({self.run_dir_from})")


def _run_start(
    exp: str, out: Path | None, resume: bool, resume_from: str | None, wandb: str | None
) -> _RunStart:
    """Check --resume's argument, resolve the W&B mode and the run directory."""
    import os

    from salt_vla.trainer.metrics_log import resolve_wandb_mode

    main_rank = os.environ.get("RANK", "0") == "0"
    echo = say if main_rank else (lambda s: None)
    if resume_from is not None and not resume:
        raise fail(f"unexpected argument {resume_from!r} (did you mean --resume {resume_from}?)")
    try:
        mode = resolve_wandb_mode(wandb)
    except ValueError as e:
        raise fail(str(e)) from None
    run_dir = out if out is not None else Path("runs") / exp
    run_dir_from = "--out" if out is not None else "default runs/<exp>"
    resume_value = ("yes" if resume_from is None else resume_from) if resume else None
    return _RunStart(echo, main_rank, run_dir, run_dir_from, resume_value, mode)


@exp_app.command("list", help="List the experiment presets with a one-line description each.")
def exp_list() -> None:
    from salt_vla.trainer.experiments import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, cfg in PRESETS.items():
        say(f"{name.ljust(width)}  {cfg.notes}")


@exp_app.command(
    "show", help="Print every key of a preset's resolved config (after any --set overrides)."
)
def exp_show(
    name: str = typer.Argument(..., help="Preset name (see `salt exp list`).", show_default=False),
    sets: list[str] = SetOpt,
) -> None:
    from salt_vla.trainer.experiments import ConfigError, describe, resolve

    try:
        cfg = resolve(name, sets)
    except ConfigError as e:
        raise fail(str(e)) from None
    say(f"# {name}: {cfg.notes}")
    for line in describe(cfg):
        say(line)


@app.command(
    "train",
    help="Stage 2: train a student (+ predictor) to predict the cached teacher latents at "
    "masked positions, per an experiment preset. Writes config.json, metrics.jsonl and "
    "ckpt.pt (atomic, every ckpt_every steps and at the end) into the run directory. "
    "Multi-GPU: `torchrun --nproc_per_node N $(which salt) train ...` (batch_size stays the "
    "global batch).",
)
def train_cmd(
    exp: str = typer.Option(
        ..., "--exp", help="Experiment preset (see `salt exp list`).", show_default=False
    ),
    cache: Path | None = CacheOpt,
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose cache (or videos) to use."),
    sets: list[str] = SetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    targets: str | None = typer.Option(
        None,
        "--targets",
        help="`cached` (default: read the store, never run the teacher) or `online` (decode "
        "the videos under --data and run the teacher on every batch; needs --set "
        "teacher_ckpt=PATH or random:ARCH:SEED). Same as --set targets=...",
        show_default=False,
    ),
    wandb: str | None = WandbOpt,
) -> None:
    from salt_vla.cache.format import CacheFormatError
    from salt_vla.cache.latent_store import CacheMismatchError, MissingRowError
    from salt_vla.trainer.checkpoint import CheckpointError
    from salt_vla.trainer.experiments import ConfigError, resolve
    from salt_vla.trainer.loop import NonFiniteLoss, RunSpec, train
    from salt_vla.trainer.tar_frames import FramesIndexError

    start = _run_start(exp, out, resume, resume_from, wandb)
    echo, main_rank = start.echo, start.main_rank
    try:
        cfg = resolve(exp, list(sets) + ([f"targets={targets}"] if targets else []))
    except (ConfigError, ValueError) as e:
        raise fail(str(e)) from None
    start.say_run_dir()
    cache_dir = data_dir = None
    if cfg.targets == "cached":
        resolved = resolve_cache_dir(cache, data, split)
        if main_rank:
            show_resolved("cache", resolved)
        cache_dir = resolved.path
    else:
        resolved = resolve_data_root(data)
        if main_rank:
            show_resolved("data root", resolved)
        data_dir = resolved.path
    run = RunSpec(out=start.run_dir, cache=cache_dir, data=data_dir, split=split,
                  resume=start.resume, wandb=start.wandb)
    try:
        train(cfg, run, echo=echo)
    except (ConfigError, CheckpointError, CacheMismatchError, CacheFormatError, MissingRowError,
            FramesIndexError, NonFiniteLoss) as e:
        raise fail(str(e)) from None


# --- eval -------------------------------------------------------------------------------

eval_app = typer.Typer(
    help="Evaluate frozen encoders: attentive-probe classification and intuitive-physics "
    "surprise.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


def _default_probe_out(encoder: str, kind: str) -> Path:
    """RUN_DIR/probe.json for a run (probe-attentive4.json for that probe); else the cwd."""
    suffix = "" if kind == "attentive" else f"-{kind}"
    target = encoder.split(":", 1)[1] if encoder.startswith("teacher:") else encoder
    path = Path(target).expanduser()
    if not encoder.startswith("random:") and path.exists():
        run_dir = path if path.is_dir() else path.parent
        name = "probe-teacher" if encoder.startswith("teacher:") else "probe"
        return run_dir / f"{name}{suffix}.json"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in encoder)
    return Path(f"probe-{safe}{suffix}.json")


@eval_app.command(
    "probe",
    help="Frozen-encoder attentive probe (V-JEPA's protocol): the encoder's token features of "
    "every clip are computed once (one deterministic view per clip), then a cross-attention "
    "pooler with a learned query + linear classifier is trained with AdamW on the train split; "
    "top-1 and top-5 are reported on the validation split after the last epoch. Results go to "
    "RUN_DIR/probe.json (runs) or ./probe-<encoder>.json, unless --out.",
)
def eval_probe(
    encoder: str = typer.Option(
        ...,
        "--encoder",
        help="RUN_DIR or CKPT (a `salt train` run's student); random:ARCH[:SEED] (a randomly "
        "initialised student, ARCH tiny|small|base|large, baseline); teacher:SOURCE (the frozen "
        "VideoMAEv2 teacher's target tokens; SOURCE a checkpoint path sized by --teacher-arch, "
        "random:vit_tiny:0, or a RUN_DIR for the teacher that run trained against).",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    train_split: str = typer.Option("train", "--train-split", help="Split the probe trains on."),
    val_split: str = typer.Option(
        "validation", "--val-split", help="Split the accuracy is reported on."
    ),
    view_preset: str | None = typer.Option(
        None,
        "--view-preset",
        help="View preset for the clips' pixels (see salt_vla/data/view.py VIEW_PRESETS, e.g. "
        "ssv2-16x224, tiny-8x64). Default: the run's own view; random: and teacher:PATH "
        "encoders have none, so they need it.",
        show_default=False,
    ),
    probe: str = typer.Option(
        "attentive",
        "--probe",
        help="attentive (V-JEPA: one cross-attention block) or attentive4 (V-JEPA 2: three "
        "self-attention blocks over the tokens, then the cross-attention block).",
    ),
    epochs: int = typer.Option(
        20,
        "--epochs",
        help="Probe training epochs. 20 is V-JEPA's setting for full SSv2; a small split "
        "needs many more (the demo's 420 clips use 100): check that the reported probe train "
        "accuracy of a random:ARCH baseline approaches 100%, else the probe is still "
        "underfitting and the comparison measures optimisation, not encoders.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", help="Clips per probe step (and per encoder batch when featurising)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (cosine to 0)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Linear warmup length."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe's init and batch order."),
    teacher_arch: str = typer.Option(
        "vit_base",
        "--teacher-arch",
        help="Size of a teacher:PATH checkpoint (vit_small|vit_base|vit_large|...); ignored "
        "for teacher:random:ARCH:SEED and teacher:RUN_DIR, which name their own.",
    ),
    limit_train: int = typer.Option(
        0, "--limit-train", help="Use only the first N clips of the train split (0: all)."
    ),
    limit_val: int = typer.Option(
        0, "--limit-val", help="Use only the first N clips of the val split (0: all)."
    ),
    feature_cache: Path | None = typer.Option(
        None,
        "--feature-cache",
        help="Keep features on disk here (float16 .npy per split, keyed by encoder + view + "
        "clip list; reused by later runs) instead of in memory. Needed when they do not fit "
        "in RAM: clips x tokens x dim x 2 bytes.",
        show_default=False,
    ),
    workers: int = typer.Option(
        2, "--workers", help="Video-decoding processes while featurising (0: in-process)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda."),
    out: Path | None = typer.Option(
        None, "--out", help="Results JSON path (default: see the command help).",
        show_default=False,
    ),
) -> None:
    import json
    import time

    from salt_vla.data.ssv2 import SSv2Error
    from salt_vla.data.view import view_preset as get_view
    from salt_vla.distributed import pick_device
    from salt_vla.eval.encoders import EncoderError, resolve_encoder
    from salt_vla.eval.features import FeatureError, compute_features, feature_nbytes
    from salt_vla.eval.probe import ProbeConfig, train_probe

    t0 = time.perf_counter()
    try:
        cfg = ProbeConfig(kind=probe, epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed)
        dev = pick_device(device)
        view = get_view(view_preset) if view_preset else None
        root = resolve_data_root(data)
        show_resolved("data root", root)
        enc = resolve_encoder(encoder, view, dev, teacher_arch)
    except (ValueError, EncoderError) as e:
        raise fail(str(e)) from None
    out_path = (out or _default_probe_out(encoder, probe)).expanduser()
    say(f"encoder: {encoder} -> {enc.kind}, {enc.dim} wide, grid {enc.grid.as_tuple()} "
        f"({json.dumps(enc.describe)})")
    say(f"view: {enc.view.num_frames} frames x {enc.view.size} px, {enc.view.sampling} "
        f"sampling, hash {enc.view.hash()}{'' if view_preset else ' (the run' + chr(39) + 's)'}")
    say(f"device: {dev}; results: {out_path}")
    if feature_cache is not None:
        say(f"feature cache: {feature_cache.expanduser()}  (from --feature-cache)")
    sets = {}
    for name, split, limit in (("train", train_split, limit_train), ("val", val_split, limit_val)):
        step = [0]

        def progress(done: int, total: int, split: str = split, step: list = step) -> None:
            if done * 10 // total > step[0] or done == total:
                step[0] = done * 10 // total
                say(f"  {split}: {done}/{total} clips featurised")

        try:
            fs = compute_features(enc, root.path, split, batch_size=batch_size, workers=workers,
                                  limit=limit, cache_dir=feature_cache, progress=progress)
        except (SSv2Error, FeatureError) as e:
            raise fail(str(e)) from None
        gib = feature_nbytes(len(fs), enc) / 2**30
        how = f"reused {fs.path}" if fs.reused else f"{fs.seconds:.1f} s"
        say(f"{name} split {split!r}: {len(fs)} clips, {fs.num_classes} classes, "
            f"{gib:.3f} GiB of features ({how}); {len(fs.failed)} failed to decode")
        sets[name] = fs
    tr, va = sets["train"], sets["val"]
    if tr.classes != va.classes:
        raise fail(f"splits {train_split!r} and {val_split!r} have different class lists")
    say(f"probe: {cfg.kind}, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, wd "
        f"{cfg.weight_decay}, seed {cfg.seed}")

    def epoch_line(r: dict) -> None:
        say(f"  epoch {r['epoch']:3d}  loss {r['loss']:.4f}  train top-1 "
            f"{100 * r['train_top1']:5.1f}%  val top-1 {100 * r['val_top1']:5.1f}%")

    try:
        res = train_probe(tr.features, tr.labels, va.features, va.labels, tr.num_classes, cfg,
                          dev, progress=epoch_line)
    except ValueError as e:
        raise fail(str(e)) from None
    chance = 1 / tr.num_classes
    say(f"top-1 {100 * res.top1:.2f}%  top-{res.top5_k} {100 * res.top5:.2f}%  on {res.val_clips} "
        f"{val_split} clips, {res.num_classes} classes (chance {100 * chance:.2f}%); probe "
        f"trained on {res.train_clips} clips in {res.seconds:.1f} s")
    result = {
        "encoder": {"name": encoder, **enc.describe},
        "view": {"spec": enc.view.to_dict(), "hash": enc.view.hash()},
        "data": str(root.path),
        "train": {"split": train_split, "clips": len(tr), "failed": tr.failed},
        "val": {"split": val_split, "clips": len(va), "failed": va.failed},
        "classes": tr.classes,
        "probe": vars(cfg),
        **res.to_dict(),
        "chance": chance,
        "features": {"cache": str(feature_cache) if feature_cache else None,
                     "train_seconds": tr.seconds, "val_seconds": va.seconds},
        "device": str(dev),
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(out_path, result)
    say(f"wrote {out_path}")


@eval_app.command(
    "intphys",
    help="Intuitive-physics surprise (V-JEPA's violation-of-expectation test) of a trained "
    "run: windows of the run's clip length slide over each video; the student encodes the "
    "first C tubelet time steps and the predictor predicts the run's frozen-teacher tokens of "
    "the rest; surprise = prediction error, averaged (mean) or maxed (max) over windows and "
    "predicted steps. Relative accuracy = fraction of pairs whose impossible video is more "
    "surprising than its possible twin (ties count as wrong). Reads DATA/pairs.json (`salt "
    "data synth --intphys DATA` makes one; layout in docs/intphys.md). Results go to "
    "RUN_DIR/intphys.json unless --out.",
)
def eval_intphys(
    run: Path = typer.Option(..., "--run", help="A `salt train` run directory.",
                             show_default=False),
    data: Path = typer.Option(
        ..., "--data", help="Directory holding pairs.json and the videos it lists.",
        show_default=False,
    ),
    context: str | None = typer.Option(
        None,
        "--context",
        help="Context lengths C in tubelet time steps (token-grid rows; C steps = C x tubelet "
        "frames of a window), comma-separated, each in 1..t-1. Default: t/4, t/2, 3t/4 "
        "(2,4,6 for 16 frames with tubelet 2).",
        show_default=False,
    ),
    frame_step: int = typer.Option(
        0,
        "--frame-step",
        help="Source frames between a window's frames. 0: the run's temporal density (its "
        "view's frame_step for stride sampling, else video frames // clip frames).",
    ),
    stride: int = typer.Option(1, "--stride", help="Source frames between window starts."),
    error: str = typer.Option(
        "l1", "--error", help="Per-token error: l1 (mean absolute, V-JEPA) or l2 (mean squared)."
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="Teacher checkpoint (or random:ARCH:SEED) when the one recorded by the run's cache "
        "moved; it must have the recorded sha256.",
        show_default=False,
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    limit: int = typer.Option(0, "--limit", help="Score only the first N pairs (0: all)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda."),
    out: Path | None = typer.Option(
        None, "--out", help="Results JSON path. Default: RUN_DIR/intphys.json.",
        show_default=False,
    ),
) -> None:
    import time

    from salt_vla.data.video import VideoDecodeError
    from salt_vla.distributed import pick_device
    from salt_vla.eval.intphys import (
        IntPhysError,
        SurpriseConfig,
        default_contexts,
        evaluate_pairs,
        load_pairs,
        load_surprise_model,
    )
    from salt_vla.eval.trained_run import RunError

    t0 = time.perf_counter()
    say(f"run: {run}  (from --run)")
    say(f"data: {data}  (from --data)")
    try:
        dev = pick_device(device)
        pairs = load_pairs(data)
        if limit > 0:
            pairs = pairs[:limit]
        model, trained, source = load_surprise_model(run, teacher, dev, error)
        contexts = (tuple(int(c) for c in context.split(",") if c.strip()) if context
                    else default_contexts(model.grid.t))
        cfg = SurpriseConfig(contexts=contexts, frame_step=frame_step, stride=stride,
                             error=error, batch_size=batch_size)
    except (ValueError, IntPhysError, RunError) as e:
        raise fail(str(e)) from None
    out_path = (out or trained.run_dir / "intphys.json").expanduser()
    g = model.grid
    say(f"model: {trained.checkpoint} step {trained.step}, grid {g.as_tuple()} (t x h x w), "
        f"view {trained.config.view}")
    say(f"teacher: {source.source} ({source.spec.arch}, per {source.where})")
    say(f"contexts (time steps): {', '.join(map(str, cfg.contexts))}; error {error}; "
        f"frame step {frame_step or 'auto'}; stride {stride}; device {dev}")
    say(f"pairs: {len(pairs)}; results: {out_path}")
    step = max(1, len(pairs) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            say(f"  {done}/{total} pairs scored")

    try:
        res = evaluate_pairs(model, pairs, trained.view, cfg, progress)
    except (IntPhysError, VideoDecodeError) as e:
        raise fail(str(e)) from None
    kinds = sorted({p["kind"] for p in res["pairs"]})
    say("relative accuracy (impossible more surprising), mean / max surprise:")
    say("  C  " + "  ".join(f"{'all':>11}" if k is None else f"{k:>11}" for k in [None, *kinds]))
    for c, r in res["contexts"].items():
        cells = [f"{100 * r['mean']['accuracy']:4.0f}/{100 * r['max']['accuracy']:4.0f}%"]
        cells += [f"{100 * r['by_kind'][k]['mean']['accuracy']:4.0f}/"
                  f"{100 * r['by_kind'][k]['max']['accuracy']:4.0f}%" for k in kinds]
        say(f"  {c:>2} " + "  ".join(f"{x:>11}" for x in cells))
    result = {
        "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "step": trained.step, "data": str(data),
        "teacher": {"source": source.source, "arch": source.spec.arch,
                    "sha256": model.teacher.sha256, "recorded_by": source.where},
        "config": {"contexts": list(cfg.contexts), "frame_step": frame_step, "stride": stride,
                   "error": error, "units": "contexts in tubelet time steps"},
        "grid": list(g.as_tuple()), "tubelet": trained.config.tubelet,
        **res,
        "device": str(dev), "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(out_path, result)
    say(f"wrote {out_path}")


def _data_synth_intphys(
    out: Path, videos: int, frames: int, size: str, fps: int, seed: int,
    workers: int | None, force: bool,
) -> None:
    """`salt data synth --intphys OUT`: matched possible/impossible pairs (videos // 2)."""
    from salt_vla.data.synth import SynthError, default_workers, parse_size
    from salt_vla.eval.intphys_synth import (
        IntPhysSynthConfig,
        IntPhysSynthError,
        generate_intphys,
    )

    try:
        height, width = parse_size(size)
        cfg = IntPhysSynthConfig(pairs=max(1, videos // 2), frames=frames, height=height,
                                 width=width, fps=fps, seed=seed)
    except (SynthError, IntPhysSynthError) as e:
        raise fail(str(e)) from None
    out = out.expanduser().resolve()
    say(f"out: {out}  (from OUT)")
    say(f"intphys pairs: {cfg.pairs} ({2 * cfg.pairs} videos), kinds {', '.join(cfg.kinds)}, "
        f"{frames} frames of {height}x{width} at {fps} fps, seed {seed}")
    step = max(1, cfg.pairs // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            say(f"  {done}/{total} pairs")

    try:
        summary = generate_intphys(out, cfg, workers=workers or default_workers(), force=force,
                                   progress=progress)
    except IntPhysSynthError as e:
        raise fail(str(e)) from None
    kinds = ", ".join(f"{k} {n}" for k, n in summary.by_kind.items())
    say(f"wrote {summary.pairs} pairs ({kinds}) in {summary.seconds:.1f} s")
    say(f"pairs: {out / 'pairs.json'}")


# --- sweep / status / report / export ---------------------------------------------------


@app.command(
    "sweep",
    help="Run a queue of training runs with decision rules, e.g. the built-in `seed` sweep: "
    "baseline (the reference) -> exp1 -> exp3 if exp1 beats the baseline, else exp2 -> the "
    "best config for --final-epochs. Decisions use a smoothed metric (mean normalised loss "
    "over the last K logged steps, compared at a common step; or probe top-1), never one "
    "batch. Each run is `salt train --resume auto` in a subprocess writing SWEEP_DIR/<run>/ "
    "(log in train.log); the queue state is SWEEP_DIR/sweep.json, so re-running the same "
    "command after a crash resumes it. Ctrl-C asks the running run to checkpoint and stop. "
    "Spec format: `salt sweep seed --show-spec`. Exit code 0 when every stage finished.",
)
def sweep_cmd(
    spec: str = typer.Argument(
        ..., help="A TOML spec file (YAML if PyYAML is installed), or `seed` (built in).",
        show_default=False,
    ),
    sweep_dir: Path | None = typer.Option(
        None, "--dir", help="Sweep directory (runs + queue state). Default: runs/sweep-<name>.",
        show_default=False,
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Print the plan, each run's command and the decision each rule takes given the "
        "runs finished so far; launch and write nothing.",
    ),
    show_spec: bool = typer.Option(
        False, "--show-spec", help="Print the spec as TOML (for `seed`: to copy and edit)."
    ),
    final_epochs: int | None = typer.Option(
        None, "--final-epochs", help="`seed` only: epochs of the final run (default 15).",
        show_default=False,
    ),
    reference: Path | None = typer.Option(
        None, "--reference",
        help="`seed` only: an existing finished baseline run directory to compare against "
        "instead of training the baseline.", show_default=False,
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="--cache passed to every run (replaces the spec's `cache`).",
        show_default=False,
    ),
    data: Path | None = typer.Option(
        None, "--data", help="--data passed to every run (replaces the spec's `data`).",
        show_default=False,
    ),
    sets: list[str] = typer.Option(
        [], "--set",
        help="KEY=VALUE added to every run's overrides (repeatable); give the same ones when "
        "resuming.", show_default=False,
    ),
    launcher: str | None = typer.Option(
        None, "--launcher",
        help="Command prefix for every run, e.g. 'torchrun --nproc_per_node 8' (replaces the "
        "spec's `launcher`).", show_default=False,
    ),
    poll: float = typer.Option(60.0, "--poll", help="Seconds between progress lines."),
) -> None:
    from salt_vla.trainer.sweep import (
        SweepError,
        format_plan,
        load_spec,
        run_sweep,
        seed_spec_text,
    )

    if show_spec:
        if spec == "seed":
            say(seed_spec_text(final_epochs or 15).rstrip())
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise fail(f"sweep spec {path}: no such file")
            say(path.read_text().rstrip())
        return
    try:
        overrides = {"cache": str(cache) if cache else None, "data": str(data) if data else None,
                     "set": list(sets), "launcher": launcher}
        parsed = load_spec(spec, final_epochs, reference, overrides)
        where = sweep_dir if sweep_dir is not None else Path("runs") / f"sweep-{parsed.name}"
        say(f"sweep dir: {where.resolve()}  "
            f"({'--dir' if sweep_dir is not None else 'default runs/sweep-<name>'})")
        if dry_run:
            for line in format_plan(parsed, where):
                say(line)
            return
        code = run_sweep(parsed, where, echo=say, poll=poll)
    except SweepError as e:
        raise fail(str(e)) from None
    if code:
        raise typer.Exit(code)


@app.command(
    "status",
    help="Is a run alive? For a run directory: alive/stalled/dead/finished (from its "
    "heartbeat.json: pid alive on this host and heartbeat fresh), step/total, last and "
    "smoothed losses, clips/s, ETA, last checkpoint, peak GPU memory. For a sweep directory: "
    "every stage, its decision and whether the sweep process runs. A folder of runs: each. "
    "Exit code: 0 healthy (running, or finished with finite losses); 1 stalled, dead, failed, "
    "stopped or a sweep that stopped early; 2 ended with a non-finite loss.",
)
def status_cmd(
    path: Path = typer.Argument(
        Path("runs"), help="RUN_DIR, SWEEP_DIR, or a folder of either.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts)."),
    stall_after: float | None = typer.Option(
        None, "--stall-after",
        help="Seconds without a heartbeat after which a run counts as stalled. Default: 5x "
        "the median time between its logged steps, at least 600.", show_default=False,
    ),
    window: int = typer.Option(20, "--window", help="Logged values averaged for 'smoothed'."),
) -> None:
    import json

    from salt_vla.trainer.run_status import (
        RunStatusError,
        format_status,
        status_json,
        status_of,
    )
    from salt_vla.trainer.sweep import SweepError

    try:
        result = status_of(path.expanduser(), stall_after, window)
    except (RunStatusError, SweepError) as e:
        raise fail(str(e)) from None
    if as_json:
        say(json.dumps(status_json(result), indent=1))
    else:
        for line in format_status(result):
            say(line)
    raise typer.Exit(result["exit_code"])


@app.command(
    "report",
    help="Compare runs: a Markdown table (config differences, best and final smoothed "
    "normalised loss, probe top-1 from RUN/probe*.json, median clips/s, peak GPU memory) and "
    "PNG plots of loss, normalised loss and learning rate vs step for all runs on shared axes, "
    "written beside the report as <stem>-loss.png, <stem>-norm_loss.png, <stem>-lr.png.",
)
def report_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories to compare; a sweep directory stands for all its runs.",
        show_default=False,
    ),
    out: Path = typer.Option(Path("report.md"), "--out", help="Markdown file to write."),
    window: int = typer.Option(
        20, "--window", help="Logged values averaged for the smoothed numbers and curves."
    ),
) -> None:
    from salt_vla.trainer.report import ReportError, write_report

    try:
        rep = write_report([r.expanduser() for r in runs], out.expanduser(), window)
    except ReportError as e:
        raise fail(str(e)) from None
    say(f"report: {rep.markdown.resolve()}  ({'--out' if out != Path('report.md') else 'default'})")
    for p in rep.plots:
        say(f"plot: {p.resolve()}")


@app.command(
    "export",
    help="Export a run's student encoder for use outside salt-vla (e.g. a robot policy): "
    "weights as .safetensors with the architecture, input format, training view and "
    "provenance as JSON in its metadata and in a sidecar .json. Load it with "
    "`salt_vla.load_encoder(path)`: forward(video) -> (tokens [B,N,D], pooled [B,D]) for uint8 "
    "[B,T,H,W,3] frames or normalised float [B,3,T,H,W]. See docs/export.md.",
)
def export_cmd(
    run: Path = typer.Argument(..., help="RUN_DIR (its ckpt.pt) or a checkpoint file.",
                               show_default=False),
    out: Path | None = typer.Option(
        None, "--out", help="Output .safetensors file. Default: RUN_DIR/encoder.safetensors.",
        show_default=False,
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Stored weight type: float32, bfloat16 or float16."
    ),
) -> None:
    import torch

    from salt_vla.export import ExportError, export_encoder

    types = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in types:
        raise fail(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    say(f"run: {run}  (from RUN)")
    try:
        res = export_encoder(run, out, types[dtype])
    except ExportError as e:
        raise fail(str(e)) from None
    c = res.config
    say(f"encoder: {c['student']['size']} student, {c['embed_dim']} wide, {c['depth']} blocks, "
        f"{res.num_params / 1e6:.2f} M parameters, {c['dtype']}; step {c['source']['step']} of "
        f"exp {c['source']['exp']}")
    say(f"input: {c['input']['uint8']} (uint8) or normalised float; tokens {c['num_tokens']} "
        f"(grid {'x'.join(map(str, c['grid']))})")
    say(f"weights: {res.weights.resolve()}  ({'--out' if out else 'default RUN_DIR'})")
    say(f"config: {res.sidecar.resolve()}")


# --- teacher ----------------------------------------------------------------------------

teacher_app = typer.Typer(
    help="SALT stage 1: train the teacher itself by VideoMAE-style pixel reconstruction "
    "under block masks ('V-Pixel') and export it as a VideoMAEv2 checkpoint that `salt cache "
    "build --teacher-ckpt` loads.",
    no_args_is_help=True,
)
app.add_typer(teacher_app, name="teacher")

TeacherSetOpt = typer.Option(
    [],
    "--set",
    help="Override one teacher config key, KEY=VALUE (repeatable), e.g. --set epochs=100 "
    "--set mask_strategy=multiblock. Values are type-checked; unknown keys are refused with "
    "the list of valid keys (see `salt teacher show NAME`). --set lr=X turns off the "
    "batch scaling (blr).",
    show_default=False,
)


@teacher_app.command(
    "show",
    help="Without NAME: list the teacher presets. With NAME: print every key of its resolved "
    "config (after any --set overrides).",
)
def teacher_show(
    name: str | None = typer.Argument(
        None, help="Teacher preset (teacher-tiny, teacher-base).", show_default=False
    ),
    sets: list[str] = TeacherSetOpt,
) -> None:
    from salt_vla.trainer.experiments import ConfigError, describe
    from salt_vla.trainer.teacher_experiments import TEACHER_PRESETS, resolve_teacher

    if name is None:
        width = max(len(n) for n in TEACHER_PRESETS)
        for preset, cfg in TEACHER_PRESETS.items():
            say(f"{preset.ljust(width)}  {cfg.notes}")
        return
    try:
        cfg = resolve_teacher(name, sets)
    except ConfigError as e:
        raise fail(str(e)) from None
    say(f"# {name}: {cfg.notes}")
    for line in describe(cfg):
        say(line)


@teacher_app.command(
    "train",
    help="Stage 1: train a VideoMAEv2 encoder on the visible tokens + a light decoder over "
    "all tokens to reconstruct the pixels of the masked tubelets (per-patch normalised as "
    "in VideoMAE; raw with --set norm_pix=false, teacher-tiny's setting), on clips decoded "
    "straight from the videos under --data through the preset's view. Same "
    "loop as `salt train`: config.json, metrics.jsonl, ckpt.pt (atomic, every ckpt_every "
    "steps and at the end), exact --resume; unreadable videos are skipped and listed in "
    "RUN_DIR/decode_failures.jsonl. On the last step the encoder is written to "
    "RUN_DIR/teacher.pth (official VideoMAEv2 keys) with its sha256. Multi-GPU: `torchrun "
    "--nproc_per_node N $(which salt) teacher train ...`.",
)
def teacher_train_cmd(
    exp: str = typer.Option(
        ..., "--exp", help="Teacher preset: teacher-tiny (CPU demo) or teacher-base (ViT-B, "
        "16x224). See `salt teacher show`.", show_default=False
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose videos to train on."),
    sets: list[str] = TeacherSetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    wandb: str | None = WandbOpt,
) -> None:
    from salt_vla.data.ssv2 import SSv2Error
    from salt_vla.trainer.checkpoint import CheckpointError
    from salt_vla.trainer.experiments import ConfigError
    from salt_vla.trainer.loop import NonFiniteLoss, RunSpec
    from salt_vla.trainer.teacher_experiments import resolve_teacher
    from salt_vla.trainer.teacher_export import TeacherExportError
    from salt_vla.trainer.teacher_train import train_teacher
    from salt_vla.trainer.video_source import ClipSourceError

    start = _run_start(exp, out, resume, resume_from, wandb)
    try:
        cfg = resolve_teacher(exp, sets)
    except (ConfigError, ValueError) as e:
        raise fail(str(e)) from None
    start.say_run_dir()
    root = resolve_data_root(data)
    if start.main_rank:
        show_resolved("data root", root)
    run = RunSpec(out=start.run_dir, data=root.path, split=split, resume=start.resume,
                  wandb=start.wandb)
    try:
        train_teacher(cfg, run, echo=start.echo)
    except (ConfigError, CheckpointError, NonFiniteLoss, ClipSourceError, SSv2Error,
            TeacherExportError) as e:
        raise fail(str(e)) from None


@teacher_app.command(
    "export",
    help="Write a `salt teacher train` run's encoder as a VideoMAEv2 checkpoint (official "
    "fine-tune key layout: patch_embed.proj, blocks.N.attn.qkv + q_bias/v_bias, ...; bare "
    "state dict), check that the teacher loader accepts it with its strict key check, and "
    "record its sha256 in OUT.sha256 (sha256sum format) and provenance in OUT.json. Works on "
    "a run stopped early too (exports its last checkpoint).",
)
def teacher_export_cmd(
    run: Path = typer.Argument(..., help="RUN_DIR (its ckpt.pt) or a checkpoint file.",
                               show_default=False),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (.pth; .safetensors writes safetensors). Default: "
        "RUN_DIR/teacher.pth.", show_default=False,
    ),
) -> None:
    from salt_vla.trainer.teacher_export import TeacherExportError, export_teacher

    say(f"run: {run}  (from RUN)")
    try:
        res = export_teacher(run, out)
    except TeacherExportError as e:
        raise fail(str(e)) from None
    s = res.spec
    say(f"teacher: VideoMAEv2 {s.arch}, {s.num_frames} frames x {s.img_size} px, tubelet "
        f"{s.tubelet}, patch {s.patch}; step {res.step}/{res.total_steps}")
    say(f"weights: {res.path.resolve()}  ({'--out' if out else 'default RUN_DIR/teacher.pth'})")
    say(f"sha256: {res.sha256}  ({res.sha_path.resolve()})")
    say(f"next: {res.cache_command()}")


# --- demo -------------------------------------------------------------------------------


@app.command(
    "demo",
    help="The whole SALT recipe on CPU in about 10 minutes (2 cores): synthetic SSv2-style "
    "videos -> stage-1 teacher (teacher-tiny) -> cache build -> cache verify -> stage-2 "
    "training (tiny) -> frozen-encoder probe on the held-out split for a random-init "
    "student, the teacher and the SALT student. Prints the three-way table and the quality "
    "bar (SALT >= random-init + 15 points and >= teacher, mean over seeds) and writes "
    "OUT/demo.md, OUT/demo.json and OUT/demo.png (loss curves + probe bars) over every seed"
    " under OUT. Each seed works in OUT/seed-S/; re-running with the same --out reuses "
    "finished stages. What the numbers mean: docs/demo.md.",
)
def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", help="Output directory (one seed-S/ folder per seed)."
    ),
    seeds: list[int] = typer.Option(
        [0], "--seed",
        help="Seed of everything (data, both trainings, the baseline, the probe). Repeat to "
        "run several seeds in turn, e.g. --seed 0 --seed 1 --seed 2 (the quality bar is a "
        "mean over 3 seeds).",
    ),
    quick: bool = typer.Option(
        False, "--quick",
        help="Smoke-test size: a few dozen videos and a handful of steps per stage (well under "
        "3 minutes); checks that the pipeline runs, its accuracies mean nothing. Use a "
        "different --out than the full demo's.",
    ),
    random_teacher: bool = typer.Option(
        False, "--random-teacher",
        help="Skip stage 1 and cache a seeded random ViT-tiny teacher instead (faster; the "
        "baseline the trained teacher should beat).",
    ),
    workers: int | None = typer.Option(
        None, "--workers",
        help="Decoding processes for synthesis and the cache build (default: up to 2).",
        show_default=False,
    ),
) -> None:
    """Run the demo for each seed, then print and save the table (see the command's help)."""
    import time

    from salt_vla.demo import DemoError, demo_config, run_demo
    from salt_vla.eval.demo_report import DemoReportError

    t0 = time.perf_counter()
    say(f"demo dir: {out.resolve()}  ({'--out' if out != Path('demo-out') else 'default'})")
    try:
        configs = [demo_config(s, quick, "random" if random_teacher else "stage1", workers)
                   for s in dict.fromkeys(seeds)]
        result = run_demo(out, configs, echo=say)
    except (DemoError, DemoReportError) as e:
        raise fail(str(e)) from None
    rep = result.report
    say("")
    for line in rep.lines:
        say(line)
    say("")
    say(rep.bar.line() if rep.bar else "quality bar: not all three probes have run")
    say(f"table: {rep.markdown.resolve()}")
    say(f"json: {rep.json.resolve()}")
    say(f"plot: {rep.png.resolve()}")
    say(f"wall time: {time.perf_counter() - t0:.0f} s for seed(s) "
        f"{', '.join(str(c.seed) for c in configs)}{' (--quick)' if quick else ''}")


def main() -> None:
    """Console-script entry point."""
    app()


# keep names used by command sections importable for ruff while sections are filled in
__all__ = ["app", "main", "Path", "Optional", "resolve_cache_dir", "resolve_data_root"]

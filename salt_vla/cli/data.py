"""``salt data``: inspect SSv2-layout datasets and generate synthetic ones."""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import fail, group, say, show_resolved
from salt_vla.cli.options import DataOpt

app = group("Inspect SSv2-layout datasets and generate synthetic ones.")


@app.command(
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
    layout: str = typer.Option(
        "pairs",
        "--layout",
        help="With --intphys: pairs (pairs.json) or intphys2 (IntPhys 2's layout: "
        "OUT/Main/metadata.csv with its exact header + OUT/Main/Videos/<name>.mp4, --videos/4 "
        "scenes of two pairs; a small stand-in for trying the reader, not the benchmark).",
    ),
) -> None:
    """Generate a synthetic SSv2-style dataset (see the command's help)."""
    from salt_vla.data.synth import (
        SynthConfig,
        check_splits_filled,
        generate_dataset,
        parse_range,
        parse_size,
        parse_splits,
    )

    if intphys:  # the eval section's generator (salt_vla.eval.intphys_synth)
        _synth_intphys(out, videos, frames, size, fps, seed, workers, force, layout)
        return
    height, width = parse_size(size)
    cfg = SynthConfig(
        videos=videos, classes=classes, frames=frames, height=height, width=width, fps=fps,
        seed=seed, splits=parse_splits(splits), background=background,
        distractors=parse_range("--distractors", distractors),
    )
    check_splits_filled(cfg)
    out = out.expanduser().resolve()
    say(f"out: {out}  (from OUT)")
    say(f"config: {videos} videos, {classes} classes, {frames} frames of {height}x{width} at "
        f"{fps} fps, seed {seed}, splits {'/'.join(f'{w:g}' for w in cfg.splits)}")
    step = max(1, videos // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            say(f"  {done}/{total} videos")

    summary = generate_dataset(out, cfg, workers=workers, force=force, progress=progress)
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items())
    plural = "s" if summary.workers != 1 else ""
    say(f"wrote {counts} videos in {summary.seconds:.1f} s ({summary.workers} worker{plural})")
    say(f"classes: {'; '.join(f'{i}: {c}' for i, c in enumerate(summary.class_names))}")
    say(f"config: {out / 'synth.json'}")


def _synth_intphys(
    out: Path, videos: int, frames: int, size: str, fps: int, seed: int,
    workers: int | None, force: bool, layout: str,
) -> None:
    """`salt data synth --intphys OUT`: matched possible/impossible pairs (videos // 2), as
    pairs.json or in IntPhys 2's layout (videos // 4 scenes)."""
    from salt_vla.data.synth import default_workers, parse_size
    from salt_vla.eval.intphys_synth import (
        LAYOUTS,
        IntPhysSynthConfig,
        generate_intphys,
        generate_intphys2,
    )

    if layout not in LAYOUTS:
        raise fail(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    height, width = parse_size(size)
    pairs = max(1, videos // 2) if layout == "pairs" else 2 * max(1, videos // 4)
    cfg = IntPhysSynthConfig(pairs=pairs, frames=frames, height=height, width=width, fps=fps,
                             seed=seed)
    out = out.expanduser().resolve()
    say(f"out: {out}  (from OUT)")
    say(f"intphys pairs: {cfg.pairs} ({2 * cfg.pairs} videos, layout {layout}), kinds "
        f"{', '.join(cfg.kinds)}, {frames} frames of {height}x{width} at {fps} fps, seed {seed}")
    unit = "pairs" if layout == "pairs" else "scenes"
    total = cfg.pairs if layout == "pairs" else cfg.pairs // 2
    step = max(1, total // 10)

    def progress(done: int, n: int) -> None:
        if done % step == 0 or done == n:
            say(f"  {done}/{n} {unit}")

    generate = generate_intphys if layout == "pairs" else generate_intphys2
    summary = generate(out, cfg, workers=workers or default_workers(), force=force,
                       progress=progress)
    kinds = ", ".join(f"{k} {n}" for k, n in summary.by_kind.items())
    scenes = f" in {summary.scenes} scenes" if summary.scenes else ""
    say(f"wrote {summary.pairs} pairs{scenes} ({kinds}) in {summary.seconds:.1f} s")
    say(f"metadata: {out / 'Main' / 'metadata.csv'}" if summary.scenes else
        f"pairs: {out / 'pairs.json'}")


@app.command(
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
    from salt_vla.paths import Resolved, resolve_data_root

    if root is not None and data is not None and root != data:
        raise fail(f"two data roots given ({root} and --data {data}); give one")
    resolved = Resolved(root.expanduser(), "ROOT argument") if root else resolve_data_root(data)
    show_resolved("data", resolved)
    if missing_out is not None and not allow_missing:
        raise fail("--missing-out needs --allow-missing (without it missing videos are an error)")
    if workers < 1:
        raise fail(f"--workers must be >= 1; got {workers}")

    def progress(done: int, total: int) -> None:
        if total >= 100 and (done % max(1, total // 10) == 0 or done == total):
            say(f"  decode check {done}/{total}")

    summary = summarize_dataset(resolved.path, splits=split or None, allow_missing=allow_missing,
                                scan=parse_scan(scan), seed=seed, backend=backend,
                                workers=workers, progress=progress)
    for line in format_summary(summary, show_classes=classes):
        say(line)
    if missing_out is not None:
        n = write_missing(missing_out, summary)
        say(f"missing ids: {n} written to {missing_out}")

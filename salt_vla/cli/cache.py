"""``salt cache``: build, verify and inspect the teacher-latent cache (stage 1)."""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import (
    cache_dir_arg,
    deprecated_option,
    fail,
    group,
    main_rank_echo,
    say,
    show_resolved,
)
from salt_vla.cli.options import (
    DataOpt,
    TeacherArchOpt,
    TeacherOpt,
    ViewCropScaleOpt,
    ViewFrameStepOpt,
    ViewHflipOpt,
    ViewNumFramesOpt,
    ViewPresetOpt,
    ViewResizeOpt,
    ViewSamplingOpt,
    ViewSeedOpt,
    ViewSizeOpt,
    ViewsOpt,
    ViewTemporalJitterOpt,
)

app = group("Stage 1: build, verify and inspect the teacher-latent cache.")


@app.command(
    "build",
    help="Run the frozen teacher once over a split and store its latents: decode each video's "
    "view in worker processes, JPEG-encode the frames and decode them back (the teacher sees "
    "exactly the pixels the student will), run the teacher in batches, and write "
    "latents.zarr (sharded zarr v3) + frames/ (webdataset tars) + cache.json. Resumable: a "
    "re-run of the same command skips committed shards. Bad videos are listed in "
    "failures.jsonl and the build goes on. Multi-GPU / multi-node: `torchrun "
    "--nproc_per_node N $(which salt) cache build ...` (each rank builds its own shards). "
    "It first prints the plan (rows, shards, bytes, free space, settings; --dry-run: only "
    "that) and refuses an unwritable or too small destination. An exported stage-1 teacher's "
    "arch and view (TEACHER.json) fill in the options left out.",
)
def cache_build(
    ctx: typer.Context,
    data_root: Path | None = typer.Argument(
        None,
        help="Dataset root in the SSv2 layout. Default: --data, else $SALT_DATA, else /mnt/ssv2.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split to cache: train, validation, test."),
    teacher: str | None = TeacherOpt,
    teacher_ckpt: str | None = typer.Option(
        None, "--teacher-ckpt", hidden=True, help="Deprecated spelling of --teacher.",
        show_default=False,
    ),
    teacher_arch: str | None = TeacherArchOpt,
    layer: int = typer.Option(
        -1, "--layer", help="Block whose tokens are the targets (negative counts from the end)."
    ),
    target_norm: bool = typer.Option(
        True,
        "--target-norm/--no-target-norm",
        help="Layer-normalise the targets without affine (V-JEPA's convention).",
    ),
    view_preset: str = ViewPresetOpt,
    num_frames: int | None = ViewNumFramesOpt,
    size: int | None = ViewSizeOpt,
    sampling: str | None = ViewSamplingOpt,
    frame_step: int | None = ViewFrameStepOpt,
    resize: int | None = ViewResizeOpt,
    temporal_jitter: float | None = ViewTemporalJitterOpt,
    crop_scale: str | None = ViewCropScaleOpt,
    hflip: bool | None = ViewHflipOpt,
    view_seed: int | None = ViewSeedOpt,
    views: int | None = ViewsOpt,
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
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (rows, shards, bytes on disk, free space, "
        "settings) and stop; nothing is written."),
    estimate: int = typer.Option(
        0, "--estimate", help="Also time the first N videos through the real pipeline (decode, "
        "JPEG, teacher, writer) into a temporary store, and print the measured JPEG size and "
        "the wall time this build will take.", show_default=False),
    force: bool = typer.Option(
        False, "--force", help="Start even when the free space at the destination is smaller "
        "than the latents need, or the write check fails."),
) -> None:
    """Build the latent cache of one split (see the command's help)."""
    import sys

    from salt_vla.cache.build import BuildConfig, build_cache, plan_build
    from salt_vla.cache.pipeline import PipelineConfig, default_decoders
    from salt_vla.cache.teacher_choice import choose_teacher
    from salt_vla.paths import Resolved, resolve_cache_dir, resolve_data_root

    echo, main = main_rank_echo()
    source = deprecated_option("--teacher-ckpt", teacher_ckpt, "--teacher", teacher)
    if source is None:
        raise fail("give the teacher: --teacher PATH (a VideoMAEv2 checkpoint, sized by "
                   "--teacher-arch) or --teacher random:ARCH:SEED")
    choice = choose_teacher(  # a stage-1 teacher's record fills in what was not typed
        source, teacher_arch, view_preset if _typed(ctx, "view_preset") else None,
        num_frames=num_frames, size=size, sampling=sampling, frame_step=frame_step,
        resize=resize, temporal_jitter=temporal_jitter, crop_scale=crop_scale, hflip=hflip,
        seed=view_seed, n_views=views)
    root = resolve_data_root(data_root if data_root is not None else data)
    if data_root is not None:
        root = Resolved(root.path, "DATA_ROOT")
    out_dir = Resolved(out, "--out") if out is not None else resolve_cache_dir(None, root.path,
                                                                              split)
    if main:
        show_resolved("data root", root)
        show_resolved("cache", out_dir)
    n_workers = workers if workers is not None else default_decoders()
    for note in choice.notes:
        echo(note)
    cfg = BuildConfig(
        data_root=root.path, out=out_dir.path, teacher=source, view=choice.view, split=split,
        teacher_arch=choice.arch, layer=layer, target_norm=target_norm, dtype=dtype,
        shard_size=shard_size, limit=limit, allow_missing=allow_missing, device=device,
        video_backend=video_backend,
        pipeline=PipelineConfig(batch_size=batch_size, workers=n_workers,
                                decode_timeout=decode_timeout),
        command=("salt", *sys.argv[1:]), show_progress=progress, tubelet=choice.tubelet,
        patch=choice.patch, force=force, estimate=estimate,
    )
    if dry_run:
        plan = plan_build(cfg)
        for line in plan.lines():
            echo(line)
        for line in [*plan.check(), "dry run: nothing written"]:  # check() may refuse
            echo(line)
        return
    try:
        result = build_cache(cfg)
    except KeyboardInterrupt:
        raise fail("interrupted; committed shards are kept, re-run the same command to "
                   "resume", code=130) from None
    for line in result.summary_lines():
        echo(line)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Option ``name`` was given (not defaulted): only then does it beat a teacher's record."""
    source = ctx.get_parameter_source(name)  # an enum of typer's bundled click: by name
    return source is not None and source.name != "DEFAULT"


@app.command(
    "verify",
    help="Check a cache: manifest vs files, every row present except recorded failures, "
    "checksums (per-file sha256, per-row crc32c), finite values, frames per shard, the view "
    "hash vs what this code computes. Exit 0 only when everything holds; else exit 1 "
    "listing each problem.",
)
def cache_verify(
    directory: Path | None = typer.Argument(
        None,
        metavar="DIR",
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
        "--teacher).",
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        metavar="PATH",
        help="Teacher checkpoint for --recompute when it moved since the build (its sha256 "
        "must match the recorded one).",
        show_default=False,
    ),
    teacher_ckpt: str | None = typer.Option(
        None, "--teacher-ckpt", hidden=True, help="Deprecated spelling of --teacher.",
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

    root = cache_dir_arg(directory, data, split)
    source = deprecated_option("--teacher-ckpt", teacher_ckpt, "--teacher", teacher)

    def tick(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rverifying shard {done}/{total}")
            if done == total:
                sys.stderr.write("\n")

    report = verify_store(root, quick=quick, recompute=recompute, teacher_ckpt=source,
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


@app.command(
    "info",
    help="Summarise a cache: rows, failures, bytes on disk, teacher, view, checksummed "
    "fraction, build status.",
)
def cache_info(
    directory: Path | None = typer.Argument(
        None,
        metavar="DIR",
        help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split of the default cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    import json

    from salt_vla.cache.info import format_info, store_info

    root = cache_dir_arg(directory, data, split)
    info = store_info(root)
    if as_json:
        say(json.dumps(info, indent=1))
    else:
        for line in format_info(info):
            say(line)

"""``salt cache build``: a split's videos -> teacher latents + frames, resumable, multi-rank.

Rows are ``(video, view)`` pairs in split order: row ``v * n_views + k`` is view ``k`` of the
``v``-th video (after ``limit``). Rows never move: a video that fails to decode keeps its row,
which stays empty (NaN fill in zarr) and is listed in failures.jsonl, so shard contents, and
with them every byte of the store, depend only on the split, the view and the teacher.

Before anything is written, :func:`plan_build` says what the build will cost (rows, shards,
bytes of latents and frames, free space, decode and teacher settings, and with ``estimate``
the wall time measured on a short sample); a build prints the same lines first and refuses a
destination that is not writable or too small for the latents (``force`` skips the check).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla import __version__
from salt_vla.cache.decode_pool import DecodeTask, Loader, ViewLoader
from salt_vla.cache.dist import BuildRanks, build_ranks
from salt_vla.cache.estimate import Destination, StoreSize, format_size, probe_destination
from salt_vla.cache.format import StorePaths, read_json, shard_rows
from salt_vla.cache.frames import JPEG_QUALITY, JPEG_SUBSAMPLING_NAME
from salt_vla.cache.pipeline import PipelineConfig, PipelineStats, TeacherFn, run_pipeline
from salt_vla.cache.progress import Progress
from salt_vla.cache.store_writer import (
    CacheBuildError,
    StoreLock,
    committed_shards,
    new_manifest,
    prepare_store,
    write_manifest,
)

STORE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``salt cache build`` needs. ``teacher`` is a checkpoint path or
    ``"random:ARCH:SEED"``; ``view`` a salt_vla.data.view.ViewSpec."""

    data_root: Path
    out: Path
    teacher: str
    view: Any
    split: str = "train"
    teacher_arch: str = "vit_base"
    layer: int = -1
    target_norm: bool = True
    dtype: str = "float16"
    shard_size: int = 256
    limit: int | None = None
    allow_missing: bool = False
    device: str = "auto"
    video_backend: str = "auto"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    command: tuple[str, ...] = ()
    show_progress: bool = True
    manifest_interval: float = 10.0  # seconds between cache.json refreshes during the build
    tubelet: int = 2  # the teacher's token geometry (a stage-1 teacher records its own)
    patch: int = 16
    force: bool = False  # build even where the destination check says it will not fit
    estimate: int = 0  # time this many videos through the pipeline first (plan_build)


@dataclass
class BuildResult:
    """What a build did (summed over ranks) and the store it left."""

    root: Path
    status: str
    rows: int
    rows_done: int  # rows this run processed (all ranks)
    rows_skipped: int  # rows of shards committed by an earlier run
    failures: int  # failed rows this run
    bytes_written: int
    seconds: float
    stats: list[PipelineStats]

    @property
    def videos_per_s(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """What ``salt cache build`` prints when it is done."""
        from salt_vla.cache.progress import format_bytes

        lines = [
            f"done: {self.rows_done} rows in {self.seconds:.1f} s ({self.videos_per_s:.1f} "
            f"videos/s), {format_bytes(self.bytes_written)} written, {self.failures} failures"
            + (f", {self.rows_skipped} rows already committed" if self.rows_skipped else ""),
            f"cache: {self.root} ({self.status}); check it with `salt cache verify "
            f"{self.root}`",
        ]
        if self.failures:
            lines.append(f"failures: {self.root / 'failures.jsonl'}")
        return lines


def resolve_device(device: str, ranks: BuildRanks) -> str:
    """The teacher's device for this rank: ``auto``/``cuda`` -> this rank's GPU (CPU for
    ``auto`` without CUDA); ``cpu`` and ``cuda:N`` as given."""
    from salt_vla.distributed import pick_device

    return str(pick_device(device, ranks.local_rank))


def make_teacher_fn(teacher: Any, device: str, dtype: str = "float16") -> TeacherFn:
    """Wrap a Teacher as uint8 frames ``[B, T, H, W, 3]`` -> latents ``[B, N, D]`` in the
    storage ``dtype``. The cast happens on the device: half the bytes to copy back, and no
    CPU time spent converting (a batch of 32 ViT-B clips is 154 MB in float32)."""
    import torch

    from salt_vla.models.pixels import frames_to_input

    out_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]

    def run(frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames)
        if device != "cpu":
            x = x.pin_memory().to(device, non_blocking=True)
        return teacher.targets(frames_to_input(x)).to(out_dtype).cpu().numpy()

    return run


def _frames_meta(view: Any) -> dict[str, Any]:
    return {
        "dir": "frames",
        "pattern": "shard-{shard:06d}.tar",
        "key": "{row:09d}",
        "format": "jpeg",
        "jpeg_quality": JPEG_QUALITY,
        "jpeg_subsampling": JPEG_SUBSAMPLING_NAME,
        "decoder": "Pillow",
        "num_frames": view.num_frames,
        "height": view.size,
        "width": view.size,
    }


def _load_index(cfg: BuildConfig) -> Any:
    from salt_vla.data.ssv2 import SSv2Error, load_split

    root = cfg.data_root
    if not root.is_dir():
        raise CacheBuildError(
            f"data root {root} does not exist (or is not a directory). Pass the SSv2 root as "
            f"DATA_ROOT (or --data, or $SALT_DATA); `salt data synth DIR` makes a small one."
        )
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_split(root, cfg.split, allow_missing=cfg.allow_missing)
    except SSv2Error as e:
        raise CacheBuildError(str(e)) from None


def plan_rows(index: Any, n_views: int, limit: int | None) -> tuple[list[str], list[int],
                                                                   list[int], list[Path]]:
    """Row table: ``(video ids, view indices, labels, video paths)``, row = v * n_views + k."""
    entries = index.entries if limit is None else index.entries[:limit]
    ids, views, labels, paths = [], [], [], []
    for e in entries:
        p = index.video_path(e.id)
        for k in range(n_views):
            ids.append(e.id)
            views.append(k)
            labels.append(-1 if e.label is None else int(e.label))
            paths.append(p)
    return ids, views, labels, paths


def _check_config(cfg: BuildConfig) -> None:
    if cfg.dtype not in STORE_DTYPES:
        raise CacheBuildError(f"--dtype {cfg.dtype}: choose one of {', '.join(STORE_DTYPES)}")
    if cfg.shard_size < 1 or cfg.pipeline.batch_size < 1:
        raise CacheBuildError("--shard-size and --batch-size must be >= 1")
    if cfg.estimate < 0:
        raise CacheBuildError(f"--estimate takes a number of videos >= 1, got {cfg.estimate}")


def build_cache(cfg: BuildConfig, *, loader: Loader | None = None,
                log: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or resume) the cache of ``cfg.split`` at ``cfg.out``. Under torchrun every
    rank calls this; rank 0 creates and finalises the store. ``loader`` replaces the video
    loader (tests inject failures with it). Raises CacheBuildError with the fix."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    _check_config(cfg)
    ranks = build_ranks()
    try:
        return _build(cfg, ranks, loader, say)
    finally:
        ranks.close()


def _build(cfg: BuildConfig, ranks: BuildRanks, loader: Loader | None,
           say: Callable[[str], None]) -> BuildResult:
    from salt_vla.models.teacher import TeacherSpec, load_teacher

    t0 = time.perf_counter()
    view = cfg.view
    index = _load_index(cfg)
    ids, views, labels, paths = plan_rows(index, view.n_views, cfg.limit)
    if not ids:
        raise CacheBuildError(f"no videos to cache in {cfg.data_root} split {cfg.split}")
    root = cfg.out
    fresh = not (root / "cache.json").exists()
    # Rank 0 says what the build will cost and checks the destination before the teacher
    # (maybe gigabytes) is loaded; every rank learns the outcome.
    err, plan = None, None
    if ranks.rank == 0:
        try:
            plan = plan_build(cfg, index, world=ranks.world)
            for line in plan.lines():
                say(line)
            if fresh:
                for line in plan.check():
                    say(line)
        except CacheBuildError as e:
            err = str(e)
    err = ranks.broadcast(err)
    if err is not None:
        raise CacheBuildError(err)
    device = resolve_device(cfg.device, ranks)
    spec = TeacherSpec(arch=cfg.teacher_arch, num_frames=view.num_frames, img_size=view.size,
                       tubelet=cfg.tubelet, patch=cfg.patch, layer=cfg.layer,
                       target_norm=cfg.target_norm)
    try:
        teacher = load_teacher(cfg.teacher, spec, device=device)
    except (ValueError, OSError) as e:
        raise CacheBuildError(f"cannot load teacher {cfg.teacher}: {e}") from e
    desc = dict(teacher.describe())
    source = desc.pop("checkpoint", cfg.teacher)
    on_cuda = device.startswith("cuda")
    desc["compute"] = {"device_type": "cuda" if on_cuda else device.split(":")[0],
                       "precision": "bf16-autocast" if on_cuda else "fp32"}
    grid = teacher.grid
    manifest = new_manifest(
        split=cfg.split,
        teacher=desc,
        view={"spec": view.to_dict(), "hash": view.hash()},
        frames=_frames_meta(view),
        dtype=cfg.dtype,
        tokens=grid.num_tokens,
        dim=teacher.dim,
        grid=grid.as_tuple(),
        shard_size=cfg.shard_size,
        video_ids=ids,
        view_index=views,
        labels=labels,
        missing_video_ids=list(index.missing),
        command=list(cfg.command),
        tool_version=__version__,
    )
    manifest["teacher_source"] = str(source)

    # Rank 0 locks, creates or validates the store; every rank learns the outcome.
    err = None
    lock = StoreLock(root)
    if ranks.rank == 0:
        try:
            if root.exists() and fresh:
                prepare_store(root, manifest, check_only=True)  # refuse a foreign directory
            lock.__enter__()
            manifest = prepare_store(root, manifest)
            if not fresh and plan is not None:  # a resume needs room for what is left only
                done = len(committed_shards(root, manifest))
                for line in replace(plan, committed=done).check():
                    say(line)
        except CacheBuildError as e:
            lock.__exit__()
            err = str(e)
    err = ranks.broadcast(err)
    if err is not None:
        raise CacheBuildError(err)
    try:
        return _build_shards(cfg, ranks, root, manifest, loader, teacher, device, ids, views,
                             paths, say, t0)
    finally:
        lock.__exit__()


def _build_shards(cfg: BuildConfig, ranks: BuildRanks, root: Path, manifest: dict[str, Any],
                  loader: Loader | None, teacher: Any, device: str, ids: list[str],
                  views: list[int], paths: list[Path], say: Callable[[str], None],
                  t0: float) -> BuildResult:
    paths_ = StorePaths(root)
    if ranks.rank != 0:
        manifest = read_json(paths_.manifest, "cache manifest")

    lat = manifest["latents"]
    rows = lat["shape"][0]
    mine = [i for i in range(lat["num_shards"]) if ranks.owns(i)]
    done = committed_shards(root, manifest, mine)
    todo = [i for i in mine if i not in done]
    shard_tasks = []
    for i in todo:
        shard_tasks.append((i, [DecodeTask(r, str(paths[r]), ids[r], views[r])
                                for r in shard_rows(i, rows, lat["shard_size"])]))
    n_todo = sum(len(t) for _, t in shard_tasks)
    say(f"[rank {ranks.rank}/{ranks.world}] {len(mine)} shards: {len(done)} committed, "
        f"{len(todo)} to build ({n_todo} rows) on {device}")

    last = [0.0]

    def on_commit(shard: int, record: dict[str, Any]) -> None:
        now = time.monotonic()
        if ranks.rank == 0 and now - last[0] >= cfg.manifest_interval:
            write_manifest(root, manifest)
            last[0] = now

    progress = Progress(n_todo, label=f"cache build [rank {ranks.rank}]" if ranks.distributed
                        else "cache build", enabled=cfg.show_progress)
    stats = PipelineStats()
    if shard_tasks:
        loader = loader or ViewLoader(cfg.view, cfg.video_backend)
        teacher_fn = make_teacher_fn(teacher, device, cfg.dtype)
        try:
            stats = run_pipeline(root, manifest, shard_tasks, loader, teacher_fn, cfg.pipeline,
                                 on_commit=on_commit, progress=progress)
        except BaseException:
            if ranks.rank == 0:
                # cache.json should show every shard committed before the failure.
                try:
                    write_manifest(root, manifest)
                except (OSError, CacheBuildError):
                    pass  # e.g. the disk is still full: the commit records remain the truth
            raise
        finally:
            progress.close()
    del teacher

    all_stats = ranks.gather(stats)
    ranks.barrier()
    outcome: tuple[str, list[int]] | str = ("building", [])
    if ranks.rank == 0:
        try:
            final = write_manifest(root, manifest)
            outcome = (final["status"], [s["index"] for s in final["shards"]
                                         if s["status"] != "committed"])
        except CacheBuildError as e:
            outcome = str(e)
    outcome = ranks.broadcast(outcome)  # every rank fails alike, none waits on a dead rank 0
    if isinstance(outcome, str):
        raise CacheBuildError(outcome)
    status, missing = outcome
    if status != "complete":
        raise CacheBuildError(f"shards {missing[:10]} of {root} are not committed after the "
                              f"build; re-run the same command to finish them")
    seconds = time.perf_counter() - t0
    rows_done = sum(s.rows_ok + s.rows_failed for s in all_stats)
    return BuildResult(
        root=root,
        status=status,
        rows=rows,
        rows_done=rows_done,
        rows_skipped=rows - rows_done,
        failures=sum(s.rows_failed for s in all_stats),
        bytes_written=sum(s.bytes_written for s in all_stats),
        seconds=seconds,
        stats=all_stats,
    )


# --- what a build will cost, before it starts ------------------------------------------------


@dataclass(frozen=True)
class SampleTiming:
    """``videos`` videos of the split run through the real pipeline (decode workers, JPEG
    round trip, teacher, shard writer) into a temporary store that is then deleted."""

    videos: int
    rows: int
    failed: int
    pipeline_seconds: float  # decoders started -> last shard committed
    startup_seconds: float  # index, teacher load, store set-up
    decode_seconds: float  # summed over the decoder processes
    teacher_seconds: float
    jpeg_bytes: float | None  # mean JPEG size of a frame (None: every video failed)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0


@dataclass(frozen=True)
class BuildPlan:
    """What a build of ``cfg`` will do and take (:func:`plan_build`)."""

    cfg: BuildConfig
    videos: int
    size: StoreSize
    dest: Destination
    arch: str
    data_line: str
    committed: int = 0  # shards a resumed build finds committed
    world: int = 1
    sample: SampleTiming | None = None
    split_videos: int = 0  # videos in the split before --limit

    @property
    def limited(self) -> str:
        return f" (--limit: of {self.split_videos})" if self.split_videos > self.videos else ""

    @property
    def shards_left(self) -> int:
        return self.size.num_shards - self.committed

    def need(self) -> tuple[int, int]:
        """(latents, frames) bytes still to write: latents exact, frames estimated."""
        if self.committed == 0:
            return self.size.latents_bytes(), self.size.frames_bytes()
        return self.size.latents_bytes(self.shards_left), self.size.frames_bytes(self.shards_left)

    def lines(self) -> list[str]:
        """The plan as text: what `salt cache build --dry-run` prints, and a build first."""
        cfg, size = self.cfg, self.size
        view, pipe = cfg.view, cfg.pipeline
        lat, frames = self.need()
        jpeg = (f"measured {size.frame_jpeg_bytes / 1e3:.1f} kB a frame on the sample"
                if size.measured else f"rule of thumb {size.frame_jpeg_bytes / 1e3:.1f} kB a "
                f"frame at 3 bits/pixel; --estimate N measures it")
        resume = (f"; {self.committed} of them committed already, {self.shards_left} to build"
                  if self.committed else "")
        lines = [
            self.data_line,
            f"rows: {self.videos} videos{self.limited} x {view.n_views} view"
            f"{'s' * (view.n_views > 1)} = {size.rows} rows in {size.num_shards} shards of "
            f"{size.shard_size}{resume}",
            f"latents: [{size.rows}, {size.tokens}, {size.dim}] {size.dtype} = "
            f"{size.latent_row_bytes:,} B a row; {format_size(lat)} to write (exact, shard "
            f"indexes included)",
            f"frames: {view.num_frames} JPEG frames of {view.size}x{view.size} a row ({jpeg}); "
            f"~{format_size(frames)} to write",
            f"destination: {cfg.out}: {format_size(self.dest.free)} free at "
            f"{self.dest.existing}; needs ~{format_size(lat + frames)}; "
            + ("writable" if self.dest.writable else f"NOT WRITABLE: {self.dest.problem}"),
            f"decode: {pipe.workers} decoder process{'es' * (pipe.workers != 1)} per rank"
            f"{f' x {self.world} ranks' if self.world > 1 else ''}, backend "
            f"{cfg.video_backend}, timeout {pipe.decode_timeout} s a video; view {view.hash()} "
            f"({view.num_frames} frames, {view.sampling} sampling, {view.size} px)",
            f"teacher: {cfg.teacher} ({self.arch}, block {cfg.layer}, target norm "
            f"{'on' if cfg.target_norm else 'off'}), {pipe.batch_size} clips a batch, device "
            f"{cfg.device}, latents stored as {cfg.dtype}",
        ]
        if self.sample is not None:
            lines += self._time_lines()
        return lines

    def _time_lines(self) -> list[str]:
        from salt_vla.cache.progress import format_seconds

        t = self.sample
        assert t is not None
        if t.rows == 0:
            return [f"time: every one of the {t.videos} sample videos failed to decode; no "
                    f"estimate (see `salt data info --scan`)"]
        rows_left = self.shards_left * self.size.shard_size if self.committed else self.size.rows
        total = rows_left / t.rows_per_s
        bound = "decode" if t.decode_seconds / max(1, self.cfg.pipeline.workers) > \
            t.teacher_seconds else "teacher"
        return [
            f"sample: {t.videos} videos ({t.rows} rows, {t.failed} failed) in "
            f"{t.pipeline_seconds:.1f} s = {t.rows_per_s:.2f} rows/s through the pipeline "
            f"(decode {t.decode_seconds / max(1, t.rows + t.failed):.2f} s a row summed over "
            f"workers, teacher {t.teacher_seconds:.1f} s in all: {bound}-bound), after "
            f"{t.startup_seconds:.1f} s of start-up",
            f"time: ~{format_seconds(total)} for {rows_left} rows in one process at that rate"
            + (f", ~{format_seconds(total / self.world)} over {self.world} ranks" if
               self.world > 1 else "; a torchrun build with N ranks (a GPU and decoders each)"
               " takes about 1/N of it")
            + "; a short sample includes the decoders' start-up, so it errs long",
        ]

    def check(self) -> list[str]:
        """Raise CacheBuildError when the destination is not writable or has less free space
        than the latents need (exact); returns warning lines (frames may not fit: they are
        an estimate). ``cfg.force`` turns the refusals into warnings."""
        lat, frames = self.need()
        out, free = self.cfg.out, self.dest.free
        fix = (f"Pass --out DIR (or set $SALT_CACHE) to a folder on a disk with "
               f"~{format_size(lat + frames)} free (the default, <data root>/salt-cache/<split>, "
               f"is often on a read-only data mount)")
        problems = []
        if not self.dest.writable:
            problems.append(f"cannot write the cache to {out}: {self.dest.problem}. {fix}.")
        elif lat > free:
            problems.append(f"{out} has {format_size(free)} free but the latents alone need "
                            f"{format_size(lat)} (+ ~{format_size(frames)} of frames). {fix}; "
                            f"--force starts anyway (it stops with 'disk full', keeping the "
                            f"committed shards).")
        if problems and not self.cfg.force:
            raise CacheBuildError(problems[0])
        warnings = [f"warning (--force): {p}" for p in problems]
        if not problems and lat + frames > free:
            warnings.append(f"warning: {out} has {format_size(free)} free; the latents fit "
                            f"({format_size(lat)}) but the frames (~{format_size(frames)}, an "
                            f"estimate) may not. A build that fills the disk stops with 'disk "
                            f"full' and keeps its committed shards.")
        return warnings


def _committed_in(root: Path) -> int:
    """Shards committed in an existing store at ``root`` (0 when there is none)."""
    from salt_vla.cache.format import CacheFormatError

    paths = StorePaths(root)
    if not paths.manifest.exists():
        return 0
    try:
        return len(committed_shards(root, read_json(paths.manifest, "cache manifest")))
    except (CacheFormatError, KeyError, OSError):
        return 0  # the build itself explains what is wrong with it


def plan_build(cfg: BuildConfig, index: Any = None, world: int = 1) -> BuildPlan:
    """What building ``cfg`` will take, without writing to the destination: rows, shards,
    bytes, free space, settings; with ``cfg.estimate`` > 0 also the wall time of that many
    videos through the real pipeline (in a temporary store, deleted after). ``index``: the
    loaded split (else loaded here); ``world``: ranks of the build."""
    from salt_vla.models.teacher import ARCHS, TeacherSpec, parse_random_source

    _check_config(cfg)
    index = index if index is not None else _load_index(cfg)
    view = cfg.view
    entries = index.entries if cfg.limit is None else index.entries[:cfg.limit]
    arch = cfg.teacher_arch
    if cfg.teacher.startswith("random:"):
        try:
            arch = parse_random_source(cfg.teacher)[0]
        except ValueError as e:
            raise CacheBuildError(f"--teacher {cfg.teacher}: {e}") from None
    grid = TeacherSpec(arch=arch, num_frames=view.num_frames, img_size=view.size,
                       tubelet=cfg.tubelet, patch=cfg.patch, layer=cfg.layer).grid
    sample = _timed_sample(cfg) if cfg.estimate > 0 else None
    size = StoreSize(len(entries) * view.n_views, grid.num_tokens, ARCHS[arch].dim, cfg.dtype,
                     view.num_frames, view.size, cfg.shard_size,
                     sample.jpeg_bytes if sample is not None else None)
    return BuildPlan(cfg, len(entries), size, probe_destination(cfg.out), arch,
                     f"data: {index.describe()}", _committed_in(cfg.out), world, sample,
                     len(index.entries))


def _timed_sample(cfg: BuildConfig) -> SampleTiming:
    """Build the first ``cfg.estimate`` videos into a temporary store and time it."""
    from salt_vla.distributed import rank_env

    if rank_env().world > 1:
        raise CacheBuildError("--estimate times one process: run it without torchrun (the "
                              "plan then says what N ranks take)")
    n = cfg.estimate if cfg.limit is None else min(cfg.estimate, cfg.limit)
    with tempfile.TemporaryDirectory(prefix="salt-estimate-") as tmp:
        sample_cfg = replace(cfg, out=Path(tmp) / "store", limit=n, estimate=0, force=True,
                             show_progress=False, command=("salt", "cache", "build",
                                                           "(--estimate sample)"))
        res = build_cache(sample_cfg, log=lambda msg: None)
        manifest = read_json(StorePaths(sample_cfg.out).manifest, "cache manifest")
        sizes = [n for rec in committed_shards(sample_cfg.out, manifest).values()
                 for entry in rec["frames"]["members"] if entry for n in entry[2:]]
    stats = res.stats[0]
    pipeline = stats.wall_seconds
    return SampleTiming(
        videos=n, rows=stats.rows_ok, failed=stats.rows_failed, pipeline_seconds=pipeline,
        startup_seconds=max(0.0, res.seconds - pipeline), decode_seconds=stats.decode_seconds,
        teacher_seconds=stats.teacher_seconds,
        jpeg_bytes=sum(sizes) / len(sizes) if sizes else None,
    )


def with_pipeline(cfg: BuildConfig, **changes: Any) -> BuildConfig:
    """``cfg`` with some PipelineConfig fields replaced."""
    return replace(cfg, pipeline=replace(cfg.pipeline, **changes))

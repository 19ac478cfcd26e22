"""``salt cache build``: a split's videos -> teacher latents + frames, resumable, multi-rank.

Rows are ``(video, view)`` pairs in split order: row ``v * n_views + k`` is view ``k`` of the
``v``-th video (after ``limit``). Rows never move: a video that fails to decode keeps its row,
which stays empty (NaN fill in zarr) and is listed in failures.jsonl, so shard contents, and
with them every byte of the store, depend only on the split, the view and the teacher.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla import __version__
from salt_vla.cache.decode_pool import DecodeTask, Loader, ViewLoader
from salt_vla.cache.dist import BuildRanks, build_ranks
from salt_vla.cache.format import DTYPES, QUANTIZED_DTYPES, StorePaths, read_json, shard_rows
from salt_vla.cache.frames import JPEG_QUALITY, JPEG_SUBSAMPLING_NAME
from salt_vla.cache.pipeline import PipelineConfig, PipelineStats, TeacherFn, run_pipeline
from salt_vla.cache.progress import Progress
from salt_vla.cache.store_writer import (
    CacheBuildError,
    ManifestWriter,
    StoreLock,
    committed_shards,
    new_manifest,
    prepare_store,
)

# int8: per-token float16 scale (quantize.py); readers hand float16 back.
STORE_DTYPES = ("float16", "float32", "int8")


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
    CPU time spent converting (a batch of 32 ViT-B clips is 154 MB in float32). int8 stores
    get float32 here: the shard writer quantises each row against its own per-token scale."""
    import torch

    from salt_vla.models.pixels import frames_to_input

    out_dtype = {"float16": torch.float16, "float32": torch.float32,
                 "int8": torch.float32}[dtype]

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


def build_cache(cfg: BuildConfig, *, loader: Loader | None = None,
                log: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or resume) the cache of ``cfg.split`` at ``cfg.out``. Under torchrun every
    rank calls this; rank 0 creates and finalises the store. ``loader`` replaces the video
    loader (tests inject failures with it). Raises CacheBuildError with the fix."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if cfg.dtype not in STORE_DTYPES:
        raise CacheBuildError(f"--latents-dtype {cfg.dtype}: choose one of "
                              f"{', '.join(STORE_DTYPES)}")
    if cfg.shard_size < 1 or cfg.pipeline.batch_size < 1:
        raise CacheBuildError("--shard-size and --batch-size must be >= 1")
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
    device = resolve_device(cfg.device, ranks)
    spec = TeacherSpec(arch=cfg.teacher_arch, num_frames=view.num_frames, img_size=view.size,
                       layer=cfg.layer, target_norm=cfg.target_norm)
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
    root = cfg.out

    # Rank 0 locks, creates or validates the store; every rank learns the outcome.
    err = None
    lock = StoreLock(root)
    if ranks.rank == 0:
        try:
            if root.exists() and not (root / "cache.json").exists():
                prepare_store(root, manifest, check_only=True)  # refuse a foreign directory
            lock.__enter__()
            manifest = prepare_store(root, manifest)
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
    if ranks.rank == 0:
        _preflight_space(root, manifest, len(todo) * ranks.world, say)
    say(f"[rank {ranks.rank}/{ranks.world}] {len(mine)} shards: {len(done)} committed, "
        f"{len(todo)} to build ({n_todo} rows) on {device}")

    last = [0.0]
    # Rank 0 keeps cache.json merged in memory: a rewrite costs O(new commits).
    writer = ManifestWriter(root, manifest) if ranks.rank == 0 else None

    def on_commit(shard: int, record: dict[str, Any]) -> None:
        if writer is None:
            return
        writer.add(shard, record)
        now = time.monotonic()
        if now - last[0] >= cfg.manifest_interval:
            writer.write()
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
            if writer is not None:
                # cache.json should show every shard committed before the failure.
                try:
                    writer.write()
                except (OSError, CacheBuildError):
                    pass  # e.g. the disk is still full: the commit records remain the truth
            raise
        finally:
            progress.close()
    del teacher

    all_stats = ranks.gather(stats)
    ranks.barrier()
    outcome: tuple[str, list[int]] | str = ("building", [])
    if writer is not None:
        try:
            final = writer.write()
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


def _preflight_space(root: Path, manifest: dict[str, Any], shards_left: int,
                     say: Callable[[str], None]) -> None:
    """Warn (not fail: frames sizes are estimates) when the disk looks too small."""
    lat = manifest["latents"]
    per_row = lat["tokens"] * lat["dim"] * DTYPES[lat["dtype"]].itemsize
    if lat["dtype"] in QUANTIZED_DTYPES:
        per_row += lat["tokens"] * 2  # the float16 scales
    fr = manifest["frames"]
    per_row += fr["num_frames"] * fr["height"] * fr["width"] // 8  # ~JPEG q90 size
    need = min(shards_left, lat["num_shards"]) * lat["shard_size"] * per_row
    free = shutil.disk_usage(root).free
    if need > free:
        say(f"warning: the build needs about {need / 1e9:.1f} GB more but {root} has "
            f"{free / 1e9:.1f} GB free; it will stop with 'disk full' (committed shards kept).")


def with_pipeline(cfg: BuildConfig, **changes: Any) -> BuildConfig:
    """``cfg`` with some PipelineConfig fields replaced."""
    return replace(cfg, pipeline=replace(cfg.pipeline, **changes))

"""Training loader throughput: clips/s per worker from a store vs decoding the source videos.

Makes a synthetic SSv2-layout dataset at SSv2-like resolution (240 x 424, 48 frames, VP9
.webm), builds a store from it with the chosen view (`salt cache build` in-process, random
teacher), then measures, on the same rows and the same view:

- store: the trainer's loader (frames tar -> JPEG decode in DataLoader workers, masks,
  latents from the memory-mapped store in the feeder thread);
- videos: the same DataLoader decoding the .webm files through the view (what `--targets
  online` and a store-less trainer must do), without targets.

Both with ``--workers`` DataLoader workers; clips/s are divided by the worker count. Also the
single-process per-clip time of each frame source. Page cache warm (one untimed pass).
The issue's target: store >= 2x videos per worker.

    python benchmarks/bench_train_loader.py [--videos 24] [--view ssv2-16x224] [--workers 1]
        [--batch 8] [--passes 2] [--teacher random:vit_tiny:0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_store(root: Path, videos: int, view: str, teacher: str, height: int = 240,
               width: int = 424, frames: int = 48, shard_size: int = 16) -> tuple[Path, Path]:
    """Synthetic dataset + store under ``root`` (reused when already there)."""
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.synth import SynthConfig, generate_dataset
    from salt_vla.data.view import VIEW_PRESETS

    data, cache = root / "data", root / "cache"
    if not (data / "train.json").exists():
        generate_dataset(data, SynthConfig(videos=videos, classes=4, frames=frames,
                                           height=height, width=width,
                                           splits=(1.0, 0.0001, 0.0001)))
    if not (cache / "cache.json").exists():
        arch = teacher.split(":")[1]
        build_cache(BuildConfig(data_root=data, out=cache, teacher=teacher, teacher_arch=arch,
                                view=VIEW_PRESETS[view], shard_size=shard_size, device="cpu",
                                show_progress=False,
                                pipeline=PipelineConfig(batch_size=4, workers=2)),
                    log=lambda m: None)
    return data, cache


def loader_rate(dataset, targets, cfg, grid, workers: int, batch: int, passes: int) -> float:  # noqa: ANN001
    """Clips/s through DataLoader + BatchFeeder over ``passes`` epochs (the first untimed)."""
    from salt_vla.masking.collator import MaskCollator
    from salt_vla.trainer.build import mask_config
    from salt_vla.trainer.data import BatchFeeder, StreamBatches, StreamLayout, make_loader

    layout = StreamLayout(len(dataset), batch)
    per_epoch = len(dataset) // batch
    total = per_epoch * passes
    loader = make_loader(dataset, StreamBatches(layout, 0, 0, 0, total),
                         MaskCollator(mask_config(cfg), grid, 0), workers, 2, pin_memory=False)
    feeder = BatchFeeder(loader, targets, pin=False)
    try:
        t0 = None
        for i, _ in enumerate(feeder):
            if i == per_epoch - 1:
                t0 = time.perf_counter()  # first pass warms caches and starts workers
        assert t0 is not None
        return (total - per_epoch) * batch / (time.perf_counter() - t0)
    finally:
        feeder.close()


def per_clip_seconds(source, rows: np.ndarray, reps: int = 1) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(reps):
        for r in rows:
            source.frames(int(r))
    return (time.perf_counter() - t0) / (reps * len(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--view", default="ssv2-16x224")
    ap.add_argument("--teacher", default="random:vit_tiny:0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, help="epochs over the rows (1st untimed)")
    ap.add_argument("--keep", type=Path, default=None, help="keep/reuse the data here")
    args = ap.parse_args()

    import torch

    from salt_vla.cache.latent_store import LatentStore
    from salt_vla.trainer.build import view_spec
    from salt_vla.trainer.data import ClipDataset
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.sources import VideoFrames, open_cached

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    t0 = time.perf_counter()
    data, cache = make_store(root, args.videos, args.view, args.teacher)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}; data and "
          f"store ready in {time.perf_counter() - t0:.0f} s under {root}")
    store = LatentStore(cache)
    cfg = resolve("exp3", [f"view={args.view}", f"teacher_dim={store.dim}"])
    src = open_cached(cfg, cache)
    src_spec = view_spec(cfg)
    videos = VideoFrames(data, "train", src_spec)
    assert len(videos) == len(src.rows), (len(videos), len(src.rows))
    frames_mb = sum(p.stat().st_size for p in store.frames_shards()) / len(src.rows) / 2**20
    print(f"# view {args.view} ({src_spec.num_frames} x {src_spec.size}^2), {len(src.rows)} "
          f"clips from {args.videos} videos of 240x424 x 48 frames; store: "
          f"{frames_mb:.2f} MiB JPEG frames + {store.row_nbytes / 2**20:.2f} MiB latents "
          f"({store.tokens} x {store.dim} {store.dtype}) per clip")

    rows = src.rows[: min(8, len(src.rows))]
    per_clip_store = per_clip_seconds(src.frames, rows, reps=2)
    per_clip_video = per_clip_seconds(videos, rows, reps=1)
    print(f"single process, per clip: store frames {1000 * per_clip_store:.1f} ms "
          f"({1 / per_clip_store:.1f} clips/s), video decode + view "
          f"{1000 * per_clip_video:.1f} ms ({1 / per_clip_video:.1f} clips/s): "
          f"{per_clip_video / per_clip_store:.2f}x")

    w = args.workers
    store_rate = loader_rate(ClipDataset(src.frames, src.rows), store, cfg, src.grid, w,
                             args.batch, args.passes)
    video_rate = loader_rate(ClipDataset(videos, np.arange(len(videos))), None, cfg, src.grid,
                             w, args.batch, args.passes)
    print(f"loader, {w} worker(s), batch {args.batch}: store {store_rate:.1f} clips/s "
          f"({store_rate / w:.1f} per worker, with latents), videos {video_rate:.1f} clips/s "
          f"({video_rate / w:.1f} per worker, no latents)")
    print(f"store vs video decoding: {store_rate / video_rate:.2f}x per worker (target >= 2x)")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

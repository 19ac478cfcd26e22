"""Time to open a many-shard store for training: member tables (format 2) vs header scan (1).

Writes a store of ``--shards`` shards of ``--rows-per-shard`` rows through the build's own
writer (``ShardTransaction``: latents, frames tar, commit record, cache.json), with a view of
``--frames`` JPEG frames of 64x64 per row (~3 KB each, as SSv2's 16x112 frames) and small
latents, so that the frames tars have the member count and layout of a real store and the
latents cost nothing. Then
makes a format-version-1 twin of it: the same data files (hard links), cache.json and
commit records without the member tables, as version 1 wrote them.

Both are opened the way ``salt train`` opens its store (``trainer.sources.open_cached``:
cache.json, zarr metadata, the config checks, the frames index), taking turns, ``--repeat``
times each:

- warm: files in the page cache (straight after the previous open);
- cold: every file of both stores evicted from the page cache first
  (``posix_fadvise(DONTNEED)``, per file, no root needed; directory entries and inodes stay
  cached, so "cold" is a lower bound for a fresh boot or a network file system).

    python benchmarks/bench_store_open.py [--shards 2000] [--rows-per-shard 4] [--frames 8]
        [--repeat 5] [--keep DIR]

SSv2's train split at shard size 256 is ``--shards 660 --rows-per-shard 256 --frames 16``
(~9 GB of tars).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import salt_vla.cache.frames_reader as frames_reader
from salt_vla.cache.format import StorePaths, identity_digest, read_json, write_json_atomic
from salt_vla.cache.frames import jpeg_round_trip
from salt_vla.cache.store_writer import (
    ShardTransaction,
    new_manifest,
    prepare_store,
    write_manifest,
)
from salt_vla.data.view import ViewSpec
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.sources import open_cached

SIZE = 64
DIM = 8  # teacher width of the fake latents: a row is (frames/2 x 4 x 4) tokens x 8 x fp16


def write_store(root: Path, shards: int, rows_per_shard: int, frames: int, seed: int = 0
                ) -> None:
    """A complete version-2 store, written by the build's writer."""
    spec = ViewSpec(num_frames=frames, size=SIZE)
    rows = shards * rows_per_shard
    grid = (spec.num_frames // 2, spec.size // 16, spec.size // 16)  # tiny: tubelet 2, patch 16
    manifest = new_manifest(
        split="train", teacher={"arch": "bench", "dim": DIM},
        view={"spec": spec.to_dict(), "hash": spec.hash()},
        frames={"num_frames": spec.num_frames, "height": spec.size, "width": spec.size},
        dtype="float16", tokens=int(np.prod(grid)), dim=DIM, grid=grid,
        shard_size=rows_per_shard, video_ids=[f"v{i}" for i in range(rows)],
        view_index=[0] * rows, labels=[0] * rows, missing_video_ids=[], command=["bench"],
        tool_version="bench")
    manifest = prepare_store(root, manifest)
    rng = np.random.default_rng(seed)
    # A few distinct clips, so JPEG sizes vary from row to row as in a real store.
    clips = []
    for _ in range(7):
        x = np.linspace(0, 255, spec.size, dtype=np.float32)
        base = (x[None, :, None] + x[:, None, None]) / 2 + rng.normal(0, 12, (spec.size,
                                                                         spec.size, 3))
        clip = np.stack([np.roll(base, 3 * t, axis=1) for t in range(spec.num_frames)])
        clips.append(jpeg_round_trip(np.clip(clip, 0, 255).astype(np.uint8))[0])
    latents = np.zeros((int(np.prod(grid)), DIM), np.float16)
    for s in range(manifest["latents"]["num_shards"]):
        txn = ShardTransaction(root, manifest, s)
        for r in txn.rows:
            txn.add_row(r, latents, clips[r % len(clips)])
        txn.commit()
    write_manifest(root, manifest)


def version_1_twin(src: Path, dst: Path) -> None:
    """``dst``: the store at ``src`` as format version 1 wrote it: the same data files (hard
    links), cache.json and commit records without the member tables."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            if rel.parts[:1] != ("commits",) and (rel, f) != (Path("."), "cache.json"):
                os.link(Path(dirpath) / f, dst / rel / f)
    paths = StorePaths(dst)
    meta = read_json(src / "cache.json", "cache manifest")
    meta["format_version"] = 1
    for s in meta["shards"]:
        s["frames"].pop("members")
    meta["identity_sha256"] = identity_digest(meta)
    write_json_atomic(paths.manifest, meta)
    for rec_path in sorted((src / "commits").glob("shard-*.json")):
        rec = read_json(rec_path, "commit record")
        rec["frames"].pop("members")
        rec["identity_sha256"] = meta["identity_sha256"]
        write_json_atomic(paths.commits / rec_path.name, rec)


def evict(roots: list[Path]) -> None:
    """Drop every file of ``roots`` from the page cache (clean pages only: all are synced)."""
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2000)
    ap.add_argument("--rows-per-shard", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8, help="frames per row (even)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="Write the stores here and keep them.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_store_open_") as tmp:
        base = args.keep or Path(tmp)
        v2, v1 = base / "v2", base / "v1"
        if not (v2 / "cache.json").exists():
            t0 = time.perf_counter()
            write_store(v2, args.shards, args.rows_per_shard, args.frames)
            print(f"wrote {args.shards} shards x {args.rows_per_shard} rows through "
                  f"ShardTransaction in {time.perf_counter() - t0:.1f} s")
        if not (v1 / "cache.json").exists():
            version_1_twin(v2, v1)
        meta = read_json(v2 / "cache.json", "cache manifest")
        tar_bytes = meta["counts"]["frames_bytes"]
        members = meta["counts"]["written_rows"] * (1 + meta["frames"]["num_frames"])
        print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"# {meta['rows']['count']} rows in {len(meta['shards'])} shards, {members} tar "
              f"members ({tar_bytes / 2**20:.1f} MiB of tars, "
              f"{tar_bytes / members:.0f} B/member); cache.json "
              f"{(v2 / 'cache.json').stat().st_size / 2**20:.2f} MiB with member tables, "
              f"{(v1 / 'cache.json').stat().st_size / 2**20:.2f} MiB without")

        # The tiny preset (tubelet 2, patch 16) adopting the store's view, as `salt train
        # --exp tiny --set view=store` would.
        cfg = resolve("tiny", ["view=store", f"teacher_dim={DIM}"])
        scans: list[str] = []
        real_scan = frames_reader.scan_members

        def counting_scan(path: Path | str) -> list[frames_reader.Member]:
            scans.append(str(path))
            return real_scan(path)

        frames_reader.scan_members = counting_scan  # type: ignore[assignment]
        times: dict[str, list[float]] = {k: [] for k in
                                         ("v2 warm", "v1 warm", "v2 cold", "v1 cold")}
        scanned: dict[str, int] = {}
        rows_seen: dict[str, int] = {}
        for _ in range(args.repeat):
            for cold in (False, True):
                for name, root in (("v2", v2), ("v1", v1)):
                    if cold:
                        evict([v2, v1])
                    else:
                        open_cached(cfg, root)  # make sure it is warm
                    scans.clear()
                    t0 = time.perf_counter()
                    src = open_cached(cfg, root)
                    times[f"{name} {'cold' if cold else 'warm'}"].append(
                        time.perf_counter() - t0)
                    scanned[name] = len(scans)
                    rows_seen[name] = len(src.rows)
        frames_reader.scan_members = real_scan
        assert rows_seen["v1"] == rows_seen["v2"], rows_seen
        print(f"# tars whose headers were read per open: v2 {scanned['v2']}, v1 {scanned['v1']}; "
              f"{rows_seen['v2']} rows indexed by both")
        print(f"{'open_cached':<12} {'best s':>8} {'median s':>9}   ({args.repeat} runs each, "
              "interleaved)")
        for name, ts in times.items():
            print(f"{name:<12} {min(ts):8.3f} {statistics.median(ts):9.3f}")
        for kind in ("warm", "cold"):
            a, b = statistics.median(times[f"v1 {kind}"]), statistics.median(times[f"v2 {kind}"])
            print(f"header scan / member table, {kind}: {a / b:.1f}x (median)")
        print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

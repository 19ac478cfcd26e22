"""Random batch reads of cached latents: LatentStore vs zarr-python vs a raw np.memmap.

Writes a store of ``--rows`` rows of ViT-B 16x224 latents (1568 tokens x 768, float16,
2.41 MB a row) through the build's own shard writer into a temporary directory, reads every
byte once (warm page cache), then times ``--batches`` random batches of ``--batch`` rows
(sorted within a batch, as a sampler would not bother to, costs nothing) with:

* ``LatentStore.get`` (memory map + parsed shard index, the trainer's path);
* ``zarr.open(...).oindex[rows]`` (zarr-python 3's sharding codec);
* a raw ``np.memmap`` per shard file shaped ``[shard_size, tokens, dim]`` indexed directly
  (the upper bound: same bytes, no index lookup, no checks).

    python benchmarks/bench_latent_store.py [--rows 1024] [--shard-size 256] [--batch 32]
        [--batches 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from salt_vla.cache.format import StorePaths
from salt_vla.cache.latent_store import LatentStore
from salt_vla.cache.store_writer import (
    ShardTransaction,
    new_manifest,
    prepare_store,
    write_manifest,
)


def make_store(root: Path, rows: int, tokens: int, dim: int, shard_size: int) -> None:
    """A complete store of random latents (no frames), written by the build's writer."""
    manifest = new_manifest(
        split="train", teacher={"arch": "bench", "dim": dim}, view={"spec": {}, "hash": "bench"},
        frames={"num_frames": 0, "height": 0, "width": 0}, dtype="float16", tokens=tokens,
        dim=dim, grid=(tokens, 1, 1), shard_size=shard_size,
        video_ids=[str(i) for i in range(rows)], view_index=[0] * rows, labels=[0] * rows,
        missing_video_ids=[], command=["bench"], tool_version="bench")
    manifest = prepare_store(root, manifest)
    rng = np.random.default_rng(0)
    variants = [rng.standard_normal((tokens, dim), dtype=np.float32).astype(np.float16)
                for _ in range(7)]
    for s in range(manifest["latents"]["num_shards"]):
        txn = ShardTransaction(root, manifest, s)
        for r in txn.rows:
            txn.add_row(r, variants[r % 7], [])
        txn.commit()
    write_manifest(root, manifest)


def time_interleaved(methods: dict[str, Callable[[np.ndarray], np.ndarray]],
                     batches: list[np.ndarray], clip_bytes: int) -> dict[str, float]:
    """clips/s of each method; methods take turns batch by batch, so load from other
    processes on a shared machine hits them alike."""
    spent = dict.fromkeys(methods, 0.0)
    for b in batches:
        for name, read in methods.items():
            t0 = time.perf_counter()
            read(b)
            spent[name] += time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    rates = {}
    for name, dt in spent.items():
        rates[name] = n / dt
        print(f"  {name:<24} {n / dt:9.0f} clips/s  {n / dt * clip_bytes / 1e9:6.2f} GB/s  "
              f"{1e3 * dt / len(batches):8.2f} ms/batch")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=1568)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="Write the store here and keep it.")
    args = ap.parse_args()

    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "store"
        clip_bytes = args.tokens * args.dim * 2
        if not (root / "cache.json").exists():
            t0 = time.perf_counter()
            make_store(root, args.rows, args.tokens, args.dim, args.shard_size)
            dt = time.perf_counter() - t0
            print(f"wrote {args.rows} rows ({args.rows * clip_bytes / 1e9:.2f} GB) in {dt:.1f} s "
                  f"({args.rows * clip_bytes / 1e9 / dt:.2f} GB/s incl. crc32c + sha256 + fsync)")
        store = LatentStore(root)
        paths = StorePaths(root)
        for s in range(store.meta["latents"]["num_shards"]):  # warm the page cache
            paths.latent_shard(s).read_bytes()
        rng = np.random.default_rng(1)
        batches = [np.sort(rng.choice(args.rows, args.batch, replace=False))
                   for _ in range(args.batches)]

        raw = [np.memmap(paths.latent_shard(s), dtype="<f2", mode="r",
                         shape=(args.shard_size, args.tokens, args.dim))
               for s in range(store.meta["latents"]["num_shards"])]

        def read_raw(rows: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows), args.tokens, args.dim), dtype="<f2")
            for i, r in enumerate(rows.tolist()):
                s, k = divmod(r, args.shard_size)
                out[i] = raw[s][k]
            return out

        z = zarr.open(str(root / "latents.zarr"), mode="r")

        def read_zarr(rows: np.ndarray) -> np.ndarray:
            # One z[r] per row: zarr 3.1's oindex[rows] on a sharded array is ~20x slower.
            return np.stack([z[int(r)] for r in rows])

        methods = {"LatentStore.get": store.get, "zarr z[r] per row": read_zarr,
                   "raw np.memmap": read_raw}
        for b in batches[:3]:
            got = store.get(b)
            assert np.array_equal(got, read_zarr(b)) and np.array_equal(got, read_raw(b))
        for chunk in np.array_split(np.arange(args.rows), max(1, args.rows // 64)):
            store.get(chunk)  # touch every page of both maps once: faults out of the timing
            read_raw(chunk)
        print(f"{platform.machine()}, {os.cpu_count()} cores, {len(batches)} random batches of "
              f"{args.batch} rows from {args.rows} rows x {clip_bytes / 1e6:.2f} MB "
              f"(warm page cache), zarr {zarr.__version__}, numpy {np.__version__}")
        rates = time_interleaved(methods, batches, clip_bytes)
        t0 = time.perf_counter()
        z.oindex[batches[0]]
        print(f"  (zarr oindex[rows]: {args.batch / (time.perf_counter() - t0):.0f} clips/s, "
              f"one batch)")
        r_store, r_raw = rates["LatentStore.get"], rates["raw np.memmap"]
        print(f"LatentStore / raw memmap = {r_store / r_raw:.2f}   "
              f"LatentStore / zarr = {r_store / rates['zarr z[r] per row']:.1f}x")


if __name__ == "__main__":
    main()

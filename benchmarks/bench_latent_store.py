"""Random batch reads of cached latents, warm and cold: LatentStore vs the alternatives.

Writes a store of ``--rows`` rows of ViT-B 16x224 latents (1568 tokens x 768, float16,
2.41 MB a row) through the build's own shard writer (or reuses ``--keep DIR``), then times
random batches of ``--batch`` rows, the methods taking turns so that load from other
processes on a shared machine hits them alike.

Warm (default; every byte read once first, so the page cache holds the store):

* ``LatentStore.get`` (the trainer's path: exact copies per row, 4 threads, each row's
  crc32c checked against its commit record);
* ``LatentStore, verify_reads off`` (the same without the crc32c: its overhead);
* ``zarr z[r] per row`` (zarr-python 3's sharding codec);
* ``exact pread, 1 thread`` (``os.pread`` of each row at its index offset);
* ``raw np.memmap`` per shard file shaped ``[shard_size, tokens, dim]`` (the upper bound:
  same bytes, no index lookup, no checks; the previous LatentStore was this plus the index).

Cold (``--cold``): before each method's turn every shard file is evicted from the page cache
(``posix_fadvise(DONTNEED)`` per file: no root needed; ``--drop-caches`` also drops the whole
machine's page cache where permitted), then the method reads the round's batches; each method
reads the same batches. Per method: GB/s of row bytes delivered, and the read
amplification: bytes the device delivered to this process (``read_bytes`` of
``/proc/self/io``, kernel readahead included) over the row bytes needed. Methods:

* ``LatentStore.get`` (exact reads, ``MADV_RANDOM``, 4 threads per batch, crc32c checked);
* ``LatentStore, verify_reads off`` (without the crc32c);
* ``LatentStore.get_async, 2 ahead`` (the trainer's feeder: the next batch submitted while
  one is handed over);
* ``LatentStore, 1 thread``;
* ``exact pread, 1 thread`` (the issue's baseline: default kernel readahead);
* ``memmap + copy`` (the previous reader: page faults with the device's read-around);
* ``sequential read`` (whole shard files, 8 MB reads: the device's streaming rate, for
  scale; its "needed" bytes are the bytes it read).

Targets (issue 15): cold LatentStore >= 0.9x exact pread at <= 1.3x amplification; warm
LatentStore >= 0.95x raw memmap.

    python benchmarks/bench_latent_store.py [--rows 1024] [--shard-size 256] [--batch 32]
        [--batches 200] [--keep DIR]
    python benchmarks/bench_latent_store.py --cold --rows 2560 --keep /work/bench-i15/lat \\
        [--batches 20] [--rounds 3]
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
from salt_vla.cache.shard import read_index
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


def device_read_bytes() -> int:
    """Bytes the storage layer delivered to this process so far (all threads)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def evict(paths: list[Path], drop_caches: bool = False) -> str:
    """Drop ``paths`` from the page cache (and, with ``drop_caches``, where permitted, the
    whole machine's: a shared machine's other users lose their cache too); returns how."""
    how = "posix_fadvise(DONTNEED) per file"
    if drop_caches:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            how = "drop_caches + " + how
        except OSError:
            how += " (drop_caches not permitted)"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return how


class Baselines:
    """The non-LatentStore readers of a store of ``shards`` shard files."""

    def __init__(self, root: Path, store: LatentStore) -> None:
        self.store = store
        self.paths = [StorePaths(root).latent_shard(s)
                      for s in range(store.meta["latents"]["num_shards"])]
        self.offsets = [read_index(p, store.shard_size)[0] for p in self.paths]
        self.fds: dict[int, int] = {}
        self.maps: dict[int, np.ndarray] = {}

    def _fd(self, s: int) -> int:
        if s not in self.fds:
            self.fds[s] = os.open(self.paths[s], os.O_RDONLY)
        return self.fds[s]

    def pread(self, rows: np.ndarray) -> np.ndarray:
        st = self.store
        out = np.empty((len(rows), st.tokens, st.dim), st.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for i, r in enumerate(rows.tolist()):
            s, k = divmod(r, st.shard_size)
            flat[i] = np.frombuffer(os.pread(self._fd(s), st.row_nbytes,
                                             int(self.offsets[s][k])), np.uint8)
        return out

    def memmap(self, rows: np.ndarray) -> np.ndarray:
        st = self.store
        out = np.empty((len(rows), st.tokens, st.dim), st.dtype)
        for i, r in enumerate(rows.tolist()):
            s, k = divmod(r, st.shard_size)
            if s not in self.maps:
                self.maps[s] = np.memmap(self.paths[s], dtype=st.dtype, mode="r",
                                         shape=(st.shard_size, st.tokens, st.dim))
            out[i] = self.maps[s][k]
        return out

    def reset(self) -> None:
        """Close descriptors and unmap (mapped pages cannot be evicted)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds, self.maps = {}, {}


def time_interleaved(methods: dict[str, Callable[[np.ndarray], np.ndarray]],
                     batches: list[np.ndarray], clip_bytes: int) -> dict[str, float]:
    """clips/s of each method; methods take turns batch by batch."""
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
        print(f"  {name:<28} {n / dt:9.0f} clips/s  {n / dt * clip_bytes / 1e9:6.2f} GB/s  "
              f"{1e3 * dt / len(batches):8.2f} ms/batch")
    return rates


def warm(root: Path, args: argparse.Namespace, clip_bytes: int) -> None:
    import zarr

    store = LatentStore(root)
    base = Baselines(root, store)
    for p in base.paths:  # warm the page cache
        p.read_bytes()
    rng = np.random.default_rng(1)
    batches = [rng.choice(store.num_rows, args.batch, replace=False)
               for _ in range(args.batches)]
    z = zarr.open(str(root / "latents.zarr"), mode="r")

    def read_zarr(rows: np.ndarray) -> np.ndarray:
        # One z[r] per row: zarr 3.1's oindex[rows] on a sharded array is ~20x slower.
        return np.stack([z[int(r)] for r in rows])

    unchecked = LatentStore(root, verify_reads=False)
    methods = {"LatentStore.get": store.get, "LatentStore, verify_reads off": unchecked.get,
               "zarr z[r] per row": read_zarr,
               "exact pread, 1 thread": base.pread, "raw np.memmap": base.memmap}
    for b in batches[:3]:
        got = store.get(b)
        assert all(np.array_equal(got, m(b)) for m in methods.values())
    for chunk in np.array_split(np.arange(store.num_rows), max(1, store.num_rows // 64)):
        store.get(chunk)  # touch every page of the maps once: faults out of the timing
        base.memmap(chunk)
    print(f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{len(batches)} random batches of {args.batch} rows from {store.num_rows} rows x "
          f"{clip_bytes / 1e6:.2f} MB (warm page cache), zarr {zarr.__version__}, numpy "
          f"{np.__version__}")
    rates = time_interleaved(methods, batches, clip_bytes)
    r_store, r_raw = rates["LatentStore.get"], rates["raw np.memmap"]
    r_off = rates["LatentStore, verify_reads off"]
    print(f"crc32c of every row read (verify_reads, the default): "
          f"{100 * (1 - r_store / r_off):.1f}% slower than without ({r_store:.0f} vs "
          f"{r_off:.0f} clips/s)")
    print(f"LatentStore / raw memmap = {r_store / r_raw:.2f}   "
          f"LatentStore / zarr = {r_store / rates['zarr z[r] per row']:.1f}x   "
          f"LatentStore / exact pread = {r_store / rates['exact pread, 1 thread']:.2f}")


def cold(root: Path, args: argparse.Namespace, clip_bytes: int) -> None:
    store = LatentStore(root)
    single = LatentStore(root, threads=1)
    unchecked = LatentStore(root, verify_reads=False)
    base = Baselines(root, store)
    rng = np.random.default_rng(2)

    def read_ahead(batches: list[np.ndarray]) -> None:
        pending = [store.get_async(b) for b in batches[:2]]
        for i in range(len(batches)):
            pending.pop(0).result()
            if i + 2 < len(batches):
                pending.append(store.get_async(batches[i + 2]))

    def sequential(nbytes: int) -> int:
        done, buf = 0, bytearray(8 << 20)
        for p in base.paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                while done < nbytes and (n := os.readv(fd, [buf])) > 0:
                    done += n
            finally:
                os.close(fd)
            if done >= nbytes:
                break
        return done

    names = ["LatentStore.get", "LatentStore, verify_reads off", "LatentStore.get_async, 2 ahead",
             "LatentStore, 1 thread", "exact pread, 1 thread", "memmap + copy",
             "sequential read"]
    spent = dict.fromkeys(names, 0.0)
    delivered = dict.fromkeys(names, 0)
    needed = dict.fromkeys(names, 0)
    how = ""
    for rnd in range(args.rounds):
        batches = [rng.choice(store.num_rows, args.batch, replace=False)
                   for _ in range(args.batches)]
        need = sum(len(b) for b in batches) * clip_bytes
        order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate who goes first
        for name in order:
            for reader in (store, single, unchecked):
                reader.close()  # no descriptor or cached index from the previous turn
                reader._latents.offsets.clear()
            base.reset()
            how = evict(base.paths, args.drop_caches)
            io0, t0 = device_read_bytes(), time.perf_counter()
            if name == "LatentStore.get":
                for b in batches:
                    store.get(b)
            elif name == "LatentStore, verify_reads off":
                for b in batches:
                    unchecked.get(b)
            elif name.startswith("LatentStore.get_async"):
                read_ahead(batches)
            elif name == "LatentStore, 1 thread":
                for b in batches:
                    single.get(b)
            elif name == "exact pread, 1 thread":
                for b in batches:
                    base.pread(b)
            elif name == "memmap + copy":
                for b in batches:
                    base.memmap(b)
            else:
                need = sequential(need)
            spent[name] += time.perf_counter() - t0
            delivered[name] += device_read_bytes() - io0
            needed[name] += need
        print(f"  round {rnd + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})",
              flush=True)
    rows = args.rounds * args.batches * args.batch
    print(f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; cold: "
          f"{args.rounds} rounds x {args.batches} random batches of {args.batch} rows from "
          f"{store.num_rows} rows x {clip_bytes / 1e6:.2f} MB "
          f"({store.num_rows * clip_bytes / 1e9:.1f} GB store), page cache dropped before each "
          f"method ({how}); read_ahead_kb "
          f"{_read_ahead_kb(root)}")
    rate = {}
    for name in names:
        gbs = needed[name] / spent[name] / 1e9
        rate[name] = gbs
        amp = delivered[name] / needed[name] if needed[name] else float("nan")
        clips = needed[name] / clip_bytes / spent[name]
        print(f"  {name:<32} {gbs:6.3f} GB/s  {clips:7.0f} clips/s  amplification "
              f"{amp:5.2f}x  ({delivered[name] / 1e9:.2f} GB from the device for "
              f"{needed[name] / 1e9:.2f} GB)")
    if min(delivered.values()) < 0.5 * min(needed.values()):
        print("  WARNING: a method read less than half its bytes from the device: the page "
              "cache was not dropped, these are not cold figures")
    pread = rate["exact pread, 1 thread"]
    print(f"cold LatentStore / exact pread = {rate['LatentStore.get'] / pread:.2f}"
          f"   read-ahead / exact pread = "
          f"{rate['LatentStore.get_async, 2 ahead'] / pread:.2f}   "
          f"LatentStore / memmap = {rate['LatentStore.get'] / rate['memmap + copy']:.2f}   "
          f"reader stats: {store.stats.as_dict()} (rows {rows} per method)")


def _read_ahead_kb(root: Path) -> str:
    try:
        dev = os.stat(root).st_dev
        major, minor = os.major(dev), os.minor(dev)
        sysfs = Path(f"/sys/dev/block/{major}:{minor}")
        for p in (sysfs / "queue" / "read_ahead_kb", sysfs / ".." / "queue" / "read_ahead_kb"):
            if p.exists():
                return p.read_text().strip()
    except OSError:
        pass
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=1568)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=None,
                    help="Batches (per round when --cold). Default: 200 warm, 20 cold.")
    ap.add_argument("--rounds", type=int, default=3, help="--cold: rounds of all methods.")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--drop-caches", action="store_true",
                    help="--cold: also `echo 3 > /proc/sys/vm/drop_caches` before each method "
                    "(root only; evicts every process's cache: avoid on a shared machine).")
    ap.add_argument("--keep", type=Path, default=None, help="Write the store here and keep it.")
    args = ap.parse_args()
    args.batches = args.batches or (20 if args.cold else 200)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "store"
        clip_bytes = args.tokens * args.dim * 2
        if not (root / "cache.json").exists():
            t0 = time.perf_counter()
            make_store(root, args.rows, args.tokens, args.dim, args.shard_size)
            dt = time.perf_counter() - t0
            print(f"wrote {args.rows} rows ({args.rows * clip_bytes / 1e9:.2f} GB) in {dt:.1f} s "
                  f"({args.rows * clip_bytes / 1e9 / dt:.2f} GB/s incl. crc32c + sha256 + fsync)")
        (cold if args.cold else warm)(root, args, clip_bytes)


if __name__ == "__main__":
    main()

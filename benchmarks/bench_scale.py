"""A store at SSv2 scale, simulated: build, cache.json rewrites, verify, info, open files,
trainer start-up; and training at ``ulimit -n 1024`` on 2,640 shards.

``store`` part: writes a store of ``--rows`` rows (168,913 = SSv2's train split, 675,652 =
with 4 views) through the build's own writer (``ShardTransaction`` per shard of
``--shard-size`` rows, a ``ManifestWriter`` folding each commit in and rewriting cache.json
every ``--rewrite-every`` commits, as a build does every 10 s), with tiny rows where the
figure does not depend on row size: latents of 1 token x 8 (16 B), and per row a ``.json``
and ``--frames`` real 64x64 JPEGs of 1.1-1.4 KB (SSv2's 16x112 frames are ~3 KB: the member
table has the real count of members and numbers of the real digit count, so cache.json and
the commit records have about their real sizes; the tars are a few times smaller). Prints:

- commit time (steps 1-3 of the protocol) and cache.json rewrite time for the first, middle
  and last shards, with the rewrite the previous code did (re-read every commit record, merge,
  re-serialise everything) timed at the same points for comparison; the commit records each
  rewrite read; cache.json's size during the build and at the end, the final write's time;
- ``salt cache verify --quick``, ``--sample 0.01`` and the full verify (tiny rows: the full
  pass here reads ~30 KB a row, a real SSv2 row is ~2.5 MB: its time does not carry over),
  ``salt cache info``;
- open files: descriptors of this process during random reads of latents and frames across
  all shards, vs the readers' bound;
- trainer start-up: ``open_store`` (cache.json, zarr metadata, frame index from the member
  tables) and ``structure.check_structure`` (the O(shards) check the trainer runs at start,
  ``trainer.sources.check_store_structure``).

``train`` part: a store of ``--shards`` one-row shards of the ``tiny`` preset's shapes (8 JPEG
frames of 64x64, 64 tokens x 192 latents), then ``salt train --exp tiny`` for ``--steps``
steps of 32 clips with RLIMIT_NOFILE soft = hard = ``--nofile`` (so raising it cannot help),
``num_workers`` 0 and 2; prints whether it finished and the peak descriptors of the process.

    python benchmarks/bench_scale.py store --rows 168913 --out /work/bench-i15/s168k
    python benchmarks/bench_scale.py store --rows 675652 --out /work/bench-i15/s675k
    python benchmarks/bench_scale.py train --shards 2640 --out /work/bench-i15/t2640
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from salt_vla.cache.format import StorePaths, write_json_atomic
from salt_vla.cache.frames import encode_jpeg
from salt_vla.cache.info import store_info
from salt_vla.cache.reads import reader_budget
from salt_vla.cache.store import open_store
from salt_vla.cache.store_writer import (
    ManifestWriter,
    ShardTransaction,
    merged_manifest,
    new_manifest,
    prepare_store,
)
from salt_vla.cache.structure import check_structure
from salt_vla.cache.verify import verify_store
from salt_vla.data.view import ViewSpec, view_preset


def fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


def _jpegs(n: int) -> list[bytes]:
    """``n`` distinct real 64x64 JPEGs of 1.1-1.4 KB (a gradient with a little noise)."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 64)
    return [encode_jpeg(np.clip((x[None, :, None] + x[:, None, None]) / 2
                                + rng.normal(0, 2 + k % 3, (64, 64, 3)), 0, 255).astype(np.uint8))
            for k in range(n)]


def write_store(root: Path, rows: int, shard_size: int, frames: int, rewrite_every: int
                ) -> dict:
    spec = ViewSpec(num_frames=frames, size=64)
    manifest = new_manifest(
        split="train", teacher={"arch": "bench", "dim": 8},
        view={"spec": spec.to_dict(), "hash": spec.hash()},
        frames={"num_frames": frames, "height": 64, "width": 64, "jpeg_quality": 90},
        dtype="float16", tokens=1, dim=8, grid=(1, 1, 1), shard_size=shard_size,
        video_ids=[f"{100000 + i // 4}" for i in range(rows)], view_index=[i % 4 for i in
                                                                            range(rows)],
        labels=[i % 174 for i in range(rows)], missing_video_ids=[], command=["bench"],
        tool_version="bench")
    manifest = prepare_store(root, manifest)
    n = manifest["latents"]["num_shards"]
    writer = ManifestWriter(root, manifest)
    payload = _jpegs(24)
    lat = np.zeros((1, 8), np.float16)
    probes = {0: "first", n // 2: "middle", n - 2: "last"}  # n-1 completes the store
    out: dict = {"shards": n, "commits": [], "rewrites": [], "old_rewrites": {}}
    t_build = time.perf_counter()
    for s in range(n):
        txn = ShardTransaction(root, manifest, s)
        for r in txn.rows:
            txn.add_row(r, lat, [payload[(r + k) % 24] for k in range(frames)])
        t0 = time.perf_counter()
        rec = txn.commit()
        out["commits"].append(time.perf_counter() - t0)
        writer.add(s, rec)
        if s == n - 1:
            break
        if s % rewrite_every == 0 or s in probes:
            reads0 = writer.records_read
            t0 = time.perf_counter()
            writer.write()
            out["rewrites"].append((s, time.perf_counter() - t0, writer.records_read - reads0,
                                    StorePaths(root).manifest.stat().st_size))
        if s in probes:
            # What the previous code did at each rewrite: every record read, all re-rendered.
            t0 = time.perf_counter()
            old = merged_manifest(root, manifest)
            write_json_atomic(root / "old-style-cache.json", old)
            out["old_rewrites"][probes[s]] = (s, time.perf_counter() - t0,
                                              (root / "old-style-cache.json").stat().st_size)
        if s % 200 == 0:
            print(f"  shard {s}/{n}, {time.perf_counter() - t_build:.0f} s", flush=True)
    (root / "old-style-cache.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    final = writer.write()
    out["final_write"] = time.perf_counter() - t0
    out["final_size"] = StorePaths(root).manifest.stat().st_size
    out["build_seconds"] = time.perf_counter() - t_build
    assert final["status"] == "complete"
    return out


def store_part(args: argparse.Namespace) -> None:
    root = args.out
    if root.exists():
        shutil.rmtree(root)
    print(f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{args.rows} rows, shards of {args.shard_size}, {args.frames} frames a row")
    b = write_store(root, args.rows, args.shard_size, args.frames, args.rewrite_every)
    n = b["shards"]
    c = b["commits"]
    du = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"built {n} shards in {b['build_seconds']:.0f} s ({du / 1e9:.2f} GB on disk)")
    print(f"  commit (steps 1-3): first {1e3 * c[0]:.0f} ms, middle {1e3 * c[n // 2]:.0f} ms, "
          f"last {1e3 * c[-1]:.0f} ms; median {1e3 * float(np.median(c)):.0f} ms")
    rw = {s: (t, reads, size) for s, t, reads, size in b["rewrites"]}
    for name, (s, t_old, size_old) in b["old_rewrites"].items():
        t, reads, size = rw[s]
        print(f"  cache.json rewrite at the {name} shard ({s + 1}/{n} committed): "
              f"{1e3 * t:.0f} ms, {reads} commit records read, {size / 1e6:.2f} MB; the "
              f"previous code: {1e3 * t_old:.0f} ms, {s + 1} records read, "
              f"{size_old / 1e6:.2f} MB")
    total_new = sum(t for _, t, _, _ in b["rewrites"])
    print(f"  {len(b['rewrites'])} rewrites: {total_new:.1f} s in all; records read "
          f"{sum(r for _, _, r, _ in b['rewrites'])}; final cache.json (member tables "
          f"merged from every record): {b['final_size'] / 1e6:.1f} MB in "
          f"{b['final_write']:.1f} s")

    for how, kw in (("--quick", {"quick": True}), ("--sample 0.01", {"sample": 0.01}),
                    ("full", {})):
        t0 = time.perf_counter()
        rep = verify_store(root, **kw)
        print(f"  verify {how}: {time.perf_counter() - t0:.1f} s, ok={rep.ok}, "
              f"{rep.bytes_read / 1e6:.1f} MB of data read")
        assert rep.ok, rep.problems[:3]
    t0 = time.perf_counter()
    store_info(root)
    print(f"  info: {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    store = open_store(root)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = check_structure(root, store.meta, commit_records=False)
    t_check = time.perf_counter() - t0
    print(f"  trainer start-up: open_store {t_open:.1f} s, check_structure "
          f"{t_check:.1f} s ({len(problems)} problems)")
    base = fds()
    rng = np.random.default_rng(0)
    peak = 0
    for _ in range(300):
        rows = rng.choice(store.rows, 32, replace=False)
        store.latents.get(rows)
        for r in rows[:8]:
            store.frames.jpegs(int(r))
        peak = max(peak, fds() - base)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"  open files during 300 random batches over {n} shards: peak {peak} descriptors "
          f"(latents {store.latents.open_files}, frames {store.frames.open_files} now); bound "
          f"2 x {reader_budget()} at RLIMIT_NOFILE {soft}; latents stats "
          f"{store.latents.stats.as_dict()}")
    if not args.keep:
        shutil.rmtree(root)


# --- train -----------------------------------------------------------------------------------


def tiny_store(root: Path, shards: int) -> None:
    """``shards`` one-row shards in the tiny preset's shapes (view tiny-8x64, vit_tiny)."""
    spec = view_preset("tiny-8x64")
    manifest = new_manifest(
        split="train", teacher={"arch": "vit_tiny", "dim": 192, "sha256": "random:bench"},
        view={"spec": spec.to_dict(), "hash": spec.hash()},
        frames={"num_frames": 8, "height": 64, "width": 64, "jpeg_quality": 90},
        dtype="float16", tokens=64, dim=192, grid=(4, 4, 4), shard_size=1,
        video_ids=[str(i) for i in range(shards)], view_index=[0] * shards,
        labels=[i % 4 for i in range(shards)], missing_video_ids=[], command=["bench"],
        tool_version="bench")
    manifest = prepare_store(root, manifest)
    rng = np.random.default_rng(0)
    clips = [[encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(8)]
             for _ in range(5)]
    writer = ManifestWriter(root, manifest)
    for s in range(shards):
        txn = ShardTransaction(root, manifest, s)
        txn.add_row(s, rng.standard_normal((64, 192)).astype(np.float16), clips[s % 5])
        writer.add(s, txn.commit())
    writer.write()


def _watch(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], len(os.listdir(f"/proc/{pid}/fd")))
        except OSError:
            pass
        time.sleep(0.05)


def train_part(args: argparse.Namespace) -> None:
    root = args.out / "store"
    if not (root / "cache.json").exists():
        t0 = time.perf_counter()
        tiny_store(root, args.shards)
        print(f"wrote {args.shards} one-row shards in {time.perf_counter() - t0:.0f} s")
    limit = args.nofile

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    small = ["student_dim=64", "student_depth=1", "student_heads=2", "predictor_width=32",
             "predictor_depth=1", "predictor_heads=2", "warmup_steps=3"]
    for workers in (0, 2):
        run = args.out / f"run-w{workers}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "salt_vla", "train", "--exp", "tiny", "--cache", str(root),
               "--out", str(run), "--wandb", "disabled"]
        for s in [*small, f"max_steps={args.steps}", "batch_size=32", f"num_workers={workers}",
                  "log_every=10", f"ckpt_every={args.steps}"]:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, preexec_fn=limited, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        peak, stop = [0], threading.Event()
        watcher = threading.Thread(target=_watch, args=(proc.pid, peak, stop), daemon=True)
        watcher.start()
        output, _ = proc.communicate()
        stop.set()
        watcher.join()
        steps = []
        if (run / "metrics.jsonl").exists():
            for line in (run / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if "loss" in rec:
                    steps.append(rec["step"])
        print(f"  salt train --exp tiny, {args.shards} shards, ulimit -n {limit} (soft = hard), "
              f"num_workers={workers}: exit {proc.returncode}, last logged step "
              f"{steps[-1] if steps else None}/{args.steps}, {time.perf_counter() - t0:.0f} s, "
              f"peak {peak[0]} descriptors in the main process")
        if proc.returncode != 0:
            print("    " + "\n    ".join(output.strip().splitlines()[-6:]))
    if not args.keep:
        shutil.rmtree(args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    s = sub.add_parser("store")
    s.add_argument("--rows", type=int, default=168913)
    s.add_argument("--shard-size", type=int, default=256)
    s.add_argument("--frames", type=int, default=16)
    s.add_argument("--rewrite-every", type=int, default=20)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--keep", action="store_true")
    t = sub.add_parser("train")
    t.add_argument("--shards", type=int, default=2640)
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--nofile", type=int, default=1024)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    (store_part if args.part == "store" else train_part)(args)


if __name__ == "__main__":
    main()

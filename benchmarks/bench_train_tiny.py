"""A tiny training run from a store: data-wait fraction, peak RSS (main process and per
DataLoader worker) and /dev/shm use, at batch 8 and at batch 64.

Builds a synthetic dataset and a `tiny-8x64` store (random vit_tiny teacher), then runs the
`tiny` preset with ``--workers`` workers while a sampler thread reads /proc every 50 ms:
VmHWM / PSS of the main process and of each worker, and the /dev/shm segments the run holds
(what worker -> main batches occupy; docker's default /dev/shm is 64 MiB).

    python benchmarks/bench_train_tiny.py [--steps 30] [--workers 2] [--batches 8,64]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_loader import make_store  # noqa: E402

from salt_vla.trainer.data import FEEDER_DEPTH  # noqa: E402


def _status_kib(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _workers(pid: int) -> list[int]:
    """Forked children running this same program: the DataLoader workers (the cache build's
    forkserver and resource tracker run other command lines)."""
    me = Path(f"/proc/{pid}/cmdline").read_bytes()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
                        and (d / "cmdline").read_bytes() == me):
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def shm_held(pids: list[int]) -> int:
    """Bytes of /dev/shm segments open in ``pids`` (torch shares worker batches as unlinked
    shm files held by descriptors), each segment counted once. Unlike statvfs of /dev/shm
    this ignores other users of a shared machine."""
    seen: dict[tuple[int, int], int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(fd).startswith("/dev/shm/"):
                    continue
                st = os.stat(fd)
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


class Sampler(threading.Thread):
    """Peak per-worker VmHWM / PSS and peak /dev/shm bytes while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.worker_hwm: dict[int, int] = {}
        self.worker_pss: dict[int, int] = {}
        self.main_pss = 0
        self.shm_peak = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            self.main_pss = max(self.main_pss, _pss_kib(me))
            workers = _workers(me)
            for c in workers:
                self.worker_hwm[c] = max(self.worker_hwm.get(c, 0), _status_kib(c, "VmHWM"))
                self.worker_pss[c] = max(self.worker_pss.get(c, 0), _pss_kib(c))
            self.shm_peak = max(self.shm_peak, shm_held([me, *workers]))
            time.sleep(0.05)


def run_once(cache: Path, batch: int, steps: int, workers: int) -> None:
    from salt_vla.runs.rundir import read_metrics
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    cfg = resolve("tiny", [f"batch_size={batch}", f"max_steps={steps}", "log_every=10",
                           f"num_workers={workers}", "ckpt_every=100000"])
    with tempfile.TemporaryDirectory() as out:
        sampler = Sampler()
        sampler.start()
        t0 = time.perf_counter()
        train(cfg, RunSpec(out=Path(out), cache=cache), echo=lambda s: None)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        recs = [r for r in read_metrics(Path(out) / "metrics.jsonl") if "data_wait" in r]
    waits = [r["data_wait"] for r in recs[1:]] or [recs[0]["data_wait"]]
    rates = [r["clips_per_s"] for r in recs[1:]] or [recs[0]["clips_per_s"]]
    frames_batch = batch * 8 * 64 * 64 * 3
    hwm = sorted(sampler.worker_hwm.values())
    pss = sorted(sampler.worker_pss.values())
    print(f"batch {batch:3d}, {workers} workers, {steps} steps ({wall:.0f} s): "
          f"{statistics.mean(rates):.1f} clips/s, data wait {100 * statistics.mean(waits):.1f}%"
          f" (median {100 * statistics.median(waits):.1f}%)")
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  main process: peak RSS {main_rss:.0f} MiB (max so far in this process), peak PSS "
          f"{sampler.main_pss / 1024:.0f} MiB")
    print(f"  workers: peak RSS {', '.join(f'{h / 1024:.0f}' for h in hwm)} MiB; peak PSS "
          f"{', '.join(f'{p / 1024:.0f}' for p in pss)} MiB (PSS splits pages shared with the "
          "main process)")
    print(f"  /dev/shm: peak {sampler.shm_peak / 2**20:.2f} MiB held by this run; one batch of "
          f"uint8 frames = {frames_batch / 2**20:.2f} MiB; alive at once: {workers} workers x "
          f"{cfg_prefetch(workers)} prefetched + {FEEDER_DEPTH} queued in the feeder + 1 training "
          "+ 1 being collated")


def cfg_prefetch(workers: int) -> int:
    from salt_vla.trainer.experiments import resolve

    return resolve("tiny").prefetch_factor if workers else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", default="8,64")
    ap.add_argument("--videos", type=int, default=128)
    args = ap.parse_args()

    import torch

    root = Path(tempfile.mkdtemp(prefix="bench_tiny_"))
    try:
        t0 = time.perf_counter()
        _, cache = make_store(root, args.videos, "tiny-8x64", "random:vit_tiny:0", height=64,
                              width=64, frames=16, shard_size=32)
        print(f"# {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}; tiny "
              f"store of {args.videos} clips built in {time.perf_counter() - t0:.0f} s")
        for b in (int(x) for x in args.batches.split(",")):
            run_once(cache, b, args.steps, args.workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

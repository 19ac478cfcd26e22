"""The probe's three feature modes side by side: time to featurise, time per epoch, RAM.

Makes a synthetic SSv2-layout set (``--videos`` clips, 32 frames of 128 px) and probes the
random-init ``random:tiny`` student on a 16 x 128 view (512 tokens x 192 = 196,608 B of
float16 features a clip) with each mode, each in a fresh process so its RAM is its own:

- ``memory``: features computed once into RAM;
- ``disk``: computed once into a ``.npy`` read through a memory map (warm page cache);
- ``disk-cold``: the same file, evicted from the page cache (posix_fadvise DONTNEED) before
  every epoch: what a feature cache larger than RAM costs;
- ``stream``: nothing stored, every clip decoded and encoded again each epoch.

Prints, per mode: seconds to featurise (0 for stream), mean seconds per probe epoch (epochs
after the first), peak RSS (VmHWM) and anonymous RSS (RssAnon: what the process itself
holds, without file pages that the kernel can drop) after training.

    python benchmarks/bench_probe_modes.py [--videos 300] [--epochs 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("memory", "disk", "disk-cold", "stream")


def _status(key: str) -> int:
    """A /proc/self/status field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(root: Path, mode: str, epochs: int, workers: int, cache: Path) -> dict:
    import numpy as np

    from salt_vla.data.view import ViewSpec
    from salt_vla.eval.encoders import resolve_encoder
    from salt_vla.eval.features import StreamedFeatures, compute_features, load_clips
    from salt_vla.eval.probe import ProbeConfig, train_probe

    enc = resolve_encoder("random:tiny:0", ViewSpec(num_frames=16, size=128))
    base_anon = _status("RssAnon")
    t0 = time.perf_counter()
    sets = []
    for split in ("train", "validation"):
        clips = load_clips(root, split)
        if mode == "stream":
            src = StreamedFeatures(enc, clips, workers)
            sets.append((src, src.labels))
        else:
            fs = compute_features(enc, clips, batch_size=16, workers=workers,
                                  cache_dir=None if mode == "memory" else cache)
            sets.append((fs.features, fs.labels))
    featurise = time.perf_counter() - t0 if mode != "stream" else 0.0
    files = [a.filename for a, _ in sets if isinstance(a, np.memmap)]

    def evict() -> None:
        for name in files:
            fd = os.open(name, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    stamps = [time.perf_counter()]

    def on_epoch(record: dict) -> None:
        if mode == "disk-cold":
            evict()
        stamps.append(time.perf_counter())

    if mode == "disk-cold":
        evict()
        stamps[0] = time.perf_counter()
    (tx, ty), (vx, vy) = sets
    res = train_probe(tx, ty, vx, vy, 2, ProbeConfig(epochs=epochs, batch_size=16, lr=3e-3),
                      progress=on_epoch)
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"mode": mode, "featurise_s": featurise,
            "epoch_s": sum(per_epoch[1:]) / max(1, len(per_epoch) - 1),
            "first_epoch_s": per_epoch[0], "peak_rss": _status("VmHWM"),
            "anon_rss": _status("RssAnon"), "anon_before": base_anon,
            "features_bytes": sum(int(np.prod(a.shape)) * 2 for a, _ in sets),
            "top1": res.top1, "clips": len(ty) + len(vy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data", type=Path, default=None, help="dataset dir (default: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="bench_probe_modes_")) / "ds"
    if args.child:
        mode, cache = args.child
        print(json.dumps(child(root, mode, args.epochs, args.workers, Path(cache))))
        return
    if not (root / "train.json").is_file():
        from salt_vla.data.synth import SynthConfig, generate_dataset

        generate_dataset(root, SynthConfig(videos=args.videos, classes=2, frames=32,
                                           height=128, width=128, splits=(0.8, 0.2, 0.0)),
                         workers=2)
    cache = Path(tempfile.mkdtemp(prefix="bench_probe_features_"))
    load = os.getloadavg()
    print(f"{args.videos} clips, random:tiny on 16x128 (512 tokens x 192), {args.epochs} "
          f"epochs, {args.workers} decode worker(s); load average {load[0]:.1f}")
    print(f"{'mode':<10} {'featurise':>10} {'epoch':>8} {'1st epoch':>10} {'peak RSS':>9} "
          f"{'anon RSS':>9} {'features':>9}  top-1")
    for mode in MODES:
        cmd = [sys.executable, __file__, "--data", str(root), "--epochs", str(args.epochs),
               "--workers", str(args.workers), "--child", mode, str(cache)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        mib = 2**20
        print(f"{mode:<10} {r['featurise_s']:>9.1f}s {r['epoch_s']:>7.2f}s "
              f"{r['first_epoch_s']:>9.2f}s {r['peak_rss'] / mib:>7.0f}Mi "
              f"{r['anon_rss'] / mib:>7.0f}Mi {r['features_bytes'] / mib:>7.0f}Mi  "
              f"{100 * r['top1']:.1f}%")


if __name__ == "__main__":
    main()

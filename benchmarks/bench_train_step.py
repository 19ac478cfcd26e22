"""Train-step throughput with cached targets vs `--targets online`, same process, same shapes.

Both modes run the real training loop (`salt_vla.trainer.loop.train`) on the same in-memory
clips: cached mode reads targets from an array (as the memory-mapped store would hand them
over), online mode runs a (randomly initialised) VideoMAEv2 teacher of the configured arch on
every batch. Default: the exp3 preset (ViT-B student, 12 x 384 predictor, ratio-0.9 masks) at
16 x 224 (1568 tokens), batch 2, on CPU. The issue's target: cached >= 1.6x online.

    python benchmarks/bench_train_step.py [--exp exp3] [--batch 2] [--steps 3] [--warmup 1]
        [--rounds 2] [--device cpu]
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
import torch

from salt_vla.runs.rundir import read_metrics
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.loop import RunSpec, train
from salt_vla.trainer.sources import memory_sources


def step_seconds(run_dir: Path, batch: int, warmup: int) -> list[float]:
    """Wall seconds of each logged step after the warm-up ones (log_every=1)."""
    recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if "clips_per_s" in r]
    return [batch / r["clips_per_s"] for r in recs[warmup:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", default="exp3")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=2, help="cached/online alternations")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    n = args.steps + args.warmup
    base = [f"batch_size={args.batch}", f"max_steps={n}", "log_every=1", "num_workers=0",
            f"device={args.device}", "ckpt_every=100000", f"warmup_steps={n}"]
    cached = resolve(args.exp, base)
    teacher_src = f"random:{cached.teacher_arch}:0"
    online = resolve(args.exp, base + ["targets=online", f"teacher={teacher_src}"])
    from salt_vla.trainer.build import view_spec

    spec = view_spec(cached)
    rows = args.batch * n
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (rows, spec.num_frames, spec.size, spec.size, 3), np.uint8)
    from salt_vla.trainer.build import config_grid

    tokens = config_grid(cached).num_tokens
    targets = rng.standard_normal((rows, tokens, cached.teacher_dim)).astype(np.float16)

    def make_teacher(device: torch.device):  # noqa: ANN202
        from salt_vla.models.teacher import TeacherSpec, load_teacher

        tspec = TeacherSpec(arch=cached.teacher_arch, num_frames=spec.num_frames,
                            img_size=spec.size, tubelet=cached.tubelet, patch=cached.patch)
        return load_teacher(teacher_src, tspec, device=device)

    print(f"# {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"# exp {args.exp}: student {cached.student}, predictor {cached.predictor_depth}x"
          f"{cached.predictor_width}, masks {cached.mask_strategy} {cached.mask_ratio}, "
          f"teacher {cached.teacher_arch} ({tokens} tokens x {cached.teacher_dim}), batch "
          f"{args.batch}, {spec.num_frames}x{spec.size}")
    times: dict[str, list[float]] = {"cached": [], "online": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode, cfg in (("cached", cached), ("online", online)):
                src = memory_sources(cfg, frames, targets if mode == "cached" else None,
                                     teacher_factory=make_teacher)
                out = Path(tmp) / f"{mode}{r}"
                t0 = time.perf_counter()
                train(cfg, RunSpec(out=out), src, echo=lambda s: None)
                secs = step_seconds(out, args.batch, args.warmup)
                times[mode] += secs
                print(f"round {r} {mode:6s}: " + " ".join(f"{s:.2f}" for s in secs)
                      + f" s/step  ({time.perf_counter() - t0:.0f} s incl. setup; load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
    c, o = statistics.median(times["cached"]), statistics.median(times["online"])
    print(f"cached: {c:.2f} s/step = {args.batch / c:.3f} clips/s (median of "
          f"{len(times['cached'])} steps)")
    print(f"online: {o:.2f} s/step = {args.batch / o:.3f} clips/s (median of "
          f"{len(times['online'])} steps)")
    print(f"speed-up of cached targets: {o / c:.2f}x (target >= 1.6x); load average now "
          f"{os.getloadavg()[0]:.1f} (shared machines: compare rounds)")


if __name__ == "__main__":
    main()

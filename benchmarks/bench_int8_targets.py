"""int8 vs float16 teacher targets: the round-trip error, and what it does to the demo.

Part ``error`` (the table in BENCHMARKS.md): a random-init ViT-B teacher
(``random:vit_base:0``, 16 x 224, last block) on ``--clips`` synthetic clips (moving textured
squares, JPEG round trip as the build does), fp32 on CPU; each clip's targets, layer-normed
(V-JEPA's convention, the build's default) and raw, stored as float16, bfloat16 and int8
(``cache/quantize.py``; read back as float16 as the reader does) and compared with the fp32
values: relative RMS over the clip (``||x_hat - x|| / ||x||``) and the worst value error in
units of its token's max ``|x|``.

Part ``demo``: per ``--seed``, the demo recipe (``salt_vla.demo.run_seed``) in a cut-down
form (``--videos``, ``--teacher-steps`` or ``--teacher random``, ``--student-steps``; the probe
recipe as the demo's),
then, on the same data and the same exported stage-1 teacher, a second cache built with
``--latents-dtype int8``, the same stage-2 training on it and the same probe of the student.
Prints the student's final normalised loss (mean of the last 5 logged values) and probe top-1
for both, per seed.

Part ``reuse``: the same comparison on demo seeds that exist already (``--from DIR`` holds
``seed-K/data`` and the exported stage-1 teacher ``seed-K/teacher/teacher.pth``, e.g. a full
``salt demo`` run), read only: per seed a float16 and an int8 cache of the train split under
``--out``, the same ``--student-steps`` of stage 2 on each (the ``tiny`` preset, the seed's
seed), the demo's probe of both students. Nothing is written under ``--from``.

    python benchmarks/bench_int8_targets.py error [--clips 4]
    python benchmarks/bench_int8_targets.py demo --out DIR [--seed 0 --seed 1 --seed 2]
    python benchmarks/bench_int8_targets.py reuse --from DIR --out DIR [--student-steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def synthetic_clip(seed: int, frames: int = 16, size: int = 224) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: a textured square moving over a gradient, JPEG round trip."""
    from salt_vla.cache.frames import jpeg_round_trip

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    bg = np.stack([x * 255 // size, y * 255 // size, (x + y + 40 * seed) % 97 * 2], -1)
    tex = rng.integers(0, 256, (size // 3, size // 3, 3))
    side = tex.shape[0]
    clip = np.repeat(bg[None], frames, 0).astype(np.uint8)
    for t in range(frames):
        top, left = (t * 5 + seed * 7) % (size - side), (t * 7 + seed * 3) % (size - side)
        clip[t, top:top + side, left:left + side] = tex
    return jpeg_round_trip(clip)[1]


def round_trips(x: np.ndarray) -> dict[str, np.ndarray]:
    """``x`` float32 ``[N, D]`` as each storage reads it back, in float32."""
    from salt_vla.cache.quantize import dequantize_into, quantize_int8

    q, scale = quantize_int8(x)
    return {
        "float16": x.astype(np.float16).astype(np.float32),
        "bfloat16": torch.from_numpy(x).to(torch.bfloat16).float().numpy(),
        "int8 + fp16 scale (read as fp16)": dequantize_into(
            q, scale, np.empty(x.shape, np.float16)).astype(np.float32),
        "int8 + fp16 scale (read as fp32)": dequantize_into(q, scale, np.empty(x.shape,
                                                                             np.float32)),
    }


def error_table(clips: int) -> None:
    from salt_vla.models.teacher import TeacherSpec, load_teacher

    torch.manual_seed(0)
    spec = TeacherSpec(arch="vit_base", num_frames=16, img_size=224, layer=-1, target_norm=False)
    teacher = load_teacher("random:vit_base:0", spec, device="cpu")
    from salt_vla.models.pixels import frames_to_input

    rows: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for c in range(clips):
        x = torch.from_numpy(synthetic_clip(c)[None])
        with torch.no_grad():
            raw = teacher.targets(frames_to_input(x), amp=False)[0].float()
        normed = torch.nn.functional.layer_norm(raw, (raw.shape[-1],))
        for kind, t in (("layer-normed", normed), ("raw", raw)):
            ref = t.numpy().astype(np.float32)
            tok_max = np.abs(ref).max(axis=1, keepdims=True)
            for name, back in round_trips(ref).items():
                err = back - ref
                rel = float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(ref**2)))
                worst = float(np.max(np.abs(err) / np.maximum(tok_max, 1e-30)))
                d = rows.setdefault(f"{kind} / {name}", {"rel": [], "worst": []})
                d["rel"].append(rel)
                d["worst"].append(worst)
        print(f"  clip {c}: {time.perf_counter() - t0:.0f} s, tokens {ref.shape[0]} x "
              f"{ref.shape[1]}, token max |x| (normed) "
              f"{float(np.abs(normed.numpy()).max(axis=1).mean()):.2f} mean, raw "
              f"{float(np.abs(raw.numpy()).max()):.2f} max")
    print(f"random:vit_base:0, 16x224, last block, {clips} synthetic clips, fp32 on CPU "
          f"({platform.machine()}, torch {torch.__version__})")
    print(f"  {'targets / storage':<48} {'rel. RMS error':>22}  {'worst |err| / token max':>24}")
    for name, d in rows.items():
        r, w = np.asarray(d["rel"]), np.asarray(d["worst"])
        print(f"  {name:<48} {100 * r.mean():8.4f}% ({100 * r.min():.4f}-{100 * r.max():.4f})"
              f"  {w.max():24.2e}")


def demo(out: Path, seeds: list[int], videos: int, teacher_steps: int, student_steps: int,
         workers: int, teacher: str) -> None:
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import view_preset
    from salt_vla.demo import TEACHER_ARCH, TRAIN_EXP, VIEW, demo_config, run_seed, seed_dir
    from salt_vla.eval.probe_run import ProbeJob, run_probe
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    results = []
    for seed in seeds:
        base = demo_config(seed=seed, workers=workers, teacher=teacher)
        cfg = replace(base, synth=replace(base.synth, videos=videos),
                      teacher_sets=(f"max_steps={teacher_steps}",),
                      train_sets=(f"max_steps={student_steps}",))
        t0 = time.perf_counter()
        run = run_seed(out, cfg, echo=lambda s: None)
        t_fp16 = time.perf_counter() - t0
        d = seed_dir(out, seed)
        t0 = time.perf_counter()
        cache8 = d / "cache-int8"
        build_cache(BuildConfig(
            data_root=d / "data", out=cache8, teacher=run.teacher_source, view=view_preset(VIEW),
            split="train", teacher_arch=TEACHER_ARCH, dtype="int8",
            pipeline=PipelineConfig(batch_size=32, workers=workers),
            command=("bench_int8_targets", "int8 cache"), show_progress=False),
            log=lambda s: None)
        run8 = d / "run-int8"
        train(resolve(TRAIN_EXP, [*cfg.train_sets, f"seed={seed}"]),
              RunSpec(out=run8, cache=cache8, resume="auto"), echo=lambda s: None)
        res8 = run_probe(ProbeJob(encoder=str(run8), data=d / "data", probe=cfg.probe,
                                  teacher_arch=TEACHER_ARCH, feature_cache=d / "features",
                                  workers=0, what="SALT student, int8 targets"),
                         d / "probe-salt-int8.json", echo=lambda s: None, reuse=True)
        t_int8 = time.perf_counter() - t0

        rec = {"seed": seed, "float16_norm_loss": final_loss(d / "run"),
               "int8_norm_loss": final_loss(run8), "float16_top1": run.top1["salt"],
               "int8_top1": res8.top1, "teacher_top1": run.top1["teacher"],
               "random_top1": run.top1["random"], "float16_seconds": round(t_fp16),
               "int8_seconds": round(t_int8)}
        results.append(rec)
        print(json.dumps(rec), flush=True)
    what = (f"stage-1 teacher {teacher_steps} steps" if teacher == "stage1"
            else "random:vit_tiny:SEED teacher (no stage 1)")
    print(f"demo cut down: {videos} videos, {what}, student {student_steps} steps, probe "
          f"{demo_config().probe.epochs} epochs (the demo's)")
    print_comparison(results, ("teacher", "random"))


def print_comparison(results: list[dict], probes: tuple[str, ...] = ()) -> None:
    """Per seed: final normalised loss and probe top-1 of the float16 and int8 students (and
    of the ``probes`` encoders, e.g. the teacher), then the mean int8 - float16 differences."""
    print(f"  {'seed':>4}  {'norm loss fp16':>14}  {'int8':>8}  {'probe top-1 fp16':>16}  "
          f"{'int8':>6}" + "".join(f"  {k:>7}" for k in probes))
    for r in results:
        print(f"  {r['seed']:>4}  {r['float16_norm_loss']:14.4f}  {r['int8_norm_loss']:8.4f}  "
              f"{100 * r['float16_top1']:15.1f}%  {100 * r['int8_top1']:5.1f}%"
              + "".join(f"  {100 * r[f'{k}_top1']:6.1f}%" for k in probes))
    if len(results) > 1:
        dl = [r["int8_norm_loss"] - r["float16_norm_loss"] for r in results]
        dt = [r["int8_top1"] - r["float16_top1"] for r in results]
        print(f"  int8 - fp16: norm loss {np.mean(dl):+.4f} (per seed "
              f"{', '.join(f'{v:+.4f}' for v in dl)}); top-1 {100 * np.mean(dt):+.1f} points "
              f"(per seed {', '.join(f'{100 * v:+.1f}' for v in dt)})")


def final_loss(run_dir: Path) -> float:
    """The student's final normalised loss: the mean of its last 5 logged values."""
    from salt_vla.runs.rundir import loss_curve

    return float(np.mean([v for _, v in loss_curve(run_dir, "norm_loss")][-5:]))


def reuse(src: Path, out: Path, seeds: list[int], student_steps: int, workers: int,
          fp16_from_src: bool = False) -> None:
    """fp16 vs int8 caches of existing demo seeds (``src``, read only), trained alike.
    ``fp16_from_src``: take the float16 arm from the seed's own demo run (``run/`` and
    ``probe-salt.json`` under ``src``) instead of training it again; valid when this code
    reproduces that run (check one seed both ways: the final losses must agree)."""
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import view_preset
    from salt_vla.demo import TEACHER_ARCH, TRAIN_EXP, VIEW, demo_config
    from salt_vla.eval.probe_run import ProbeJob, run_probe
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    results = []
    for seed in seeds:
        data, teacher = src / f"seed-{seed}" / "data", src / f"seed-{seed}" / "teacher"
        d = out / f"seed-{seed}"
        probe = demo_config(seed=seed).probe
        rec: dict[str, float | int] = {"seed": seed}
        if fp16_from_src:
            rec["float16_norm_loss"] = final_loss(src / f"seed-{seed}" / "run")
            rec["float16_top1"] = json.loads(
                (src / f"seed-{seed}" / "probe-salt.json").read_text())["top1"]
        for dtype in ("int8",) if fp16_from_src else ("float16", "int8"):
            t0 = time.perf_counter()
            cache = d / f"cache-{dtype}"
            build_cache(BuildConfig(
                data_root=data, out=cache, teacher=str(teacher / "teacher.pth"),
                view=view_preset(VIEW), split="train", teacher_arch=TEACHER_ARCH, dtype=dtype,
                pipeline=PipelineConfig(batch_size=32, workers=workers),
                command=("bench_int8_targets", "reuse", dtype), show_progress=False),
                log=lambda s: None)
            run = d / f"run-{dtype}"
            train(resolve(TRAIN_EXP, [f"max_steps={student_steps}", f"seed={seed}"]),
                  RunSpec(out=run, cache=cache, resume="auto"), echo=lambda s: None)
            res = run_probe(ProbeJob(encoder=str(run), data=data, probe=probe,
                                     teacher_arch=TEACHER_ARCH, feature_cache=d / "features",
                                     workers=0, what=f"SALT student, {dtype} targets"),
                            d / f"probe-salt-{dtype}.json", echo=lambda s: None, reuse=True)
            rec[f"{dtype}_norm_loss"] = final_loss(run)
            rec[f"{dtype}_top1"] = res.top1
            rec[f"{dtype}_seconds"] = round(time.perf_counter() - t0)
        results.append(rec)
        print(json.dumps(rec), flush=True)
    print(f"existing demo seeds {src}: stage-1 teachers reused, student {student_steps} steps "
          f"{'(float16 arm: the demo runs there) ' if fp16_from_src else ''}"
          f"(tiny preset), probe {demo_config().probe.kind} {demo_config().probe.epochs} "
          f"epochs (the demo's); {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}")
    print_comparison(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    e = sub.add_parser("error")
    e.add_argument("--clips", type=int, default=4)
    d = sub.add_parser("demo")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, action="append")
    d.add_argument("--videos", type=int, default=300)
    d.add_argument("--teacher-steps", type=int, default=300)
    d.add_argument("--student-steps", type=int, default=400)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--teacher", choices=("stage1", "random"), default="stage1",
                   help="stage1: train the demo's teacher; random: the seeded random teacher.")
    r = sub.add_parser("reuse")
    r.add_argument("--from", dest="src", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seed", type=int, action="append")
    r.add_argument("--student-steps", type=int, default=300)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    r.add_argument("--fp16-from-src", action="store_true",
                   help="float16 arm: the seed's own run under --from (not trained again)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, getattr(args, "threads", 0) or torch.get_num_threads()))
    if args.part == "error":
        error_table(args.clips)
    elif args.part == "reuse":
        reuse(args.src, args.out, args.seed or [0, 1, 2], args.student_steps, args.workers,
              args.fp16_from_src)
    else:
        demo(args.out, args.seed or [0, 1, 2], args.videos, args.teacher_steps,
             args.student_steps, args.workers, args.teacher)


if __name__ == "__main__":
    main()

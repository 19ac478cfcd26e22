"""``salt demo``: the whole two-stage SALT recipe on synthetic data (see salt_vla/demo.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import say

DEMO_HELP = (
    "The whole SALT recipe on CPU (about 11 minutes on 2 idle cores): synthetic SSv2-style "
    "videos -> stage-1 teacher (teacher-tiny) -> cache build -> cache verify -> stage-2 "
    "training (tiny) -> frozen-encoder probes on the held-out split for a random-init "
    "student, the teacher and the SALT student, each under V-JEPA's position-free probe and "
    "a position-aware one -> learning curves (the same probes on earlier stage-1 and stage-2 "
    "checkpoints) -> intphys pairs scored by the SALT run and by its random-init control. "
    "Prints the tables and the quality bar (under both probes: SALT >= random-init + 15 "
    "points and >= teacher, mean over seeds) and writes OUT/demo.md, OUT/demo.json and "
    "OUT/demo.png (loss curves, probe bars, learning curves) over every seed under OUT. Each "
    "seed works in OUT/seed-S/; re-running with the same --out reuses finished stages. What "
    "the numbers mean: docs/demo.md."
)


def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", help="Output directory (one seed-S/ folder per seed)."
    ),
    seeds: list[int] = typer.Option(
        [0], "--seed",
        help="Seed of everything (data, both trainings, the baseline, the probe). Repeat to "
        "run several seeds in turn, e.g. --seed 0 --seed 1 --seed 2 (the quality bar is a "
        "mean over 3 seeds).",
    ),
    quick: bool = typer.Option(
        False, "--quick",
        help="Smoke-test size: a few dozen videos and a handful of steps per stage (well under "
        "3 minutes); checks that the pipeline runs, its accuracies mean nothing. Use a "
        "different --out than the full demo's.",
    ),
    size: str = typer.Option(
        "cpu", "--size",
        help="cpu: the 2-core demo; gpu: the same table at GPU scale (10x the videos, 2x the "
        "batch at the same epochs: 10x the clips each stage processes, 5x the steps; the same "
        "tiny encoders and probe recipe). Use a different --out per size. docs/demo.md.",
    ),
    random_teacher: bool = typer.Option(
        False, "--random-teacher",
        help="Skip stage 1 and cache a seeded random ViT-tiny teacher instead (faster; the "
        "baseline the trained teacher should beat).",
    ),
    workers: int | None = typer.Option(
        None, "--workers",
        help="Decoding processes for synthesis and the cache build, and probes run at a time "
        "(one thread each) (default: up to 2; --size gpu: up to 8).",
        show_default=False,
    ),
) -> None:
    """Run the demo for each seed, then print and save the table (see the command's help)."""
    import time

    from salt_vla.demo import demo_config, run_demo

    t0 = time.perf_counter()
    say(f"demo dir: {out.resolve()}  ({'--out' if out != Path('demo-out') else 'default'})")
    configs = [demo_config(s, quick, "random" if random_teacher else "stage1", workers, size)
               for s in dict.fromkeys(seeds)]
    result = run_demo(out, configs, echo=say)
    rep = result.report
    say("")
    for line in rep.lines:
        say(line)
    say("")
    say(rep.bar.line() if rep.bar else "quality bar: not all three probes have run")
    say(f"table: {rep.markdown.resolve()}")
    say(f"json: {rep.json.resolve()}")
    say(f"plot: {rep.png.resolve()}")
    say(f"wall time: {time.perf_counter() - t0:.0f} s for seed(s) "
        f"{', '.join(str(c.seed) for c in configs)}{' (--quick)' if quick else ''}"
        f"{' (--size gpu)' if size == 'gpu' else ''}")

"""`salt demo --quick`: the whole pipeline runs, writes its tables (both probes, the learning
curves, the intphys control), JSON and PNG, reuses finished stages on a re-run, refuses to
mix configurations; the quality bar's arithmetic under both probes; the GPU size preset.

The quick form is a smoke test: 32 videos, 4 optimiser steps per training stage, a 2-epoch
probe. Its accuracies mean nothing, so only the structure of the results is checked.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.demo import DemoError, curve_steps, demo_config, run_seed, snapshot_every
from salt_vla.eval.demo_report import (
    BAR_PROBES,
    ENCODERS,
    SeedResult,
    quality_bar,
    result_key,
    table_lines,
)

BOTH = {result_key(k, p) for k in ENCODERS for p in BAR_PROBES}  # salt, salt@fixed, ...


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, f"salt demo --quick failed:\n{res.output}\n{res.exception!r}"
    return out, res.output


def test_quick_demo_prints_the_three_way_table(quick_demo: tuple[Path, str]) -> None:
    out, output = quick_demo
    for label in ENCODERS.values():
        assert label in output, f"table row {label!r} missing from the output"
    assert "| encoder | probe | seed 3 | mean |" in output
    assert "| SALT student (tiny ViT after SALT stage 2) | + fixed positions |" in output
    assert "quality bar" in output and "wall time" in output
    assert "must hold under both probes" in output and "+ fixed positions: SALT" in output
    for i, stage in enumerate(("data", "teacher", "cache", "verify", "train", "probe", "curve",
                               "intphys"), 1):
        assert f"[{i}/9] {stage}:" in output, f"stage {stage} not announced"


def test_quick_demo_writes_table_json_and_png(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    md = (out / "demo.md").read_text()
    assert "SALT student" in md and "quality bar" in md
    data = json.loads((out / "demo.json").read_text())
    top1 = data["seeds"]["3"]["top1"]
    assert set(top1) == BOTH, f"probe results missing: {top1}"
    assert all(0.0 <= v <= 1.0 for v in top1.values())
    assert data["quality_bar"]["seeds"] == [3]
    assert set(data["quality_bar"]["by_probe"]) == set(BAR_PROBES)
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "demo.png is not a PNG"
    seed = out / "seed-3"
    assert (seed / "teacher" / "teacher.pth").is_file(), "stage 1 exported no teacher"
    assert (seed / "run" / "ckpt.pt").is_file(), "stage 2 left no checkpoint"
    assert (seed / "cache" / "cache.json").is_file()
    probe = json.loads((seed / "probe-teacher.json").read_text())
    # The teacher row is the stage-1 teacher the cache was built with, not a random one.
    assert str(seed / "teacher" / "teacher.pth") in json.dumps(probe["encoder"])


def test_quick_demo_reports_the_learning_curves(quick_demo: tuple[Path, str]) -> None:
    """The teacher at >= 2 stage-1 checkpoints and the SALT student at >= 3 stage-2 ones,
    each under both probes; the final points are the table's rows."""
    out, output = quick_demo
    seed = json.loads((out / "demo.json").read_text())["seeds"]["3"]
    curve = seed["curve"]
    for stage, n in (("teacher", 2), ("salt", 3)):
        pts = [p for p in curve if p["stage"] == stage]
        assert len(pts) >= n, f"{stage}: {len(pts)} curve points, want >= {n}: {curve}"
        assert [p["step"] for p in pts] == sorted({p["step"] for p in pts}), pts
        assert pts[-1]["final"] and not any(p["final"] for p in pts[:-1]), pts
        for p in pts:
            assert set(p["top1"]) == set(BAR_PROBES), p
        for pos in BAR_PROBES:
            assert pts[-1]["top1"][pos] == seed["top1"][result_key(stage, pos)]
    # an intermediate teacher point is an exported stage-1 checkpoint, probed as a teacher
    mid = next(p for p in curve if p["stage"] == "teacher" and not p["final"])
    rec = json.loads((out / "seed-3" / f"probe-curve-teacher-step{mid['step']:06d}.json")
                     .read_text())
    assert f"teacher-step{mid['step']:06d}.pth" in json.dumps(rec["encoder"])
    assert rec["probe"]["val_every"] == 0 and rec["probe"]["epochs"] == 2
    assert "| learning curve | step | probe | seed 3 |" in output
    assert "| SALT student (stage 2) | 1/4 | + fixed positions |" in output, output


def test_quick_demo_scores_intphys_against_the_random_init_control(
        quick_demo: tuple[Path, str]) -> None:
    out, output = quick_demo
    seed = json.loads((out / "demo.json").read_text())["seeds"]["3"]
    got = seed["intphys"]
    assert set(got) == {"salt", "random"}, got
    assert got["salt"]["weights"] == "trained" and got["random"]["weights"] == "random-init"
    assert got["salt"]["pairs"] == got["random"]["pairs"] == 4
    for what in ("salt", "random"):
        assert 0.0 <= got[what]["mean"] <= 1.0
        rec = json.loads((out / "seed-3" / f"intphys-{what}.json").read_text())
        assert rec["data"]["root"] == str((out / "seed-3" / "intphys-data").resolve())
    assert "| random-init control | mean |" in output and "| SALT run | mean |" in output


def test_rerun_reuses_finished_stages(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    lines: list[str] = []
    # A different number of decoding processes is not a different demo.
    run = run_seed(out, replace(demo_config(3, quick=True), workers=2), echo=lines.append)
    reused = {name for name, rec in run.stages.items() if rec.reused}
    assert reused >= {"data", "teacher", "cache", "train", "probe", "curve", "intphys"}, (
        f"stages recomputed on a re-run: {sorted(set(run.stages) - reused)}\n" + "\n".join(lines)
    )
    before = json.loads((out / "demo.json").read_text())["seeds"]["3"]["top1"]
    assert run.top1 == before


def test_a_different_config_in_the_same_dir_is_refused(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    cfg = demo_config(3, quick=True)
    with pytest.raises(DemoError, match="different configuration"):
        run_seed(out, replace(cfg, train_sets=(*cfg.train_sets, "lr=0.002")), echo=lambda s: None)


def _seed(seed: int, random: float, teacher: float, salt: float,
          fixed: tuple[float, float, float] | None = None) -> SeedResult:
    """A seed's rows: position-free top-1s, and the fixed-position probe's (random, teacher,
    salt) — by default the same numbers."""
    top1 = {"random": random, "teacher": teacher, "salt": salt}
    for k, v in zip(ENCODERS, fixed or (random, teacher, salt), strict=True):
        top1[result_key(k, "fixed")] = v
    return SeedResult(seed, Path(f"seed-{seed}"), top1, {k: {} for k in top1})


def test_quality_bar_uses_means_over_seeds() -> None:
    seeds = [_seed(0, 0.30, 0.40, 0.50), _seed(1, 0.30, 0.40, 0.40), _seed(2, 0.30, 0.40, 0.45)]
    bar = quality_bar(seeds)
    assert bar is not None and bar.passed, bar
    none = bar.parts["none"]
    assert none.margin_random == pytest.approx(15.0) and none.margin_teacher == pytest.approx(5.0)
    assert "MET" in bar.line() and "NOT MET" not in bar.line() and "only" not in bar.line()


def test_quality_bar_fails_below_the_teacher_or_the_margin() -> None:
    assert not quality_bar([_seed(0, 0.25, 0.60, 0.55)]).passed  # below the teacher
    assert not quality_bar([_seed(0, 0.30, 0.20, 0.40)]).passed  # only +10 over random
    line = quality_bar([_seed(0, 0.30, 0.20, 0.40)]).line()
    assert "NOT MET" in line and "only 1 of the 3 seeds" in line


def test_quality_bar_must_hold_under_both_probes() -> None:
    """Met under the position-free probe alone, or under the position-aware one alone, is not
    met: changing the probe cannot pass the bar. The line gives both probes' numbers."""
    free_only = [_seed(s, 0.30, 0.40, 0.50, fixed=(0.55, 0.50, 0.52)) for s in range(3)]
    aware_only = [_seed(s, 0.65, 0.20, 0.26, fixed=(0.30, 0.40, 0.50)) for s in range(3)]
    both = [_seed(s, 0.30, 0.40, 0.50, fixed=(0.35, 0.45, 0.55)) for s in range(3)]
    for results, want in ((free_only, False), (aware_only, False), (both, True)):
        bar = quality_bar(results)
        assert bar is not None and bar.passed is want, bar.line()
    bar = quality_bar(free_only)
    assert bar.parts["none"].passed and not bar.parts["fixed"].passed
    line = bar.line()
    assert line.startswith("quality bar NOT MET"), line
    assert "no positions: SALT student 50.0% vs random-init 30.0% (+20.0 points" in line, line
    assert "+ fixed positions: SALT student 52.0% vs random-init 55.0% (-3.0 points" in line
    assert "vs teacher 50.0% (+2.0 points" in line, line
    # a probe that did not run counts as not met
    none_only = [SeedResult(0, Path("s"), {"random": 0.1, "teacher": 0.2, "salt": 0.9}, {})]
    bar = quality_bar(none_only)
    assert not bar.passed and "+ fixed positions: not run" in bar.line(), bar.line()


def test_table_has_each_seed_and_the_mean() -> None:
    lines = table_lines([_seed(0, 0.25, 0.5, 0.75, fixed=(0.3, 0.4, 0.1)),
                         _seed(1, 0.35, 0.5, 0.65, fixed=(0.3, 0.4, 0.3))])
    assert lines[0] == "| encoder | probe | seed 0 | seed 1 | mean | std |"
    salt = next(line for line in lines if line.startswith("| SALT student | no positions"))
    assert "75.0%" in salt and "65.0%" in salt and "70.0%" in salt
    fixed = next(line for line in lines if line.startswith("| SALT student | + fixed"))
    assert "10.0%" in fixed and "30.0%" in fixed and "20.0%" in fixed


def test_bad_seed_and_unwritable_out_are_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    neg = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d"), "--seed", "-1"])
    assert neg.exit_code == 1 and "--seed -1" in neg.output, neg.output
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bad = runner.invoke(app, ["demo", "--quick", "--out", str(blocker)])
    assert bad.exit_code == 1 and "cannot create the demo directory" in bad.output, bad.output
    assert blocker.read_text() == "not a directory"


def test_a_directory_made_before_the_new_keys_is_still_reused(
        quick_demo: tuple[Path, str]) -> None:
    """demo-config.json written before probe_positions / pretrain_split / ProbeConfig's
    positions and val_every existed means their defaults: the re-run reuses everything."""
    out, _ = quick_demo
    path = out / "seed-3" / "demo-config.json"
    saved = path.read_text()
    old = json.loads(saved)
    for key in ("probe_positions", "pretrain_split", "curve_points", "teacher_curve_points",
                "intphys_pairs", "size"):
        old.pop(key)
    for key in ("positions", "val_every"):
        old["probe"].pop(key)
    try:
        path.write_text(json.dumps(old))
        run = run_seed(out, demo_config(3, quick=True), echo=lambda s: None)
        assert run.stages["probe"].reused
    finally:
        path.write_text(saved)


def test_position_aware_probes_share_each_encoders_features(tmp_path: Path) -> None:
    # workers=2: the probes run in two worker processes, after the features are made once
    cfg = replace(demo_config(5, quick=True), probe_positions=("none", "fixed"),
                  curve_points=1, teacher_curve_points=1, intphys_pairs=0, workers=2)
    run = run_seed(tmp_path, cfg, echo=lambda s: None)
    assert set(run.top1) == {f"{k}{s}" for k in ENCODERS for s in ("", "@fixed")}
    d = tmp_path / "seed-5"
    for key in ENCODERS:
        fixed = json.loads((d / f"probe-{key}-fixed.json").read_text())
        assert fixed["probe"]["positions"] == "fixed" and fixed["feature_rms"] > 0
        assert json.loads((d / f"probe-{key}.json").read_text())["positions"] == "none"
    # one features entry per encoder and split, not one per probe
    assert len(list((d / "features").iterdir())) == 2 * len(ENCODERS)
    with pytest.raises(DemoError, match="probe_positions"):
        replace(cfg, probe_positions=("none", "none"))


def test_curve_steps_pick_the_kept_checkpoints_nearest_each_fraction() -> None:
    assert curve_steps([350, 700, 1050], 3) == [350, 700, 1050]
    assert curve_steps([393, 700, 786, 787], 2) == [393, 787]  # rotation kept 700 and 786
    assert curve_steps([1, 2, 3, 4], 3) == [1, 3, 4]
    assert curve_steps([4], 3) == [4]  # a run made before snapshots: the final point only
    assert curve_steps([], 3) == []


def test_size_gpu_preset_resolves_at_10_to_50x_the_cpu_demo() -> None:
    """Config only (no GPU here): both stages' configs resolve, and the preset processes
    10-50x the CPU demo's clips x steps per stage, with the same probe recipe."""
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.teacher_experiments import resolve_teacher

    cpu, gpu = demo_config(0), demo_config(0, size="gpu")
    assert gpu.size == "gpu" and cpu.size == "cpu" and gpu.probe == cpu.probe
    assert gpu.probe_positions == cpu.probe_positions == BAR_PROBES
    rows = {c.size: int(c.synth.videos * c.synth.splits[0]) for c in (cpu, gpu)}
    assert rows == {"cpu": 420, "gpu": 4200}
    for make, preset, sets, points in (
            (resolve_teacher, "teacher-tiny", "teacher_sets", "teacher_curve_points"),
            (resolve, "tiny", "train_sets", "curve_points")):
        clip_steps = {}
        for c in (cpu, gpu):
            tcfg = make(preset, [*getattr(c, sets), "seed=0"])
            steps = int(tcfg.epochs * rows[c.size] // tcfg.batch_size)
            clip_steps[c.size] = steps * tcfg.batch_size
            assert snapshot_every(tcfg, rows[c.size], getattr(c, points)) > 0
        assert 10 <= clip_steps["gpu"] / clip_steps["cpu"] <= 50, (preset, clip_steps)
    with pytest.raises(DemoError, match="--size"):
        demo_config(0, size="tpu")
    with pytest.raises(DemoError, match="--quick"):
        demo_config(0, quick=True, size="gpu")
    help_text = CliRunner().invoke(app, ["demo", "--help"]).output
    assert "--size" in help_text

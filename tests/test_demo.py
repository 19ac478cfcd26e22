"""`salt demo --quick`: the whole pipeline runs, writes its table, JSON and PNG, reuses
finished stages on a re-run, refuses to mix configurations; the quality bar's arithmetic.

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
from salt_vla.demo import DemoError, demo_config, run_seed
from salt_vla.eval.demo_report import ENCODERS, SeedResult, quality_bar, table_lines


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
    assert "| encoder | seed 3 | mean |" in output
    assert "quality bar" in output and "wall time" in output
    for i, stage in enumerate(("data", "teacher", "cache", "verify", "train", "probe"), 1):
        assert f"[{i}/7] {stage}:" in output, f"stage {stage} not announced"


def test_quick_demo_writes_table_json_and_png(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    md = (out / "demo.md").read_text()
    assert "SALT student" in md and "quality bar" in md
    data = json.loads((out / "demo.json").read_text())
    top1 = data["seeds"]["3"]["top1"]
    assert set(top1) == set(ENCODERS), f"probe results missing: {top1}"
    assert all(0.0 <= v <= 1.0 for v in top1.values())
    assert data["quality_bar"]["seeds"] == [3]
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "demo.png is not a PNG"
    seed = out / "seed-3"
    assert (seed / "teacher" / "teacher.pth").is_file(), "stage 1 exported no teacher"
    assert (seed / "run" / "ckpt.pt").is_file(), "stage 2 left no checkpoint"
    assert (seed / "cache" / "cache.json").is_file()
    probe = json.loads((seed / "probe-teacher.json").read_text())
    # The teacher row is the stage-1 teacher the cache was built with, not a random one.
    assert str(seed / "teacher" / "teacher.pth") in json.dumps(probe["encoder"])


def test_rerun_reuses_finished_stages(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    lines: list[str] = []
    # A different number of decoding processes is not a different demo.
    run = run_seed(out, replace(demo_config(3, quick=True), workers=2), echo=lines.append)
    reused = {name for name, rec in run.stages.items() if rec.reused}
    assert reused >= {"data", "teacher", "cache", "train", "probe"}, (
        f"stages recomputed on a re-run: {sorted(set(run.stages) - reused)}\n" + "\n".join(lines)
    )
    before = json.loads((out / "demo.json").read_text())["seeds"]["3"]["top1"]
    assert run.top1 == before


def test_a_different_config_in_the_same_dir_is_refused(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    cfg = demo_config(3, quick=True)
    with pytest.raises(DemoError, match="different configuration"):
        run_seed(out, replace(cfg, train_sets=(*cfg.train_sets, "lr=0.002")), echo=lambda s: None)


def _seed(seed: int, random: float, teacher: float, salt: float) -> SeedResult:
    top1 = {"random": random, "teacher": teacher, "salt": salt}
    return SeedResult(seed, Path(f"seed-{seed}"), top1, {k: {} for k in top1})


def test_quality_bar_uses_means_over_seeds() -> None:
    seeds = [_seed(0, 0.30, 0.40, 0.50), _seed(1, 0.30, 0.40, 0.40), _seed(2, 0.30, 0.40, 0.45)]
    bar = quality_bar(seeds)
    assert bar is not None and bar.passed, bar
    assert bar.margin_random == pytest.approx(15.0) and bar.margin_teacher == pytest.approx(5.0)
    assert "MET" in bar.line() and "only" not in bar.line()


def test_quality_bar_fails_below_the_teacher_or_the_margin() -> None:
    assert not quality_bar([_seed(0, 0.25, 0.60, 0.55)]).passed  # below the teacher
    assert not quality_bar([_seed(0, 0.30, 0.20, 0.40)]).passed  # only +10 over random
    line = quality_bar([_seed(0, 0.30, 0.20, 0.40)]).line()
    assert "NOT MET" in line and "only 1 of the 3 seeds" in line


def test_table_has_each_seed_and_the_mean() -> None:
    lines = table_lines([_seed(0, 0.25, 0.5, 0.75), _seed(1, 0.35, 0.5, 0.65)])
    assert lines[0] == "| encoder | seed 0 | seed 1 | mean | std |"
    salt = next(line for line in lines if line.startswith("| SALT student"))
    assert "75.0%" in salt and "65.0%" in salt and "70.0%" in salt


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
    for key in ("probe_positions", "pretrain_split"):
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
    cfg = replace(demo_config(5, quick=True), probe_positions=("none", "fixed"))
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

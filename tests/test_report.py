"""`salt report` on two fabricated runs: the table, the config differences and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.runs.report import write_report
from salt_vla.runs.smoothing import rolling_best


def test_report_of_two_runs(tmp_path: Path, make_run) -> None:
    # Run a has one lucky batch (0.1) but a worse smoothed curve than run b.
    a = make_run(tmp_path / "a", "exp1", [0.9, 0.1, 0.9, 0.8, 0.8], lr=3e-4)
    b = make_run(tmp_path / "b", "exp3", [0.7, 0.6, 0.5, 0.5, 0.5], lr=3e-4)
    (b / "probe.json").write_text(json.dumps({"top1": 0.4321, "top5": 0.9,
                                              "probe": {"kind": "attentive"}}))
    rep = write_report([a, b], tmp_path / "out" / "report.md", window=3)
    text = rep.markdown.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| a ") or line.startswith("| b ")}
    assert set(rows) == {"a", "b"}, text
    # best smoothed normalised loss: lowest 3-value mean, not the single 0.1
    assert "0.6000 (40)" in rows["a"]  # (0.1 + 0.9 + 0.8) / 3 at step 40
    assert "0.5000 (50)" in rows["b"]
    assert "43.21%" in rows["b"] and "| - |" in rows["a"]  # probe column
    diffs = text.split("## Config differences")[1]
    assert "| mask_ratio | 0.75 | 0.9 |" in diffs and "| lr |" not in diffs
    assert "| name | exp1 | exp3 |" in diffs
    assert [p.name for p in rep.plots] == ["report-loss.png", "report-norm_loss.png",
                                           "report-lr.png"]
    for p in rep.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300
        assert f"]({p.name})" in text


def test_report_cli_and_bad_input(tmp_path: Path, make_run) -> None:
    a = make_run(tmp_path / "x" / "run", "exp1")
    b = make_run(tmp_path / "y" / "run", "exp2")
    out = tmp_path / "cmp.md"
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "x/run" in out.read_text() and "y/run" in out.read_text()  # names disambiguated
    assert (tmp_path / "cmp-lr.png").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 1 and "no such directory" in res.output


def test_rolling_best_ignores_nonfinite_windows() -> None:
    pts = [(10, 1.0), (20, float("nan")), (30, 0.5), (40, 0.5)]
    assert rolling_best(pts, 2) == pytest.approx((0.5, 40))
    assert rolling_best([], 2) is None

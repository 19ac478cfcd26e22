"""Intuitive-physics surprise: exact scoring on hand-made series, matched synthetic pairs that
part only at the event frame, and `salt eval intphys` end to end on a tiny run.

Videos here are 16 frames of 32x32; the run is the `tiny` preset's networks, untrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.eval.intphys import (
    IntPhysError,
    SurpriseConfig,
    auto_frame_step,
    check_contexts,
    default_contexts,
    evaluate_pairs,
    load_pairs,
    pair_accuracy,
    summarise,
    surprise_scores,
    window_indices,
    window_starts,
)
from salt_vla.eval.intphys_synth import (
    KINDS,
    IntPhysSynthConfig,
    IntPhysSynthError,
    generate_intphys,
    render_pair,
)
from salt_vla.models.grid import TokenGrid

# --- scoring on hand-made surprise series ---------------------------------------------------


def test_surprise_scores_are_mean_and_max_over_time() -> None:
    e = np.array([[0.5, 1.0, 1.5], [0.0, 3.0, 0.0]])  # 2 windows x 3 predicted steps
    assert surprise_scores(e) == {"mean": 1.0, "max": 3.0}
    with pytest.raises(IntPhysError, match="no prediction errors"):
        surprise_scores(np.zeros((2, 0)))


def test_pair_accuracy_counts_strict_wins_and_ties() -> None:
    acc = pair_accuracy([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0])
    assert acc == {"accuracy": 0.5, "correct": 2, "ties": 1, "pairs": 4}
    assert pair_accuracy([0.0], [1.0])["accuracy"] == 1.0
    with pytest.raises(IntPhysError):
        pair_accuracy([1.0, 2.0], [1.0])


def test_summary_separates_mean_and_max_variants_and_kinds() -> None:
    def rec(kind: str, pos: np.ndarray, imp: np.ndarray) -> dict:
        return {"kind": kind, "possible": {"2": surprise_scores(pos)},
                "impossible": {"2": surprise_scores(imp)}}

    flat = np.ones((2, 2))
    spike = np.array([[0.25, 0.25], [0.25, 2.0]])  # lower mean (0.6875), higher max (2.0)
    high = np.full((2, 2), 1.5)  # higher mean and max
    records = [rec("vanish", flat, spike), rec("wall", flat, high), rec("wall", high, flat)]
    s = summarise(records, [2])["2"]
    assert s["mean"] == {"accuracy": 1 / 3, "correct": 1, "ties": 0, "pairs": 3}
    assert s["max"] == {"accuracy": 2 / 3, "correct": 2, "ties": 0, "pairs": 3}
    assert s["by_kind"]["vanish"]["mean"]["accuracy"] == 0.0
    assert s["by_kind"]["vanish"]["max"]["accuracy"] == 1.0
    assert s["by_kind"]["wall"]["mean"] == {"accuracy": 0.5, "correct": 1, "ties": 0, "pairs": 2}


def test_windows_and_contexts() -> None:
    assert window_starts(32, 29, 1) == [0, 1, 2, 3]
    assert window_starts(20, 8, 5) == [0, 5, 10, 12]  # the last window ends at the last frame
    assert window_starts(10, 29, 1) == [0]
    assert window_indices(6, 10, 4, 2) == [6, 8, 9, 9]  # past the end: the last frame repeats
    assert default_contexts(8) == (2, 4, 6) and default_contexts(4) == (1, 2, 3)
    check_contexts([1, 3], 4)
    with pytest.raises(IntPhysError, match="1..3"):
        check_contexts([0, 4], 4)
    with pytest.raises(IntPhysError):
        SurpriseConfig(contexts=(2,), error="cosine")

    class View:
        sampling, num_frames, frame_step = "segment", 8, 4

    assert auto_frame_step(View, 32) == 4 and auto_frame_step(View, 5) == 1
    View.sampling = "stride"
    assert auto_frame_step(View, 32) == 4


# --- matched pairs --------------------------------------------------------------------------

SMALL = IntPhysSynthConfig(pairs=4, frames=16, height=32, width=32, seed=5)


@pytest.mark.parametrize("index", range(len(KINDS)))
def test_pairs_are_equal_before_the_event_and_differ_from_it(index: int) -> None:
    pair = render_pair(SMALL, index)
    e = pair.event_frame
    assert pair.kind == KINDS[index] and 0 < e < SMALL.frames - 1
    assert pair.possible.shape == pair.impossible.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(pair.possible[:e], pair.impossible[:e])
    assert not np.array_equal(pair.possible[e], pair.impossible[e]), f"{pair.kind}: no event"
    assert not np.array_equal(pair.possible[-1], pair.impossible[-1])
    again = render_pair(SMALL, index)
    np.testing.assert_array_equal(again.impossible, pair.impossible)  # a pure function


@pytest.fixture(scope="session")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("intphys") / "pairs"
    generate_intphys(root, SMALL)
    return root


def test_written_pairs_follow_the_layout_and_decode_equal_before_the_event(
    pairs_root: Path,
) -> None:
    from salt_vla.data.video import decode_frames

    manifest = json.loads((pairs_root / "pairs.json").read_text())
    assert manifest["complete"] and manifest["frames"] == 16
    assert [p["kind"] for p in manifest["pairs"]] == list(KINDS)
    pairs = load_pairs(pairs_root)
    for entry, pair in zip(pairs, manifest["pairs"], strict=True):
        e = pair["event_frame"]
        a = decode_frames(entry.possible, range(16), backend="pyav")
        b = decode_frames(entry.impossible, range(16), backend="pyav")
        np.testing.assert_array_equal(a[:e], b[:e], err_msg=f"pair {entry.id} ({entry.kind})")
        assert not np.array_equal(a[e:], b[e:])


def test_generator_and_loader_refuse_bad_input(tmp_path: Path) -> None:
    with pytest.raises(IntPhysError, match="--intphys"):
        load_pairs(tmp_path)
    (tmp_path / "other.txt").write_text("mine")
    with pytest.raises(IntPhysSynthError, match="--force"):
        generate_intphys(tmp_path, SMALL)
    with pytest.raises(IntPhysSynthError, match="kinds"):
        IntPhysSynthConfig(kinds=("levitate",))


class _PersistenceModel:
    """Stand-in for SurpriseModel: "predicts" that nothing changes, so the error of step k is
    the mean absolute pixel change into it. Any sudden change shows up as surprise."""

    grid = TokenGrid(4, 2, 2)

    class student:  # noqa: N801 - mimics the attribute path evaluate_pairs reads
        class cfg:  # noqa: N801
            tubelet = 2

    def step_errors(self, frames: torch.Tensor, contexts: list[int]) -> dict[int, np.ndarray]:
        f = frames.double()
        change = (f[:, 2::2] - f[:, 1:-1:2]).abs().mean(dim=(2, 3, 4))  # [B, t - 1]: steps 1..
        return {c: change[:, c - 1:].numpy() for c in contexts}


def test_sudden_changes_are_surprising_end_to_end(pairs_root: Path) -> None:
    from salt_vla.data.view import VIEW_PRESETS

    pairs = [p for p in load_pairs(pairs_root) if p.kind in ("vanish", "teleport", "colour")]
    cfg = SurpriseConfig(contexts=(1,))
    res = evaluate_pairs(_PersistenceModel(), pairs, VIEW_PRESETS["tiny-8x64"], cfg)
    assert res["contexts"]["1"]["max"]["accuracy"] == 1.0, res["pairs"]
    assert all(r["frame_step"] == 2 and r["possible_windows"] == 2 for r in res["pairs"])


# --- a run end to end -----------------------------------------------------------------------


def _make_run(run_dir: Path, cache_dir: Path) -> None:
    """A `tiny`-preset run dir trained against teacher random:vit_tiny:0, as `salt train`
    and `salt cache build` leave them (config.json -> cache.json -> teacher_source)."""
    from salt_vla.models.teacher import TeacherSpec, load_teacher
    from salt_vla.trainer.build import build_model
    from salt_vla.trainer.checkpoint import save_checkpoint
    from salt_vla.trainer.experiments import PRESETS

    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    model = build_model(cfg, 8, 64)
    save_checkpoint(run_dir / "ckpt.pt", {"student": model.student.state_dict(),
                                          "predictor": model.predictor.state_dict(),
                                          "config": cfg.to_dict(), "step": 1})
    desc = load_teacher("random:vit_tiny:0", TeacherSpec("vit_tiny", 8, 64)).describe()
    desc.pop("checkpoint")
    cache_dir.mkdir(parents=True)
    (cache_dir / "cache.json").write_text(json.dumps(
        {"teacher": desc, "teacher_source": "random:vit_tiny:0"}))
    (run_dir / "config.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "data": {"targets": "cached", "cache": str(cache_dir),
                                           "teacher": desc}}))


def test_cli_synth_and_intphys_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "pairs"
    res = runner.invoke(app, ["data", "synth", str(data), "--intphys", "--videos", "4",
                              "--frames", "16", "--size", "32x32", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert len(load_pairs(data)) == 2
    run = tmp_path / "run"
    run.mkdir()
    _make_run(run, tmp_path / "cache")
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "1,3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    result = json.loads((run / "intphys.json").read_text())
    assert set(result["contexts"]) == {"1", "3"} and len(result["pairs"]) == 2
    for c in ("1", "3"):
        for variant in ("mean", "max"):
            acc = result["contexts"][c][variant]
            assert acc["pairs"] == 2 and 0.0 <= acc["accuracy"] <= 1.0
    first = result["pairs"][0]
    assert first["possible_windows"] == 2  # 16 frames, step 16 // 8 = 2: span 15, stride 1
    assert first["impossible"]["1"]["max"] >= first["impossible"]["1"]["mean"] > 0
    # A teacher other than the recorded one is refused (its targets are not the run's).
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--teacher", "random:vit_tiny:1", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "sha256" in res.output
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "4"])
    assert res.exit_code == 1 and "1..3" in res.output
    help_text = runner.invoke(app, ["eval", "intphys", "--help"], terminal_width=200).output
    for opt in ("--run", "--data", "--context", "--frame-step", "--teacher", "--out"):
        assert opt in help_text

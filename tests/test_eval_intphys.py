"""Intuitive-physics surprise: exact scoring (pairwise and quadruplet) on hand-made series,
matched synthetic pairs that part only at the event frame, and `salt eval intphys` on the
pairs layout end to end on a tiny run, with its random-init control. The IntPhys 2 layout:
tests/test_eval_intphys2.py.

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
    record_text,
    score_videos,
    window_indices,
    window_starts,
)
from salt_vla.eval.intphys_data import IntPhysDataError, load_benchmark
from salt_vla.eval.intphys_scores import (
    OPTIMISTIC_NOTE,
    IntPhysScoreError,
    best_contexts,
    format_scores,
    pair_accuracy,
    quadruplet_accuracy,
    reported_context,
    score_contexts,
    score_record,
    surprise_scores,
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
    with pytest.raises(IntPhysScoreError, match="no prediction errors"):
        surprise_scores(np.zeros((2, 0)))


def test_pair_accuracy_counts_strict_wins_and_ties() -> None:
    acc = pair_accuracy([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0])
    assert acc == {"accuracy": 0.5, "correct": 2, "ties": 1, "pairs": 4}
    assert pair_accuracy([0.0], [1.0])["accuracy"] == 1.0
    assert pair_accuracy([], [])["accuracy"] is None
    with pytest.raises(IntPhysScoreError):
        pair_accuracy([1.0, 2.0], [1.0])


def test_quadruplet_accuracy_compares_summed_surprise() -> None:
    # Scene 0: each pair wrong by a little, yet the impossible sum wins (1 + 5 > 2 + 3).
    # Scene 1: one pair right, the sums lose (4 + 1 < 1 + 5). Scene 2: equal sums, a tie.
    pos = np.array([[2.0, 3.0], [1.0, 5.0], [1.0, 2.0]])
    imp = np.array([[1.0, 5.0], [4.0, 1.0], [2.0, 1.0]])
    assert quadruplet_accuracy(pos, imp) == {"accuracy": 1 / 3, "correct": 1, "ties": 1,
                                             "quadruplets": 3}
    with pytest.raises(IntPhysScoreError, match="scenes, 2"):
        quadruplet_accuracy(pos[:, :1], imp[:, :1])


def _series(value: float, spike: float | None = None) -> np.ndarray:
    """A 3-window x 2-step error series, flat at ``value`` with one optional spike."""
    e = np.full((3, 2), value)
    if spike is not None:
        e[1, 1] = spike
    return e


def test_scores_pairwise_and_quadruplet_per_context_and_group_from_series() -> None:
    # Two scenes of IntPhys 2 shape; surprise = the errors' mean / max, per context "1" / "2".
    series = {
        # scene A (solidity): set-up 1 right on mean and max; set-up 2 right on max only
        "a1p": _series(1.0), "a1i": _series(2.0),
        "a2p": _series(1.0), "a2i": _series(0.5, spike=4.0),  # mean 1.08 > 1, max 4 > 1
        # scene B (permanence): both pairs wrong; sums wrong too
        "b1p": _series(3.0), "b1i": _series(1.0), "b2p": _series(2.0), "b2i": _series(2.0),
    }
    surprise = {v: {"1": surprise_scores(e), "2": surprise_scores(e * 0.5)}
                for v, e in series.items()}
    tags = {"A": {"condition": "solidity"}, "B": {"condition": "permanence"}}
    pairs = [{"possible": f"{s.lower()}{n}p", "impossible": f"{s.lower()}{n}i", "tags": tags[s]}
             for s in "AB" for n in "12"]
    quads = [{"possible": [f"{s.lower()}1p", f"{s.lower()}2p"],
              "impossible": [f"{s.lower()}1i", f"{s.lower()}2i"], "tags": tags[s]} for s in "AB"]
    scores = score_contexts(surprise, pairs, quads, [1, 2], ["condition"])
    assert set(scores) == {"1", "2"}
    s = scores["1"]
    assert s["pairwise"]["mean"] == {"accuracy": 0.5, "correct": 2, "ties": 1, "pairs": 4}
    assert s["pairwise"]["max"] == {"accuracy": 0.5, "correct": 2, "ties": 1, "pairs": 4}
    # A: mean sums 2 vs 2 + 13/12 -> right; max sums 2 vs 6 -> right. B: 5 vs 3 -> wrong.
    assert s["quadruplet"]["mean"] == {"accuracy": 0.5, "correct": 1, "ties": 0,
                                       "quadruplets": 2}
    solid = s["by"]["condition"]["solidity"]
    assert solid["pairwise"]["mean"]["accuracy"] == 1.0
    assert solid["quadruplet"]["max"]["accuracy"] == 1.0
    perm = s["by"]["condition"]["permanence"]
    assert perm["pairwise"]["max"] == {"accuracy": 0.0, "correct": 0, "ties": 1, "pairs": 2}
    assert scores["2"]["pairwise"] == s["pairwise"]  # halving every error changes no order
    lines = format_scores(scores, ["condition"], 2, "--report-context")
    assert "C=2*" in lines[2] and "reported context: C=2 (--report-context" in lines[0]
    assert any(line.split()[0] == "condition=solidity" for line in lines)
    assert lines[-1] == "headline (C=2, mean/max surprise): pairwise 50/50 %, quadruplet 50/50 %"


def test_pairs_without_quadruplets_and_missing_series() -> None:
    surprise = {"p": {"1": {"mean": 1.0, "max": 1.0}}, "i": {"1": {"mean": 2.0, "max": 0.5}}}
    pairs = [{"possible": "p", "impossible": "i", "tags": {"kind": "vanish"}}]
    s = score_contexts(surprise, pairs, [], [1], ["kind"])["1"]
    assert s["quadruplet"] is None and s["by"]["kind"]["vanish"]["quadruplet"] is None
    assert s["pairwise"]["mean"]["accuracy"] == 1.0 and s["pairwise"]["max"]["accuracy"] == 0.0
    assert "not applicable" in "\n".join(format_scores({"1": s}, ["kind"], 1, "default"))
    with pytest.raises(IntPhysScoreError, match="context 2"):
        score_contexts(surprise, pairs, [], [2], ["kind"])


def test_reported_context_is_fixed_before_scoring_and_best_context_is_labelled() -> None:
    assert reported_context([6, 2, 4]) == (4, "default: the middle of the contexts scored")
    assert reported_context([1, 3]) == (1, "default: the middle of the contexts scored")
    assert reported_context([1, 3], 3) == (3, "--report-context")
    with pytest.raises(IntPhysScoreError, match="not among"):
        reported_context([1, 3], 2)
    surprise = {"p": {"1": {"mean": 2.0, "max": 2.0}, "2": {"mean": 1.0, "max": 3.0}},
                "i": {"1": {"mean": 1.0, "max": 1.0}, "2": {"mean": 2.0, "max": 2.0}}}
    pairs = [{"possible": "p", "impossible": "i", "tags": {"kind": "wall"}}]
    best = best_contexts(score_contexts(surprise, pairs, [], [1, 2], ["kind"]), ["kind"])
    assert best["note"] == OPTIMISTIC_NOTE and "optimistic" in best["note"]
    assert best["pairwise"]["all"]["mean"] == {"context": 2, "accuracy": 1.0}
    assert best["pairwise"]["kind=wall"]["max"] == {"context": 1, "accuracy": 0.0}
    assert "quadruplet" not in best


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
    assert window_starts(32, 29, 1) == [0, 1, 2, 3]

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
    bench = load_benchmark(pairs_root)
    assert bench.format == "pairs" and bench.groups == ("kind",) and not bench.quadruplets
    paths = {v.id: v.path for v in bench.videos}
    for entry, pair in zip(bench.pairs, manifest["pairs"], strict=True):
        e = pair["event_frame"]
        a = decode_frames(paths[entry.possible], range(16), backend="pyav")
        b = decode_frames(paths[entry.impossible], range(16), backend="pyav")
        np.testing.assert_array_equal(a[:e], b[:e], err_msg=f"pair {entry.id} ({pair['kind']})")
        assert not np.array_equal(a[e:], b[e:])


def test_generator_and_loader_refuse_bad_input(tmp_path: Path) -> None:
    with pytest.raises(IntPhysDataError, match="--intphys"):
        load_benchmark(tmp_path, "pairs")
    with pytest.raises(IntPhysDataError, match="neither pairs.json"):
        load_benchmark(tmp_path)
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

    bench = load_benchmark(pairs_root)
    cfg = SurpriseConfig(contexts=(1,))
    videos = score_videos(_PersistenceModel(), bench, VIEW_PRESETS["tiny-8x64"], cfg)
    assert all(v["frame_step"] == 2 and v["window_starts"] == [0, 1] for v in videos)
    assert all(np.shape(v["surprise"]["1"]["errors"]) == (2, 3) for v in videos)
    surprise = {v["id"]: v["surprise"] for v in videos}
    pairs = [{"possible": p.possible, "impossible": p.impossible, "tags": p.tags}
             for p in bench.pairs]
    by_kind = score_contexts(surprise, pairs, [], [1], ["kind"])["1"]["by"]["kind"]
    for kind in ("vanish", "teleport", "colour"):
        assert by_kind[kind]["pairwise"]["max"]["accuracy"] == 1.0, (kind, by_kind[kind])


# --- a run end to end -----------------------------------------------------------------------


def make_run(run_dir: Path, cache_dir: Path) -> None:
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
    assert len(load_benchmark(data).pairs) == 2
    run = tmp_path / "run"
    run.mkdir()
    make_run(run, tmp_path / "cache")
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "1,3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "reported context: C=1 (default: the middle" in res.output
    assert "quadruplet accuracy: not applicable" in res.output
    result = json.loads((run / "intphys.json").read_text())
    assert result["data"]["format"] == "pairs" and result["weights"] == {"kind": "trained"}
    assert set(result["scores"]) == {"1", "3"} and len(result["pairs"]) == 2
    assert result["reported"] == {"context": 1,
                                  "rule": "default: the middle of the contexts scored"}
    for c in ("1", "3"):
        for variant in ("mean", "max"):
            acc = result["scores"][c]["pairwise"][variant]
            assert acc["pairs"] == 2 and 0.0 <= acc["accuracy"] <= 1.0
    assert score_record(result) == result["scores"]  # the stored series give the same scores
    first = result["videos"][0]
    assert first["window_starts"] == [0, 1]  # 16 frames, step 16 // 8 = 2: span 15, stride 1
    assert np.shape(first["surprise"]["1"]["errors"]) == (2, 3)  # windows x (t - C) steps
    assert first["surprise"]["1"]["max"] >= first["surprise"]["1"]["mean"] > 0
    # The chance control: the same architecture at random init, same teacher, own file.
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "1,3", "--random-init", "7", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "RANDOM-INIT control (seed 7)" in res.output
    control = json.loads((run / "intphys-control.json").read_text())
    assert control["weights"]["kind"] == "random-init" and control["weights"]["seed"] == 7
    assert control["teacher"] == result["teacher"]
    assert (control["videos"][0]["surprise"]["1"]["errors"]
            != result["videos"][0]["surprise"]["1"]["errors"])
    # A teacher other than the recorded one is refused (its targets are not the run's).
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--teacher", "random:vit_tiny:1", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "sha256" in res.output
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "4"])
    assert res.exit_code == 1 and "1..3" in res.output
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--difficulty", "Easy"])
    assert res.exit_code == 1 and "IntPhys 2 scenes" in res.output
    help_text = runner.invoke(app, ["eval", "intphys", "--help"], terminal_width=200).output
    for opt in ("--run", "--data", "--format", "--split", "--difficulty", "--condition",
                "--camera", "--context", "--report-context", "--frame-step", "--teacher",
                "--random-init", "--out"):
        assert opt in help_text


def test_record_text_is_json_with_one_line_per_video() -> None:
    record = {"a": 1, "scores": {"1": {"x": [1, 2]}},
              "videos": [{"id": "v0", "errors": [[0.5, 1.0]]}, {"id": "v1", "errors": []}]}
    text = record_text(record)
    assert json.loads(text) == record
    lines = text.splitlines()
    assert '  {"id":"v0","errors":[[0.5,1.0]]},' in lines
    assert json.loads(record_text({"a": 1, "videos": []})) == {"a": 1, "videos": []}

"""IntPhys 2 as released: reading ``<split>/metadata.csv`` with its exact header, pairing
``N_Possible`` with ``N_Impossible`` of a scene, reporting (never dropping) scenes with
missing or extra rows, the fixture tree generator, and `salt eval intphys --format intphys2`
end to end from the CLI on that tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.eval.intphys import SurpriseConfig, score_videos
from salt_vla.eval.intphys_data import (
    HEADER,
    TYPES,
    VALUES,
    IntPhysDataError,
    SceneFilter,
    load_benchmark,
    load_intphys2,
)
from salt_vla.eval.intphys_scores import score_contexts, score_record
from salt_vla.eval.intphys_synth import IntPhysSynthConfig, generate_intphys2, intphys2_rows

# The released header, verbatim (a public copy of IntPhys 2's Main/metadata.csv).
RELEASED_HEADER = ("SceneIndex,name,file_name,game_name,condition,env,type,occluder,"
                   "Difficulty,Camera")


def _row(scene: int, type_: str, condition: str = "solidity", difficulty: str = "Easy",
         camera: str = "Fixed", name: str | None = None) -> str:
    name = name or f"{scene:02d}{type_.lower().replace('_', '')}".ljust(64, "0")
    return (f"{scene},{name},Videos/{name}.mp4,FixedJumpSolidity,{condition},BasicLevel_0,"
            f"{type_},None,{difficulty},{camera}")


def _tree(root: Path, lines: list[str], split: str = "Main", header: str = RELEASED_HEADER,
          make_videos: bool = True) -> Path:
    """A metadata.csv of ``lines`` under ``root/split``, with empty stand-in video files (the
    loader only checks they exist)."""
    d = root / split
    (d / "Videos").mkdir(parents=True, exist_ok=True)
    (d / "metadata.csv").write_text("\n".join([header, *lines]) + "\n")
    if make_videos:
        for line in lines:
            parts = line.split(",")
            if len(parts) > 2:
                (d / parts[2]).write_bytes(b"x")
    return root


# --- reading metadata.csv --------------------------------------------------------------------


def test_exact_released_header_parses_and_pairs_n_possible_with_n_impossible(
    tmp_path: Path,
) -> None:
    assert ",".join(HEADER) == RELEASED_HEADER
    # Row order varies within a scene in the release (scene 8 starts with 2_Possible).
    lines = [_row(0, t) for t in ("1_Possible", "1_Impossible", "2_Impossible", "2_Possible")]
    lines += [_row(8, t, "permanence", "Medium", "Moving")
              for t in ("2_Possible", "1_Possible", "1_Impossible", "2_Impossible")]
    bench = load_benchmark(_tree(tmp_path, lines))  # auto-detected
    assert bench.format == "intphys2" and bench.split == "Main"
    assert bench.groups == ("condition", "Difficulty", "Camera")
    assert bench.source == tmp_path / "Main" / "metadata.csv"
    assert len(bench.videos) == 8 and not bench.problems
    by_id = {v.id: v for v in bench.videos}
    for pair in bench.pairs:
        p, q = by_id[pair.possible], by_id[pair.impossible]
        assert (p.scene, q.scene) == (pair.scene, pair.scene)
        assert p.type[0] == q.type[0] == pair.id[-1], pair  # same set-up number N
        assert (p.outcome, q.outcome) == ("possible", "impossible")
        assert p.path == tmp_path / "Main" / "Videos" / f"{p.id}.mp4"
    assert [p.id for p in bench.pairs] == ["0/1", "0/2", "8/1", "8/2"]
    quad = bench.quadruplets[1]
    assert [by_id[v].type for v in quad.possible] == ["1_Possible", "2_Possible"]
    assert [by_id[v].type for v in quad.impossible] == ["1_Impossible", "2_Impossible"]
    assert quad.tags == {"condition": "permanence", "Difficulty": "Medium", "Camera": "Moving"}


def test_a_scene_with_three_rows_is_reported_not_dropped(tmp_path: Path) -> None:
    lines = [_row(0, t) for t in TYPES] + [_row(1, t) for t in TYPES[:3]]
    bench = load_benchmark(_tree(tmp_path, lines))
    assert bench.scenes == ["0"] and len(bench.pairs) == 2
    assert len(bench.problems) == 1
    problem = bench.problems[0]
    assert problem.scene == "1"
    assert problem.reason == "3 rows (lines 6, 7, 8): missing 2_Impossible"
    assert bench.describe()["not_scored"] == [{"scene": "1", "reason": problem.reason}]


def test_extra_unknown_inconsistent_and_missing_rows_are_each_reported(tmp_path: Path) -> None:
    lines = [_row(0, t) for t in TYPES]
    lines += [_row(1, t) for t in TYPES] + [_row(1, "1_Possible", name="e" * 64)]  # 5 rows
    lines += [_row(2, t) for t in TYPES[:3]] + [_row(2, "3_Possible")]  # unknown type
    lines += [_row(3, t, difficulty="Hard" if t == "2_Possible" else "Easy") for t in TYPES]
    lines += [_row(4, t) for t in TYPES]  # its videos are deleted below
    lines += [_row(5, t, name=("a" * 63 + "0") if t == "1_Possible" else None) for t in TYPES]
    lines += [_row(6, t, name=("a" * 63 + "0") if t == "1_Possible" else None) for t in TYPES]
    lines += ["", "7,short,row"]  # a blank line (skipped), then a row too short
    root = _tree(tmp_path, lines)
    for t in TYPES:
        (root / "Main" / "Videos" / f"04{t.lower().replace('_', '')}".ljust(64, "0")
         ).with_suffix(".mp4").unlink()
    bench = load_benchmark(root)
    reasons = {p.scene: p.reason for p in bench.problems}
    assert bench.scenes == ["0", "5"]  # 6 reuses a video name of 5: reported, not merged
    assert set(reasons) == {"1", "2", "3", "4", "6", "7"}
    assert reasons["1"].startswith("5 rows") and "repeated 1_Possible x2" in reasons["1"]
    assert "missing 2_Impossible" in reasons["2"] and "unknown type '3_Possible'" in reasons["2"]
    assert reasons["3"] == "rows disagree on Difficulty Easy/Hard"
    assert reasons["4"].startswith("videos not on disk: ") and reasons["4"].count(".mp4") == 4
    assert "also in scene 5" in reasons["6"]
    assert "line 32 has the wrong number of fields" in reasons["7"]


def test_bad_header_and_missing_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    root = _tree(tmp_path / "a", [_row(0, t) for t in TYPES],
                 header=RELEASED_HEADER.replace("Difficulty", "difficulty"))
    with pytest.raises(IntPhysDataError, match=r"metadata.csv: the header lacks Difficulty"):
        load_benchmark(root)
    unlabelled = _tree(tmp_path / "b", ["0,abc,Videos/abc.mp4"], split="HeldOut",
                       header="SceneIndex,name,file_name")
    with pytest.raises(IntPhysDataError, match="leaderboard"):
        load_benchmark(unlabelled, "intphys2", "HeldOut")
    with pytest.raises(IntPhysDataError, match="--split picks one"):
        load_benchmark(root, "intphys2", "Debug")
    with pytest.raises(IntPhysDataError, match=r"looks like a split directory; pass --data"):
        load_benchmark(root / "Main")
    (root / "pairs.json").write_text("{}")
    with pytest.raises(IntPhysDataError, match="both pairs.json and Main/metadata.csv"):
        load_benchmark(root)
    with pytest.raises(IntPhysDataError, match="--format 'csv'"):
        load_benchmark(root, "csv")
    broken = _tree(tmp_path / "c", [_row(0, t) for t in TYPES[:2]])
    with pytest.raises(IntPhysDataError, match="no complete scene to score.*missing"):
        load_benchmark(broken)


def test_filters_select_scenes_case_insensitively(tmp_path: Path) -> None:
    lines = [_row(0, t, "solidity", "Easy", "Fixed") for t in TYPES]
    lines += [_row(1, t, "permanence", "Hard", "Moving") for t in TYPES]
    lines += [_row(2, t, "permanence", "Hard", "Fixed") for t in TYPES[:3]]  # incomplete
    lines += [_row(3, t, "continuity", "Easy", "Moving") for t in TYPES[:3]]  # incomplete
    root = _tree(tmp_path, lines)
    f = SceneFilter.parse(difficulty="hard", camera="moving,FIXED")
    assert f.Difficulty == ("Hard",) and f.Camera == ("Moving", "Fixed") and not f.condition
    bench = load_intphys2(root, "Main", f)
    assert bench.scenes == ["1"] and bench.filtered_out == 1
    assert [p.scene for p in bench.problems] == ["2"]  # scene 3 is Easy: outside the filter
    assert bench.filters == {"Difficulty": ["Hard"], "Camera": ["Moving", "Fixed"]}
    with pytest.raises(IntPhysDataError, match="--condition 'gravity': choose from solidity"):
        SceneFilter.parse(condition="gravity")
    with pytest.raises(IntPhysDataError, match="no complete scene"):
        load_intphys2(root, "Main", SceneFilter.parse(condition="immutability"))


# --- the fixture tree ------------------------------------------------------------------------

TREE = IntPhysSynthConfig(pairs=8, frames=16, height=32, width=32, seed=3)  # 4 scenes


@pytest.fixture(scope="session")
def tree_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("intphys2") / "IntPhys2"
    summary = generate_intphys2(root, TREE)
    assert summary.scenes == 4 and summary.pairs == 8
    return root


def test_fixture_tree_has_the_released_shape(tree_root: Path) -> None:
    from salt_vla.data.video import decode_frames

    text = (tree_root / "Main" / "metadata.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == RELEASED_HEADER and len(lines) == 1 + 4 * 4
    rows = [dict(zip(HEADER, line.split(","), strict=True)) for line in lines[1:]]
    for column, values in VALUES.items():
        assert {r[column] for r in rows} <= set(values), column
    assert {r["condition"] for r in rows} == set(VALUES["condition"])  # one scene per kind
    assert all(len(r["name"]) == 64 and r["file_name"] == f"Videos/{r['name']}.mp4"
               for r in rows)
    assert {r["occluder"] for r in rows} == {"None", "Wall"}
    orders = [tuple(r["type"] for r in rows[i:i + 4]) for i in range(0, 16, 4)]
    assert all(sorted(o) == sorted(TYPES) for o in orders) and set(orders) != {TYPES}
    assert json.loads((tree_root / "synth-intphys2.json").read_text())["complete"] is True
    bench = load_benchmark(tree_root)
    assert not bench.problems and len(bench.quadruplets) == 4
    # N_Possible and N_Impossible are one rendered pair: equal up to the event, then not.
    by_id = {v.id: v for v in bench.videos}
    for pair in bench.pairs:
        a = decode_frames(by_id[pair.possible].path, range(16), backend="pyav")
        b = decode_frames(by_id[pair.impossible].path, range(16), backend="pyav")
        assert np.array_equal(a[0], b[0]) and not np.array_equal(a[-1], b[-1]), pair.id
    assert intphys2_rows(TREE, 2) == rows[8:12]  # a pure function of (config, scene)


class _PersistenceModel:
    """Predicts that nothing changes: the error of step k is the larger mean absolute pixel
    change into its two frames, so any sudden change between two frames is surprising."""

    from salt_vla.models.grid import TokenGrid

    grid = TokenGrid(4, 2, 2)

    class student:  # noqa: N801 - mimics the attribute path score_videos reads
        class cfg:  # noqa: N801
            tubelet = 2

    def step_errors(self, frames, contexts):  # noqa: ANN001, ANN201
        import torch

        f = frames.double()
        d = (f[:, 1:] - f[:, :-1]).abs().mean(dim=(2, 3, 4))  # [B, T - 1]: into frame j + 1
        change = torch.maximum(d[:, 1::2], d[:, 2::2])  # [B, t - 1]: into steps 1..t-1
        return {c: change[:, c - 1:].numpy() for c in contexts}


def test_sudden_changes_win_pairwise_and_quadruplets_on_the_tree(tree_root: Path) -> None:
    from salt_vla.data.view import VIEW_PRESETS

    # Teleports and colour changes are sudden changes a persistence "model" sees; a small
    # ball vanishing changes fewer pixels than its motion does, so permanence is left out.
    bench = load_benchmark(tree_root, filters=SceneFilter.parse(
        condition="continuity,immutability"))
    assert len(bench.quadruplets) == 2
    videos = score_videos(_PersistenceModel(), bench, VIEW_PRESETS["tiny-8x64"],
                          SurpriseConfig(contexts=(1,)))
    surprise = {v["id"]: v["surprise"] for v in videos}
    pairs = [{"possible": p.possible, "impossible": p.impossible, "tags": p.tags}
             for p in bench.pairs]
    quads = [{"possible": q.possible, "impossible": q.impossible, "tags": q.tags}
             for q in bench.quadruplets]
    s = score_contexts(surprise, pairs, quads, [1], bench.groups)["1"]
    assert s["pairwise"]["max"]["accuracy"] == 1.0, s["pairwise"]
    assert s["quadruplet"]["max"]["accuracy"] == 1.0, s["quadruplet"]


# --- the CLI end to end ----------------------------------------------------------------------


def test_cli_synth_and_eval_intphys2_end_to_end(tmp_path: Path) -> None:
    from test_eval_intphys import make_run

    runner = CliRunner()
    data = tmp_path / "IntPhys2"
    res = runner.invoke(app, ["data", "synth", str(data), "--intphys", "--layout", "intphys2",
                              "--videos", "16", "--frames", "16", "--size", "32x32",
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "in 4 scenes" in res.output and (data / "Main" / "metadata.csv").is_file()
    run = tmp_path / "run"
    run.mkdir()
    make_run(run, tmp_path / "cache")
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--format", "intphys2", "--split", "Main", "--difficulty",
                              "easy,hard", "--context", "1,3", "--report-context", "3",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "reported context: C=3 (--report-context" in res.output
    assert "quadruplet accuracy, % of 3 scenes" in res.output
    result = json.loads((run / "intphys.json").read_text())
    d = result["data"]
    assert (d["format"], d["split"], d["scenes"], d["videos"]) == ("intphys2", "Main", 3, 12)
    assert d["filters"] == {"Difficulty": ["Easy", "Hard"]} and d["filtered_out"] == 1
    assert d["groups"] == ["condition", "Difficulty", "Camera"] and d["not_scored"] == []
    s = result["scores"]["3"]
    assert s["pairwise"]["mean"]["pairs"] == 6 and s["quadruplet"]["max"]["quadruplets"] == 3
    assert set(s["by"]["Difficulty"]) == {"Easy", "Hard"}
    assert set(s["by"]) == {"condition", "Difficulty", "Camera"}
    assert score_record(result) == result["scores"]
    assert "optimistic" in result["best_context_optimistic"]["note"]
    assert all(len(v["surprise"]["3"]["errors"][0]) == 1 for v in result["videos"])  # t - C

    # A scene that lost a row is reported by the CLI (count + which), the rest still scored.
    meta = data / "Main" / "metadata.csv"
    lines = meta.read_text().splitlines()
    dropped = next(i for i, line in enumerate(lines) if line.startswith("1,"))
    meta.write_text("\n".join(lines[:dropped] + lines[dropped + 1:]) + "\n")
    res = runner.invoke(app, ["eval", "intphys", "--run", str(run), "--data", str(data),
                              "--context", "1", "--limit", "1", "--out",
                              str(tmp_path / "partial.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "NOT SCORED: 1 scene(s)" in res.output and "scene 1: 3 rows" in res.output
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert [p["scene"] for p in partial["data"]["not_scored"]] == ["1"]
    assert partial["data"]["scenes"] == 1  # --limit 1

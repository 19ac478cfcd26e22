"""Synthetic SSv2-style datasets: layout, determinism, balance, and that only motion tells classes.

Tiny on purpose: a dozen 8-frame 32x32 videos. Frames are decoded with PyAV (never decord here:
see the brief's measured pitfall).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.data.synth import (
    ACTIONS,
    TEMPLATES,
    SynthConfig,
    SynthError,
    _draw,
    _random_look,
    _scene,
    class_name,
    fill_template,
    generate_dataset,
    parse_size,
    parse_splits,
    plan_dataset,
    render_video,
    split_counts,
)
from salt_vla.data.video import decode_frames, probe_video

TINY = SynthConfig(
    videos=12, classes=4, frames=8, height=32, width=32, seed=3, splits=(0.5, 0.25, 0.25)
)


def _decode_all(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((root / "videos").glob("*.webm")):
        n = probe_video(path, backend="pyav").num_frames
        out[path.stem] = decode_frames(path, range(n), backend="pyav")
    return out


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    generate_dataset(root, TINY, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_frames(tiny_root: Path) -> dict[str, np.ndarray]:
    return _decode_all(tiny_root)


def test_layout_follows_ssv2_schema(tiny_root: Path, tiny_frames: dict[str, np.ndarray]) -> None:
    labels = json.loads((tiny_root / "labels.json").read_text())
    assert labels == {class_name(t): str(i) for i, t in enumerate(TEMPLATES[: TINY.classes])}
    ids: list[str] = []
    seen_classes = Counter()
    for split in ("train", "validation"):
        entries = json.loads((tiny_root / f"{split}.json").read_text())
        assert entries, f"{split}.json is empty"
        for e in entries:
            assert set(e) == {"id", "label", "template", "placeholders"}, e
            assert e["id"].isdigit(), f"id {e['id']!r} is not numeric like SSv2's"
            # the dataset's own tooling: class = template without brackets, via labels.json
            key = e["template"].replace("[", "").replace("]", "")
            assert key in labels, f"{split} id {e['id']}: {key!r} not in labels.json"
            seen_classes[int(labels[key])] += 1
            holes = re.findall(r"\[[Ss]omething\]", e["template"])
            assert len(holes) == len(e["placeholders"]), e
            assert e["label"] == fill_template(e["template"], e["placeholders"])
            assert "[" not in e["label"] and e["label"][0].isupper(), e["label"]
            ids.append(e["id"])
    test = json.loads((tiny_root / "test.json").read_text())
    assert all(set(e) == {"id"} for e in test), "test.json must hold ids only"
    ids += [e["id"] for e in test]
    lines = (tiny_root / "test-answers.csv").read_text().splitlines()
    answers = [line.split(";") for line in lines]
    assert [a[0] for a in answers] == [e["id"] for e in test]
    assert all(a[1] in labels for a in answers)

    assert sorted(ids, key=int) == [str(i) for i in range(1, TINY.videos + 1)], "ids not 1..N"
    assert sorted(tiny_frames) == sorted(ids), "videos/<id>.webm must exist for every entry"
    assert set(seen_classes) == set(range(TINY.classes))
    for vid, frames in tiny_frames.items():
        assert frames.shape == (TINY.frames, TINY.height, TINY.width, 3), vid
    info = probe_video(tiny_root / "videos" / "1.webm", backend="pyav")
    assert info.fps == pytest.approx(TINY.fps)

    manifest = json.loads((tiny_root / "synth.json").read_text())
    assert manifest["complete"] is True
    assert SynthConfig.from_dict(manifest["config"]) == TINY


def test_same_seed_gives_identical_decoded_frames_with_any_worker_count(
    tmp_path: Path, tiny_root: Path, tiny_frames: dict[str, np.ndarray]
) -> None:
    again = tmp_path / "b"
    generate_dataset(again, TINY, workers=2)  # other process layout, other order
    frames = _decode_all(again)
    assert sorted(frames) == sorted(tiny_frames)
    for vid in frames:
        assert np.array_equal(frames[vid], tiny_frames[vid]), f"video {vid} differs between runs"
    for name in ("train.json", "validation.json", "test.json", "labels.json"):
        assert (again / name).read_text() == (tiny_root / name).read_text(), name


def test_different_seed_gives_different_videos(
    tmp_path: Path, tiny_frames: dict[str, np.ndarray]
) -> None:
    other = SynthConfig.from_dict({**TINY.to_dict(), "seed": TINY.seed + 1, "videos": 2})
    generate_dataset(tmp_path / "c", other, workers=1)
    frames = _decode_all(tmp_path / "c")
    assert not np.array_equal(frames["1"], tiny_frames["1"])


@pytest.mark.parametrize("videos,classes", [(24, 4), (200, 8), (30, 6), (14, 14)])
def test_classes_are_exactly_balanced_per_split(videos: int, classes: int) -> None:
    cfg = SynthConfig(videos=videos, classes=classes, splits=(0.5, 0.25, 0.25))
    plan = plan_dataset(cfg)
    assert len(plan) == videos and len({p.id for p in plan}) == videos
    for split in ("train", "validation", "test"):
        counts = Counter(p.class_index for p in plan if p.split == split)
        per_class = [counts.get(c, 0) for c in range(classes)]
        assert len(set(per_class)) == 1, f"{split}: per-class counts {per_class}"


def test_uneven_counts_stay_within_one() -> None:
    plan = plan_dataset(SynthConfig(videos=200, classes=6))
    totals = Counter(p.class_index for p in plan)
    assert sum(totals.values()) == 200 and max(totals.values()) - min(totals.values()) == 1
    assert split_counts(25, (0.7, 0.15, 0.15)) == [17, 4, 4]


def test_written_dataset_is_balanced(tiny_root: Path) -> None:
    labels = json.loads((tiny_root / "labels.json").read_text())
    per_split = {}
    for split in ("train", "validation"):
        entries = json.loads((tiny_root / f"{split}.json").read_text())
        per_split[split] = Counter(labels[class_name(e["template"])] for e in entries)
    per_split["test"] = Counter(
        labels[line.split(";")[1]]
        for line in (tiny_root / "test-answers.csv").read_text().splitlines()
    )
    for split, counts in per_split.items():
        assert len(counts) == TINY.classes and len(set(counts.values())) == 1, (split, counts)


CLEAN = SynthConfig(
    videos=1, classes=len(ACTIONS), frames=8, height=48, width=48, noise=0, jitter=0, flicker=0
)


@pytest.mark.parametrize("pair", range(len(ACTIONS) // 2))
def test_paired_classes_are_exact_time_reversals(pair: int) -> None:
    # The same frames in reverse order: no single frame (nor any set of frames) can tell the two
    # classes of a pair apart, only their order can. And the order must matter.
    a, b = 2 * pair, 2 * pair + 1
    assert ACTIONS[a].motion == ACTIONS[b].motion and ACTIONS[a].reverse != ACTIONS[b].reverse
    for index in range(3):
        fa, names_a = render_video(CLEAN, index, a)
        fb, names_b = render_video(CLEAN, index, b)
        assert names_a == names_b
        assert np.array_equal(fb, fa[::-1]), f"{TEMPLATES[b]} is not {TEMPLATES[a]} reversed"
        change = np.abs(fa.astype(np.int16) - fa[::-1]).mean()
        assert change > 0.5, f"{TEMPLATES[a]} video {index} barely changes over time ({change})"


def _main(cfg: SynthConfig, index: int, class_index: int) -> list:
    scene = _scene(cfg, index, class_index)
    return scene.sprites[len(scene.sprites) - scene.num_main :]


@pytest.mark.parametrize("class_index", range(len(ACTIONS)))
def test_templates_describe_the_motion(class_index: int) -> None:
    template = TEMPLATES[class_index]
    for index in range(4):
        sprites = _main(CLEAN, index, class_index)
        s = sprites[0]
        first, last = 0, CLEAN.frames - 1
        if "left to right" in template:
            assert s.cx[last] > s.cx[first]
        elif "right to left" in template:
            assert s.cx[last] < s.cx[first]
        elif template.endswith(" up"):
            assert s.cy[last] < s.cy[first]  # image y grows downwards
        elif template.endswith(" down"):
            assert s.cy[last] > s.cy[first]
        elif "towards the camera" in template:
            assert s.r[last] > 1.5 * s.r[first]
        elif "away from the camera" in template:
            assert s.r[first] > 1.5 * s.r[last]
        elif template.endswith("counterclockwise"):
            assert s.theta[last] < s.theta[first] - 1.5
        elif template.endswith("clockwise"):
            assert s.theta[last] > s.theta[first] + 1.5
        elif template.endswith("disappearing"):
            assert s.alpha[first] == 1 and s.alpha[last] == 0
        elif template.endswith("appearing"):
            assert s.alpha[first] == 0 and s.alpha[last] == 1
        elif "closer to each other" in template or "away from each other" in template:
            d = np.hypot(sprites[0].cy - sprites[1].cy, sprites[0].cx - sprites[1].cx)
            closer = d[last] < d[first] - 0.1 * CLEAN.width
            apart = d[last] > d[first] + 0.1 * CLEAN.width
            assert closer if "closer" in template else apart
        elif "until it stops" in template or "from rest" in template:
            step = np.hypot(np.diff(s.cy), np.diff(s.cx))
            stopping = step[0] > 0 and step[-1] == 0
            starting = step[0] == 0 and step[-1] > 0
            assert stopping if "until it stops" in template else starting
        else:
            pytest.fail(f"no check for template {template!r}")


def test_background_contrast_flattens_only_the_scenery() -> None:
    flat = replace(CLEAN, background=0.0, distractors=(0, 0))
    full = replace(CLEAN, distractors=(0, 0))
    f0, names0 = render_video(flat, 0, 0)
    f1, names1 = render_video(full, 0, 0)
    # Same objects on the same paths (the contrast is applied after every random draw) ...
    assert names0 == names1
    assert _main(flat, 0, 0)[0].cx.tolist() == _main(full, 0, 0)[0].cx.tolist()
    # ... over a background that is one colour: the corner pixels the object never reaches
    # are constant over space and time with background=0, textured with 1.
    moving = np.abs(np.diff(f1.astype(np.int16), axis=0)).max(axis=(0, 3)) > 0
    still = ~moving
    assert still.sum() > 100, "the object covers the whole frame: nothing to compare"
    assert f0[:, still].std(axis=(0, 1)).max() < 1.0, "background=0 is not flat"
    assert f1[:, still].std(axis=(0, 1)).max() > 3.0, "background=1 lost its texture"
    with pytest.raises(SynthError, match="background=1.5"):
        replace(CLEAN, background=1.5)


def test_increasing_angle_turns_clockwise_on_screen() -> None:
    look = _random_look(np.random.default_rng(0))
    look.shape = "bar"
    canvas = np.zeros((64, 64, 3), np.float32)
    look.c1[:] = 1.0
    look.c2[:] = 1.0
    _draw(canvas, look, 32.0, 32.0, 24.0, 0.4, 1.0)
    ys, xs = np.nonzero(canvas[..., 0] > 0.5)
    # screen y points down: a bar turned clockwise from horizontal goes down to the right
    assert np.cov(xs, ys)[0, 1] > 0


def test_bad_configs_name_the_fix() -> None:
    with pytest.raises(SynthError, match=rf"classes=15: choose 1..{len(ACTIONS)}"):
        SynthConfig(classes=15)
    with pytest.raises(SynthError, match="even"):
        SynthConfig(height=33)
    with pytest.raises(SynthError, match="frames=1"):
        SynthConfig(frames=1)
    with pytest.raises(SynthError, match="HEIGHTxWIDTH"):
        parse_size("96by96")
    with pytest.raises(SynthError, match="three"):
        parse_splits("0.8/0.2")
    assert parse_size("64x96") == (64, 96) and parse_size("64") == (64, 64)
    assert parse_splits("70,15,15") == (70.0, 15.0, 15.0)


SMALL = SynthConfig(videos=3, classes=2, frames=2, height=16, width=16)


def test_refuses_foreign_directory_and_never_deletes_user_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SynthError, match=re.escape(str(out))):
        generate_dataset(out, SMALL, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    generate_dataset(out, SMALL, workers=1, force=True)
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "videos" / "3.webm").is_file()

    # a previous synth output is regenerated in place; its stale videos go, user files stay
    (out / "videos" / "user.webm").write_bytes(b"not ours")
    fewer = SynthConfig.from_dict({**SMALL.to_dict(), "videos": 2})
    generate_dataset(out, fewer, workers=1)
    assert not (out / "videos" / "3.webm").exists()
    assert (out / "videos" / "user.webm").read_bytes() == b"not ours"
    assert (out / "notes.txt").read_text() == "keep me"
    n = sum(len(json.loads((out / f"{s}.json").read_text())) for s in ("train", "validation"))
    n += len(json.loads((out / "test.json").read_text()))
    assert n == 2


def test_cli_synth(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["data", "synth", str(out), "--videos", "8", "--classes", "2", "--frames", "4"]
    args += ["--size", "32x32", "--seed", "1", "--workers", "1", "--splits", "2/1/1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert "train 4, validation 2, test 2" in result.output
    cfg = json.loads((out / "synth.json").read_text())["config"]
    assert (cfg["seed"], cfg["height"], cfg["width"], cfg["splits"]) == (1, 32, 32, [2, 1, 1])

    plain = runner.invoke(app, ["data", "synth", str(tmp_path / "plain"), "--videos", "2",
                                "--classes", "2", "--frames", "2", "--size", "16",
                                "--splits", "1/0/0",
                                "--workers", "1", "--background", "0.25", "--distractors", "0-1"])
    assert plain.exit_code == 0, plain.output
    cfg = json.loads((tmp_path / "plain" / "synth.json").read_text())["config"]
    assert (cfg["background"], cfg["distractors"]) == (0.25, [0, 1])
    bad_range = runner.invoke(app, ["data", "synth", str(tmp_path / "y"), "--distractors", "a"])
    assert bad_range.exit_code == 1 and "--distractors 'a'" in bad_range.output

    bad = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--classes", "99"])
    assert bad.exit_code == 1 and "classes=99" in bad.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "a.txt").write_text("x")
    busy = runner.invoke(app, ["data", "synth", str(tmp_path / "busy"), "--videos", "2",
                               "--splits", "1/0/0"])
    assert busy.exit_code == 1 and "--force" in busy.output
    assert "force=True" not in busy.output  # names the option, not a Python argument
    # A size that leaves a weighted split empty is refused before anything is written,
    # naming the size that fills every split.
    few = runner.invoke(app, ["data", "synth", str(tmp_path / "few"), "--videos", "5"])
    assert few.exit_code == 1, few.output
    assert "leaves validation and test empty" in few.output and "--videos 25" in few.output
    assert not (tmp_path / "few").exists()


# --- lighting / colour nuisance (issue 13, (a)) ---------------------------------------------

LIT = replace(CLEAN, lighting=0.3, colour_jitter=0.15)


@pytest.mark.parametrize("pair", range(2))
def test_lighting_is_the_same_per_frame_nuisance_for_both_classes_of_a_pair(pair: int) -> None:
    """A clip of the reversed class is its partner's scene reversed under the SAME per-frame
    gains: the nuisance depends on (seed, video, frame), never on the class or the scene."""
    from salt_vla.data.synth import light_fields

    a, b = 2 * pair, 2 * pair + 1
    for index in range(2):
        gains = light_fields(LIT, index)
        assert gains is not None and gains.shape == (LIT.frames, LIT.height, LIT.width, 3)
        clean_a, _ = render_video(CLEAN, index, a)
        lit_b, _ = render_video(LIT, index, b)
        # b's scene is a's reversed; each frame i gets gains[i] (before uint8 rounding)
        want = np.clip(clean_a[::-1].astype(np.float32) * gains, 0, 255)
        assert np.abs(lit_b.astype(np.float32) - want).max() <= 1.5
        lit_a, _ = render_video(LIT, index, a)
        assert np.abs(lit_a.astype(np.float32) - np.clip(clean_a * gains, 0, 255)).max() <= 1.5
        assert np.array_equal(light_fields(LIT, index), gains)  # deterministic per seed
    assert not np.array_equal(light_fields(LIT, 0), light_fields(replace(LIT, seed=4), 0))


def test_lighting_is_stationary_and_off_by_default() -> None:
    """Every frame's gains come from one law: no time step is brighter, darker or noisier
    on average (so no ramp tells the direction of time), and the frames are independent."""
    from salt_vla.data.synth import light_fields

    cfg = replace(LIT, frames=8, height=16, width=16)
    g = np.stack([light_fields(cfg, i) for i in range(400)])  # [videos, T, H, W, 3]
    per_frame_mean = g.mean(axis=(0, 2, 3, 4))
    per_frame_spread = g.std(axis=(2, 3, 4)).mean(axis=0)
    assert np.ptp(per_frame_mean) < 0.02 and np.ptp(per_frame_spread) < 0.02
    lag1 = np.corrcoef(g[:, :-1].mean(axis=(2, 3, 4)).ravel(),
                       g[:, 1:].mean(axis=(2, 3, 4)).ravel())[0, 1]
    assert abs(lag1) < 0.1, f"consecutive frames' gains correlate ({lag1:.2f})"
    assert light_fields(CLEAN, 0) is None
    assert "lighting" not in CLEAN.to_dict() and LIT.to_dict()["lighting"] == 0.3
    assert SynthConfig.from_dict(LIT.to_dict()) == LIT
    with pytest.raises(SynthError, match="lighting"):
        replace(CLEAN, lighting=0.9)

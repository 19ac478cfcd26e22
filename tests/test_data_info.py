"""`salt data info` and its library: counts, missing videos, the corrupt-file scan, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ssv2_download_copy
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.data.info import format_summary, parse_scan, summarize_dataset, write_missing
from salt_vla.data.ssv2 import SSv2Error

CLASSES = ["Pushing something from left to right", "Pushing something from right to left"]
# id -> (split, class or None, where the file is, what the file is)
VIDEOS = {
    "11": ("train", 0, "videos", "good"),
    "12": ("train", 1, "root", "good"),
    "13": ("train", 0, "videos", "truncated"),
    "21": ("validation", 1, "videos", "good"),
    "22": ("validation", 1, "videos", "text"),
    "31": ("test", None, "videos", "good"),
    "32": ("test", None, "root", "empty"),
}
FRAMES, SIZE, FPS = 4, 16, 12


@pytest.fixture(scope="session")
def info_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SSv2-layout dataset: 4 good 4-frame 16x16 clips and 3 corrupt files."""
    import numpy as np

    from salt_vla.data.video import write_webm

    root = tmp_path_factory.mktemp("info_data")
    (root / "videos").mkdir()
    (root / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(CLASSES)}))
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for vid, (split, label, where, kind) in VIDEOS.items():
        path = (root / "videos" if where == "videos" else root) / f"{vid}.webm"
        if kind == "good":
            write_webm(path, good, fps=FPS)
        elif kind == "truncated":
            write_webm(path, good, fps=FPS)
            path.write_bytes(path.read_bytes()[:200])
        elif kind == "text":
            path.write_text("this is not a video\n")
        else:
            path.write_bytes(b"")
        if label is None:
            splits[split].append({"id": vid})
        else:
            template = CLASSES[label].replace("something", "[something]")
            splits[split].append(
                {
                    "id": vid,
                    "label": template.replace("[something]", "a box"),
                    "template": template,
                    "placeholders": ["a box"],
                }
            )
    for split, entries in splits.items():
        (root / f"{split}.json").write_text(json.dumps(entries, indent=1))
    return root


@pytest.fixture
def copy_root(info_root: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset for tests that damage it."""
    return Path(shutil.copytree(info_root, tmp_path / "data"))


def test_counts_per_split_and_class(info_root: Path):
    s = summarize_dataset(info_root, scan=0)
    assert s.classes == CLASSES
    got = {x.split: (x.videos, x.in_subdir, x.class_counts, x.missing) for x in s.splits}
    assert got == {
        "train": (3, 2, [2, 1], []),
        "validation": (2, 2, [0, 2], []),
        "test": (2, 1, None, []),
    }
    assert s.absent == [] and s.scan.checks == [] and s.scan.population == 7


def test_scan_all_lists_corrupt_files_with_reasons(info_root: Path):
    s = summarize_dataset(info_root, scan=None, backend="pyav")
    corrupt = {c.id: (c.split, c.reason) for c in s.scan.corrupt}
    assert set(corrupt) == {"13", "22", "32"}, corrupt
    assert corrupt["13"][0] == "train" and "truncated" in corrupt["13"][1]
    assert corrupt["32"][0] == "test" and "empty" in corrupt["32"][1]
    assert corrupt["22"][0] == "validation" and corrupt["22"][1], "no reason for the text file"
    good = s.scan.good
    assert sorted(c.id for c in good) == ["11", "12", "21", "31"]
    for c in good:
        assert (c.num_frames, c.fps, c.height, c.width) == (FRAMES, FPS, SIZE, SIZE), c
        assert c.decoded_shape == (3, SIZE, SIZE, 3), c  # first, middle, last frame


def test_scan_sample_is_seeded(info_root: Path):
    def picked(seed: int) -> list[str]:
        return [c.id for c in summarize_dataset(info_root, scan=3, seed=seed).scan.checks]

    first = picked(1)
    assert len(first) == 3 and len(set(first)) == 3
    assert picked(1) == first
    assert any(picked(seed) != first for seed in range(2, 6)), "the seed changes nothing"


def test_scan_in_worker_processes_matches_in_process(info_root: Path):
    one = summarize_dataset(info_root, scan=None, backend="pyav", workers=1).scan.checks
    two = summarize_dataset(info_root, scan=None, backend="pyav", workers=2).scan.checks
    assert two == one


def test_parse_scan():
    assert parse_scan("8") == 8 and parse_scan("0") == 0
    assert parse_scan("all") is None and parse_scan("ALL") is None and parse_scan("-1") is None
    for bad in ("-3", "x", "1.5"):
        with pytest.raises(ValueError, match="--scan takes a number"):
            parse_scan(bad)


def test_selected_splits_and_absent_files(copy_root: Path):
    (copy_root / "test.json").unlink()
    s = summarize_dataset(copy_root, scan=0)
    assert [x.split for x in s.splits] == ["train", "validation"] and s.absent == ["test"]
    s = summarize_dataset(copy_root, splits=["validation"], scan=0)
    assert [x.split for x in s.splits] == ["validation"] and s.absent == ["test"]
    with pytest.raises(SSv2Error, match="test split file not found"):
        summarize_dataset(copy_root, splits=["test"], scan=0)


def test_no_split_files_is_an_error(copy_root: Path):
    for split in ("train", "validation", "test"):
        (copy_root / f"{split}.json").unlink()
    with pytest.raises(SSv2Error, match="none of the split files"):
        summarize_dataset(copy_root, scan=0)


def test_missing_videos_fail_unless_allowed(copy_root: Path, tmp_path: Path):
    (copy_root / "videos" / "11.webm").unlink()
    (copy_root / "videos" / "31.webm").unlink()
    with pytest.raises(SSv2Error, match="--allow-missing"):
        summarize_dataset(copy_root, scan=0)
    s = summarize_dataset(copy_root, allow_missing=True, scan=None, backend="pyav")
    assert s.missing == {"train": ["11"], "validation": [], "test": ["31"]}
    assert "11" not in {c.id for c in s.scan.checks}, "a missing video was decode-checked"
    out = tmp_path / "missing.txt"
    assert write_missing(out, s) == 2
    assert out.read_text() == "11\n31\n"


def test_format_summary_mentions_everything(info_root: Path):
    lines = format_summary(summarize_dataset(info_root, scan=None, backend="pyav"))
    text = "\n".join(lines)
    assert f"labels: {info_root / 'labels.json'}  (2 classes)" in text
    assert "train: " in text and "3 videos (1 in the root, 2 in videos/), labeled" in text
    assert "test: " in text and "unlabeled" in text
    assert "      0       2           0  Pushing something from left to right" in lines
    assert "decode check: all 7 videos, backend pyav: 4 ok, 3 corrupt" in text
    assert f"{FRAMES} frames at {FPS} fps, {SIZE}x{SIZE}" in text
    assert f"uint8 [3, {SIZE}, {SIZE}, 3]" in text
    assert "corrupt train/13:" in text and "corrupt test/32:" in text


# --- CLI ------------------------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["data", "info", *args], env=env)


def test_cli_reports_resolved_root_counts_and_corrupt(info_root: Path):
    res = invoke(str(info_root), "--scan", "all", "--backend", "pyav")
    assert res.exit_code == 0, res.output
    assert f"data: {info_root}  (from ROOT argument)" in res.output
    assert "validation: " in res.output and "2 videos" in res.output
    assert "4 ok, 3 corrupt" in res.output and "corrupt validation/22" in res.output


def test_cli_data_option_and_env(info_root: Path):
    res = invoke("--data", str(info_root), "--scan", "0", "--no-classes")
    assert res.exit_code == 0, res.output
    assert f"data: {info_root}  (from --data)" in res.output
    assert "videos per class" not in res.output
    res = invoke("--scan", "0", env={"SALT_DATA": str(info_root)})
    assert res.exit_code == 0, res.output
    assert f"data: {info_root}  (from $SALT_DATA)" in res.output


@pytest.mark.parametrize(("naming", "layout", "labels_at"), [
    ("labels", "SSv2 download, labels/", "labels/labels.json"),
    ("prefixed", "SSv2 download, something-something-v2-*.json",
     "something-something-v2-labels.json"),
])
def test_cli_reads_the_download_layouts_as_unpacked(info_root: Path, tmp_path: Path,
                                                     naming: str, layout: str, labels_at: str):
    dl = ssv2_download_copy(info_root, tmp_path / "ssv2", naming)
    res = invoke(str(dl), "--scan", "all", "--backend", "pyav")
    assert res.exit_code == 0, res.output
    assert f"layout: {layout}" in res.output, res.output
    assert f"labels: {dl / labels_at}  (2 classes)" in res.output, res.output
    assert "3 videos (3 in 20bn-something-something-v2/), labeled" in res.output, res.output
    assert "4 ok, 3 corrupt" in res.output and "corrupt validation/22" in res.output
    assert str(dl / "20bn-something-something-v2" / "22.webm") in res.output


def test_cli_missing_videos_and_exclusion_list(copy_root: Path, tmp_path: Path):
    (copy_root / "12.webm").unlink()
    res = invoke(str(copy_root), "--scan", "0")
    assert res.exit_code == 1
    assert "1 of 3 videos listed in" in res.output and "--allow-missing" in res.output
    out = tmp_path / "excluded.txt"
    res = invoke(str(copy_root), "--scan", "0", "--allow-missing", "--missing-out", str(out))
    assert res.exit_code == 0, res.output
    assert "1 missing (excluded)" in res.output and f"1 written to {out}" in res.output
    assert out.read_text() == "12\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "labels file not found"),
        (["{root}", "--data", "{missing}"], "two data roots given"),
        (["{root}", "--scan", "some"], "--scan takes a number"),
        (["{root}", "--missing-out", "x.txt"], "--missing-out needs --allow-missing"),
        (["{root}", "--split", "val"], "unknown split 'val'"),
        (["{root}", "--backend", "ffmpeg"], "--backend must be"),
    ],
)
def test_cli_errors_exit_nonzero(info_root: Path, tmp_path: Path, args: list[str], message: str):
    filled = [a.format(root=info_root, missing=tmp_path / "nowhere") for a in args]
    res = invoke(*filled)
    assert res.exit_code == 1, res.output
    assert f"error: {message}" in res.output, res.output

"""SSv2 index: hand-written fixtures in the dataset's real schema, the flat layout and both
download layouts (label files in labels/ or named something-something-v2-*.json, videos in
20bn-something-something-v2/), ambiguous roots, every bad-input case and its named error, and
--allow-missing."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ssv2_download_copy

from salt_vla.data.ssv2 import (
    SSv2Entry,
    SSv2Error,
    SSv2MissingVideosWarning,
    find_layout,
    load_labels,
    load_split,
    template_class,
)

# Written exactly as the dataset ships them: indented JSON, indices as strings, templates with
# [something] placeholders in the split files but not in labels.json.
LABELS = """{
 "Approaching something with your camera": "0",
 "Putting something on a surface": "1",
 "Pushing something from left to right": "2",
 "Holding something next to something": "3"
}"""

TRAIN = """[
 {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
  "template": "Holding [something] next to [something]",
  "placeholders": ["potato", "vicks vaporub bottle"]},
 {"id": "42326", "label": "putting a white remote onto a surface",
  "template": "Putting [something] on a surface", "placeholders": ["a white remote"]},
 {"id": "100904", "label": "pushing green bottle from left to right",
  "template": "Pushing [something] from left to right", "placeholders": ["green bottle"]},
 {"id": "80715", "label": "putting a pen on a surface",
  "template": "Putting [something] on a surface", "placeholders": ["a pen"]}
]"""

VALIDATION = """[
 {"id": "74225", "label": "approaching a cup with your camera",
  "template": "Approaching [something] with your camera", "placeholders": ["a cup"]},
 {"id": "116154", "label": "holding a book next to a mug",
  "template": "Holding [something] next to [something]", "placeholders": ["a book", "a mug"]}
]"""

TEST = """[
 {"id": "1420"},
 {"id": "94250"}
]"""

TRAIN_IDS = ["78687", "42326", "100904", "80715"]
ALL_IDS = TRAIN_IDS + ["74225", "116154", "1420", "94250"]


def make_root(root: Path, layout: str = "videos", skip: tuple[str, ...] = ()) -> Path:
    """Write the fixture dataset; ``layout`` "videos" (ROOT/videos/), "root" or "mixed"."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(LABELS)
    (root / "train.json").write_text(TRAIN)
    (root / "validation.json").write_text(VALIDATION)
    (root / "test.json").write_text(TEST)
    (root / "videos").mkdir(exist_ok=True)
    for i, vid in enumerate(ALL_IDS):
        if vid in skip:
            continue
        in_root = layout == "root" or (layout == "mixed" and i % 2 == 0)
        # the index only checks that the files exist; decoding is salt data info's job
        (root / f"{vid}.webm" if in_root else root / "videos" / f"{vid}.webm").write_bytes(b"")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "ssv2")


def test_template_class_strips_brackets():
    assert template_class("Putting [something] on a surface") == "Putting something on a surface"
    assert (
        template_class("Holding [something] next to [something]")
        == "Holding something next to something"
    )


def test_load_labels_parses_string_indices(root: Path):
    labels = load_labels(root)
    assert labels == {
        "Approaching something with your camera": 0,
        "Putting something on a surface": 1,
        "Pushing something from left to right": 2,
        "Holding something next to something": 3,
    }


def test_train_entries_in_file_order_with_class_from_template(root: Path):
    index = load_split(root, "train")
    assert index.split == "train" and index.root == root
    assert [e.id for e in index.entries] == TRAIN_IDS
    first = index.entries[0]
    assert first == SSv2Entry(
        id="78687",
        label=3,
        template="Holding [something] next to [something]",
        placeholders=("potato", "vicks vaporub bottle"),
        caption="holding potato next to vicks vaporub bottle",
    )
    assert [e.label for e in index.entries] == [3, 1, 2, 1]
    assert index.classes == [
        "Approaching something with your camera",
        "Putting something on a surface",
        "Pushing something from left to right",
        "Holding something next to something",
    ]
    assert index.labels.tolist() == [3, 1, 2, 1] and index.labels.dtype == np.int64
    assert index.class_counts().tolist() == [0, 2, 1, 1]
    assert index.labeled and index.missing == [] and len(index) == 4


def test_validation_split(root: Path):
    index = load_split(root, "validation")
    assert [(e.id, e.label, e.placeholders) for e in index] == [
        ("74225", 0, ("a cup",)),
        ("116154", 3, ("a book", "a mug")),
    ]


def test_test_split_has_ids_only(root: Path):
    index = load_split(root, "test")
    assert index.entries == [SSv2Entry("1420", None, None, ()), SSv2Entry("94250", None, None, ())]
    assert not index.labeled
    assert index.labels.tolist() == [-1, -1]
    assert index.class_counts().tolist() == [0, 0, 0, 0]
    assert len(index.classes) == 4


@pytest.mark.parametrize("layout", ["videos", "root", "mixed"])
def test_both_video_layouts(tmp_path: Path, layout: str):
    root = make_root(tmp_path / layout, layout)
    index = load_split(root, "train")
    for i, vid in enumerate(ALL_IDS[:4]):
        in_root = layout == "root" or (layout == "mixed" and i % 2 == 0)
        expected = root / f"{vid}.webm" if in_root else root / "videos" / f"{vid}.webm"
        assert index.video_path(vid) == expected, f"{layout}: wrong path for {vid}"
        assert index.video_path(vid).exists()
    assert index.num_in_subdir == {"videos": 4, "root": 0, "mixed": 2}[layout]


# --- SSv2's download layouts, read as they unpack ---------------------------------------------


@pytest.mark.parametrize(("naming", "labels_at", "name"), [
    ("labels", "labels/labels.json", "SSv2 download, labels/"),
    ("prefixed", "something-something-v2-labels.json",
     "SSv2 download, something-something-v2-*.json"),
])
def test_download_layouts_read_as_unpacked(tmp_path: Path, naming: str, labels_at: str,
                                           name: str):
    dl = ssv2_download_copy(make_root(tmp_path / "flat"), tmp_path / "dl", naming)
    layout = find_layout(dl)
    assert layout.name == name and layout.labels_path == dl / labels_at
    flat = load_split(tmp_path / "flat", "train")
    index = load_split(dl, "train")
    assert index.entries == flat.entries and index.classes == flat.classes
    assert index.labels_path == dl / labels_at
    assert index.path == layout.split_path("train") and index.path.is_file()
    for vid in TRAIN_IDS:
        assert index.video_path(vid) == dl / "20bn-something-something-v2" / f"{vid}.webm"
    assert index.videos_by_dir() == {"20bn-something-something-v2": 4}
    line = index.describe()
    assert name in line and str(index.path) in line, line
    assert f"4 in {dl / '20bn-something-something-v2'}" in line, line
    assert load_split(dl, "test").ids == ["1420", "94250"]
    assert load_labels(dl) == load_labels(tmp_path / "flat")


def test_flat_layout_is_named_flat(root: Path):
    assert find_layout(root).name == "flat"
    assert load_split(root, "train").videos_by_dir() == {"videos": 4}


def test_download_missing_video_names_the_download_folder(tmp_path: Path):
    dl = ssv2_download_copy(make_root(tmp_path / "flat", skip=("42326",)), tmp_path / "dl")
    with pytest.raises(SSv2Error) as err:
        load_split(dl, "train")
    assert f"{dl / '20bn-something-something-v2'}/<id>.webm" in str(err.value)


def test_two_different_layouts_are_refused_naming_both(tmp_path: Path):
    dl = ssv2_download_copy(make_root(tmp_path / "flat"), tmp_path / "dl")
    (dl / "labels.json").write_text('{"Something else": "0"}')  # a stray flat labels.json
    with pytest.raises(SSv2Error) as err:
        load_split(dl, "train")
    msg = str(err.value)
    assert str(dl / "labels.json") in msg and str(dl / "labels" / "labels.json") in msg, msg
    assert "Remove (or rename) one" in msg, msg


def test_identical_copies_of_the_label_files_use_the_flat_ones(tmp_path: Path):
    dl = ssv2_download_copy(make_root(tmp_path / "flat"), tmp_path / "dl")
    for f in (dl / "labels").iterdir():  # a user copied them up by hand, byte for byte
        (dl / f.name).write_bytes(f.read_bytes())
    assert find_layout(dl).name == "flat"
    assert load_split(dl, "train").ids == TRAIN_IDS


def test_no_labels_anywhere_lists_every_place_looked(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SSv2Error) as err:
        load_split(tmp_path / "empty", "train")
    msg = str(err.value)
    for where in ("labels.json", "labels/labels.json", "something-something-v2-labels.json"):
        assert str(tmp_path / "empty" / where) in msg, msg


def test_root_file_wins_when_both_exist(root: Path):
    (root / "42326.webm").write_bytes(b"")
    assert load_split(root, "train").video_path("42326") == root / "42326.webm"


def test_video_path_of_unknown_id_raises(root: Path):
    index = load_split(root, "train")
    with pytest.raises(SSv2Error, match="no video for id '999'"):
        index.video_path("999")


def test_numeric_ids_are_read_as_strings(root: Path):
    (root / "test.json").write_text('[{"id": 1420}, {"id": 94250}]')
    assert load_split(root, "test").ids == ["1420", "94250"]


def test_empty_split_file(root: Path):
    (root / "validation.json").write_text("[]")
    index = load_split(root, "validation")
    assert index.entries == [] and index.class_counts().tolist() == [0, 0, 0, 0]


def test_index_pickles_for_worker_processes(root: Path):
    index = load_split(root, "train")
    back = pickle.loads(pickle.dumps(index))
    assert back.entries == index.entries
    assert back.video_path("78687") == index.video_path("78687")


# --- bad input: each case raises SSv2Error naming the file/id and the fix ---------------------


def test_unknown_split_name(root: Path):
    with pytest.raises(SSv2Error, match="unknown split 'val'.*train, validation, test"):
        load_split(root, "val")


def test_missing_labels_file(root: Path):
    (root / "labels.json").unlink()
    with pytest.raises(SSv2Error, match=r"labels file not found: .*labels\.json.*--data"):
        load_split(root, "train")


def test_missing_root_directory(tmp_path: Path):
    with pytest.raises(SSv2Error, match="does not exist"):
        load_split(tmp_path / "nowhere", "train")


def test_missing_split_file(root: Path):
    (root / "validation.json").unlink()
    with pytest.raises(SSv2Error, match=r"validation split file not found: .*validation\.json"):
        load_split(root, "validation")


def test_malformed_split_json_names_file_line_and_column(root: Path):
    (root / "train.json").write_text('[\n {"id": "1", "template": "x"},\n {"id": "2",, }\n]')
    with pytest.raises(SSv2Error) as err:
        load_split(root, "train")
    msg = str(err.value)
    assert "train.json is not valid JSON" in msg and "line 3 column 13" in msg, msg


def test_truncated_labels_json(root: Path):
    (root / "labels.json").write_text(LABELS[:40])
    with pytest.raises(SSv2Error, match=r"labels\.json is not valid JSON: .* line 2"):
        load_labels(root)


def test_binary_split_file(root: Path):
    (root / "train.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SSv2Error, match=r"train\.json is not valid JSON"):
        load_split(root, "train")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ("[]", "expected a non-empty JSON object"),
        ("{}", "expected a non-empty JSON object"),
        ('{"A": "0", "B": "zero"}', "class 'B' has index 'zero'"),
        ('{"A": "0", "B": "0"}', "classes 'A' and 'B' both have index 0"),
        ('{"A": "0", "B": "2"}', r"0\.\.1 with no gaps; missing \[1\]"),
    ],
)
def test_bad_labels_json(root: Path, labels: str, match: str):
    (root / "labels.json").write_text(labels)
    with pytest.raises(SSv2Error, match=match):
        load_labels(root)


def test_split_file_not_a_list(root: Path):
    (root / "train.json").write_text('{"id": "1"}')
    with pytest.raises(SSv2Error, match=r"train\.json: expected a JSON list of entries, got dict"):
        load_split(root, "train")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ('"78687"', "entry 1 is a str, not an object"),
        ('{"template": "Putting [something] on a surface"}', "entry 1 has no 'id'"),
        ('{"id": ["1"], "template": "x"}', r"entry 1 has id \['1'\], not a non-empty string"),
        ('{"id": "5", "label": "a cup"}', r"entry 1 \(id 5\) has no 'template'"),
        ('{"id": "5", "template": 3}', r"entry 1 \(id 5\) has a non-string 'template'"),
        (
            '{"id": "5", "template": "Putting [something] on a surface", "placeholders": "pen"}',
            r"entry 1 \(id 5\) has 'placeholders' that is not a list of strings",
        ),
        (
            '{"id": "5", "template": "Putting [something] on a surface", "label": 5}',
            r"entry 1 \(id 5\) has a non-string 'label'",
        ),
        (
            '{"id": "5", "template": "Putting [something] on a surface", "placeholders": [1]}',
            r"entry 1 \(id 5\) has 'placeholders' that is not a list of strings",
        ),
    ],
)
def test_wrong_schema_names_entry_and_problem(root: Path, entry: str, match: str):
    good = json.loads(TRAIN)[0]
    (root / "train.json").write_text(f"[{json.dumps(good)}, {entry}]")
    with pytest.raises(SSv2Error, match=match) as err:
        load_split(root, "train")
    assert "train.json" in str(err.value) and "each entry must look like" in str(err.value)


def test_unknown_template_names_id_template_and_labels_file(root: Path):
    entries = json.loads(TRAIN)
    entries[2]["template"] = "Spinning [something] so it continues spinning"
    (root / "train.json").write_text(json.dumps(entries))
    with pytest.raises(SSv2Error) as err:
        load_split(root, "train")
    msg = str(err.value)
    assert "video id 100904 (entry 2)" in msg, msg
    assert "'Spinning [something] so it continues spinning'" in msg, msg
    assert str(root / "labels.json") in msg, msg


def test_duplicate_ids_name_the_id_and_both_positions(root: Path):
    entries = json.loads(TRAIN)
    entries.append(dict(entries[1]))
    (root / "train.json").write_text(json.dumps(entries))
    with pytest.raises(
        SSv2Error, match=r"train\.json: video id 42326 appears twice, at entries 1 and 4"
    ):
        load_split(root, "train")


def test_duplicate_ids_in_test_split(root: Path):
    (root / "test.json").write_text('[{"id": "1420"}, {"id": "94250"}, {"id": "1420"}]')
    with pytest.raises(SSv2Error, match="video id 1420 appears twice, at entries 0 and 2"):
        load_split(root, "test")


def test_missing_videos_error_lists_count_ids_locations_and_fix(tmp_path: Path):
    root = make_root(tmp_path / "d", skip=("42326", "80715"))
    with pytest.raises(SSv2Error) as err:
        load_split(root, "train")
    msg = str(err.value)
    assert "2 of 4 videos listed in" in msg and "train.json are missing (42326, 80715)" in msg, msg
    assert f"{root}/<id>.webm" in msg and f"{root / 'videos'}/<id>.webm" in msg, msg
    assert "pass --allow-missing to skip them" in msg, msg


def test_missing_videos_message_shows_first_few(tmp_path: Path):
    root = tmp_path / "many"
    root.mkdir()
    (root / "labels.json").write_text(LABELS)
    entries = [{"id": str(i), "template": "Putting [something] on a surface"} for i in range(9)]
    (root / "train.json").write_text(json.dumps(entries))
    with pytest.raises(SSv2Error, match=r"9 of 9 videos .* \(0, 1, 2, 3, 4, \.\.\.\)"):
        load_split(root, "train")


def test_allow_missing_excludes_counts_and_warns(tmp_path: Path):
    root = make_root(tmp_path / "d", skip=("42326", "1420"))
    with pytest.warns(SSv2MissingVideosWarning, match=r"1 of 4 videos .* \(42326\).*excluded"):
        index = load_split(root, "train", allow_missing=True)
    assert index.missing == ["42326"]
    assert index.ids == ["78687", "100904", "80715"]
    assert index.class_counts().tolist() == [0, 1, 1, 1]
    with pytest.warns(SSv2MissingVideosWarning):
        assert load_split(root, "test", allow_missing=True).missing == ["1420"]


def test_allow_missing_without_missing_videos_is_silent(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_split(root, "train", allow_missing=True).missing == []


def test_ssv2_error_is_a_value_error():
    assert issubclass(SSv2Error, ValueError)

"""A store checked on read and by verify (issue 16, store side): each row's crc32c as the
reader copies it, each frames sample's .json against the row table, verify comparing the tars'
labels and video ids with the row table, --recompute touching every shard (or all rows)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from salt_vla.cache.format import StorePaths, identity_digest, read_json, write_json_atomic
from salt_vla.cache.latent_store import LatentStore, RowChecksumError
from salt_vla.cache.shard import read_index
from salt_vla.cache.store import open_store
from salt_vla.cache.verify import recompute_rows, verify_store
from salt_vla.cli import app


@pytest.fixture
def store(cache_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    return copy


def _meta(store: Path) -> dict:
    return json.loads((store / "cache.json").read_text())


def _good_rows(meta: dict, shard: int) -> list[int]:
    s = meta["shards"][shard]
    failed = {f["row"] for f in s["failures"]}
    return [r for r in range(s["row_start"], s["row_stop"]) if r not in failed]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_latent_byte_fails_its_read_naming_row_and_shard(store: Path) -> None:
    meta = _meta(store)
    row = _good_rows(meta, 2)[1]
    path = store / "latents.zarr" / "c" / "2" / "0" / "0"
    offsets = read_index(path, 4)[0]
    _flip(path, int(offsets[row - 8]) + 77)
    reader = LatentStore(store)
    others = [r for r in reader.valid_rows.tolist() if r != row]
    reader.get(others)  # the other rows of the shard, and every other shard, read fine
    with pytest.raises(RowChecksumError) as e:
        reader.get([others[0], row])
    msg = str(e.value)
    assert f"row {row} " in msg and "shard 2 " in msg and str(path) in msg, msg
    assert f"salt cache verify {store}" in msg, msg
    with pytest.raises(RowChecksumError):  # the read-ahead path raises the same at .result()
        reader.get_async([row]).result()
    unchecked = LatentStore(store, verify_reads=False).get([row])  # the flag turns it off
    assert unchecked.shape == (1, 64, 192)


def _edit_video_id_in_tar(store: Path, row: int) -> str:
    """Another video id, of the same length, in ``row``'s .json inside its tar (sizes, member
    tables and every structure check still agree); returns the id written."""
    meta = _meta(store)
    tar = store / meta["shards"][row // 4]["frames"]["path"]
    raw = tar.read_bytes()
    vid = meta["rows"]["video_id"][row]
    key = f'"video_id": "{vid}"'.encode()
    other = vid[:-1] + ("9" if vid[-1] != "9" else "8")
    tar.write_bytes(raw.replace(key, f'"video_id": "{other}"'.encode(), 1))
    return other


def test_a_frames_sample_of_another_row_fails_its_read(store: Path) -> None:
    row = _good_rows(_meta(store), 1)[0]
    other = _edit_video_id_in_tar(store, row)
    opened = open_store(store)
    for r in opened.rows.tolist():
        if r != row:
            assert len(opened.frames.jpegs(r)) == 8
    from salt_vla.cache.frames_reader import FramesRowError

    with pytest.raises(FramesRowError) as e:
        opened.frames.frames(row)
    msg = str(e.value)
    assert f"row {row} " in msg and f"video_id {other!r}" in msg and "shard-000001.tar" in msg
    assert f"salt cache verify {store}" in msg, msg
    assert verify_store(store, quick=True).ok  # structure intact: only the read can tell


def _rewrite_row_table(store: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Edit cache.json's row table *consistently*: identity digest and every commit record
    follow, so manifest, structure and file checksums all pass (as for a build that wrote
    the wrong labels, or a row table re-ordered by a bug); only the tars can disagree."""
    paths = StorePaths(store)
    meta = read_json(paths.manifest, "cache manifest")
    change(meta["rows"])
    meta["identity_sha256"] = identity_digest(meta)
    write_json_atomic(paths.manifest, meta)
    for s in meta["shards"]:
        rec_path = paths.commit_record(s["index"])
        rec = read_json(rec_path, "commit record")
        rec["identity_sha256"] = meta["identity_sha256"]
        write_json_atomic(rec_path, rec)


def test_verify_compares_the_tars_labels_and_video_ids_with_the_row_table(store: Path) -> None:
    meta = _meta(store)
    a, b = _good_rows(meta, 0)[:2]
    c = _good_rows(meta, 3)[0]
    assert meta["rows"]["label"][a] != meta["rows"]["label"][b]

    def swap(rows: dict) -> None:
        rows["label"][a], rows["label"][b] = rows["label"][b], rows["label"][a]
        rows["video_id"][c] = rows["video_id"][c] + "x"

    _rewrite_row_table(store, swap)
    assert verify_store(store, quick=True).ok  # nothing structural changed
    report = verify_store(store)  # the full pass: sha256 of every file still matches
    assert not any("checksum mismatch" in p for p in report.problems), report.problems
    label = [p for p in report.problems if "shard-000000.tar" in p]
    assert len(label) == 1 and f"rows {a}, {b}" in label[0] and "label" in label[0], label
    vid = [p for p in report.problems if "shard-000003.tar" in p]
    assert len(vid) == 1 and f"rows {c}" in vid[0] and "video_id" in vid[0], vid
    sampled = verify_store(store, sample=1.0)
    assert sum(".json of rows" in p for p in sampled.problems) == 2, sampled.problems
    res = CliRunner().invoke(app, ["cache", "verify", str(store)])
    assert res.exit_code == 1 and "does not match cache.json's row table" in res.output


def test_recompute_takes_a_row_from_every_shard_or_all(store: Path) -> None:
    meta = _meta(store)
    shards = [s for s in meta["shards"] if s["row_stop"] - s["row_start"] > len(s["failures"])]
    valid = [r for s in range(len(meta["shards"])) for r in _good_rows(meta, s)]
    for k in (1, 2, 3):  # fewer rows asked than shards: one per shard all the same
        picked = recompute_rows(meta, k, seed=k)
        assert {r // 4 for r in picked} == {s["index"] for s in shards}, picked
        assert set(picked) <= set(valid)
    assert recompute_rows(meta, "all", seed=0) == valid
    assert recompute_rows(meta, 1000, seed=0) == valid
    report = verify_store(store, quick=True, recompute=1)
    assert report.ok, report.problems
    check = next(c for c in report.checks if c.name.startswith("recompute"))
    assert f"{len(shards)} rows in {len(shards)} shards" in check.detail, check.detail
    res = CliRunner().invoke(app, ["cache", "verify", str(store), "--quick", "--recompute",
                                   "all"])
    assert res.exit_code == 0, res.output
    assert f"{len(valid)} rows in {len(shards)} shards" in res.output, res.output
    res = CliRunner().invoke(app, ["cache", "verify", str(store), "--recompute", "some"])
    assert res.exit_code == 2 and "--recompute" in res.output


def test_recompute_catches_rows_swapped_inside_one_shard(store: Path) -> None:
    """The issue's drill: rows swapped in one shard of several. ``--recompute 1`` draws a row
    of every shard, so the shard is always looked at (its good rows rotated: any draw there
    finds one)."""
    zarr = pytest.importorskip("zarr")
    rows = _good_rows(_meta(store), 1)
    z = zarr.open(str(store / "latents.zarr"), mode="r+")
    old = [np.asarray(z[r]) for r in rows]
    for r, data in zip(rows, old[1:] + old[:1], strict=True):
        z[r] = data
    for seed in range(3):
        report = verify_store(store, quick=True, recompute=1, seed=seed)
        bad = [p for p in report.problems if "recomputed latents differ" in p]
        assert bad and any(str(r) in bad[0] for r in rows), report.problems

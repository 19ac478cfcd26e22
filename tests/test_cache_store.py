"""Opening a store (cache/store.py): member tables in the commit records (format version 2)
read the same bytes as a header scan, open scans no tar header when they exist, and a
version-1 store (no tables) still opens and reads identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import salt_vla.cache.frames_reader as frames_reader
from salt_vla.cache.format import (
    FORMAT_VERSION,
    StorePaths,
    identity_digest,
    read_json,
    write_json_atomic,
)
from salt_vla.cache.frames_reader import (
    FramesIndexError,
    TarFrames,
    scan_members,
    table_members,
)
from salt_vla.cache.store import CacheMismatchError, StoreExpectation, open_store
from salt_vla.cache.store_writer import CacheBuildError, prepare_store
from salt_vla.cache.verify import verify_store


def downgrade_to_v1(root: Path) -> None:
    """Rewrite the store at ``root`` as format version 1 wrote it: no member tables in the
    commit records or cache.json, version 1 in the identity."""
    paths = StorePaths(root)
    meta = read_json(paths.manifest, "cache manifest")
    meta["format_version"] = 1
    for s in meta["shards"]:
        s.get("frames", {}).pop("members", None)
    meta["identity_sha256"] = identity_digest(meta)
    write_json_atomic(paths.manifest, meta)
    for rec_path in sorted(paths.commits.glob("shard-*.json")):
        rec = read_json(rec_path, "commit record")
        rec["frames"].pop("members")
        rec["identity_sha256"] = meta["identity_sha256"]
        write_json_atomic(rec_path, rec)


@pytest.fixture
def v1_store(cache_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "v1"
    shutil.copytree(cache_store, copy)
    downgrade_to_v1(copy)
    return copy


@pytest.fixture
def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths of every tar whose headers are scanned from now on."""
    calls: list[Path] = []
    real = frames_reader.scan_members

    def counting(path: Path | str) -> list[frames_reader.Member]:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(frames_reader, "scan_members", counting)
    return calls


def _all_jpegs(frames: TarFrames, rows: np.ndarray) -> dict[int, list[bytes]]:
    return {int(r): frames.jpegs(int(r)) for r in rows}


def test_commit_records_hold_the_member_table_of_each_row(cache_store: Path) -> None:
    meta = json.loads((cache_store / "cache.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2
    num_frames = meta["frames"]["num_frames"]
    for s in meta["shards"]:
        rec = json.loads((cache_store / "commits" / f"shard-{s['index']:06d}.json").read_text())
        table = rec["frames"]["members"]
        assert table == s["frames"]["members"]  # cache.json mirrors the record
        assert len(table) == s["row_stop"] - s["row_start"]
        failed = {f["row"] for f in s["failures"]}
        for local, entry in enumerate(table):
            if s["row_start"] + local in failed:
                assert entry is None
            else:
                assert len(entry) == 1 + 1 + num_frames  # offset, .json, frames
        # The table says exactly what the tar headers say.
        tar = cache_store / s["frames"]["path"]
        assert table_members(s["row_start"], table) == scan_members(tar)


def test_open_reads_the_same_bytes_as_a_header_scan_without_scanning(
        cache_store: Path, count_scans: list[Path]) -> None:
    store = open_store(cache_store)
    assert count_scans == [], "open_store scanned tar headers of a store with member tables"
    assert "members" not in store.meta["shards"][0]["frames"]  # kept as arrays, not lists
    scanned = TarFrames(store.latents.frames_shards())
    assert len(count_scans) == len(store.latents.frames_shards())
    assert store.frames.rows.tolist() == scanned.rows.tolist()
    assert _all_jpegs(store.frames, store.rows) == _all_jpegs(scanned, store.rows)
    for name in ("_shard", "_offset", "_size", "_start", "_count"):
        np.testing.assert_array_equal(getattr(store.frames, name), getattr(scanned, name))


def test_version_1_store_still_opens_and_reads_identically(
        cache_store: Path, v1_store: Path, count_scans: list[Path]) -> None:
    new = open_store(cache_store)
    assert count_scans == []
    old = open_store(v1_store)
    assert len(count_scans) == len(old.latents.frames_shards())  # the fallback: a header scan
    assert old.meta["format_version"] == 1
    np.testing.assert_array_equal(old.rows, new.rows)
    assert _all_jpegs(old.frames, old.rows) == _all_jpegs(new.frames, new.rows)
    for r in old.rows[:3]:
        np.testing.assert_array_equal(old.frames.frames(int(r)), new.frames.frames(int(r)))
    np.testing.assert_array_equal(old.latents.get(old.rows), new.latents.get(new.rows))
    report = verify_store(v1_store)
    assert report.ok, report.problems


def test_version_1_store_is_not_resumed_by_this_version(v1_store: Path) -> None:
    meta = read_json(v1_store / "cache.json", "cache manifest")
    meta["format_version"] = FORMAT_VERSION
    meta["identity_sha256"] = identity_digest(meta)
    with pytest.raises(CacheBuildError, match="cache format version 1") as e:
        prepare_store(v1_store, meta, check_only=True)
    assert str(v1_store) in str(e.value)


def test_truncated_tar_is_refused_at_open_naming_the_file(cache_store: Path,
                                                          tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    tar = copy / "frames" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-2048])
    with pytest.raises(FramesIndexError, match="shard-000001.tar") as e:
        open_store(copy)
    assert "salt cache verify" in str(e.value)


def test_verify_flags_a_member_table_that_disagrees_with_the_tar(cache_store: Path,
                                                                 tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    paths = StorePaths(copy)
    meta = read_json(paths.manifest, "cache manifest")
    rec = read_json(paths.commit_record(0), "commit record")
    entry = next(e for e in rec["frames"]["members"] if e is not None)
    entry[2] += 1  # frame 0 one byte longer: the reader would hand over the wrong bytes
    write_json_atomic(paths.commit_record(0), rec)
    meta["shards"][0]["frames"]["members"] = rec["frames"]["members"]
    write_json_atomic(paths.manifest, meta)
    report = verify_store(copy, quick=True)
    assert any("member table in cache.json disagrees with the tar headers" in p
               for p in report.problems), report.problems


def test_expectation_mismatches_name_both_values(cache_store: Path) -> None:
    from salt_vla.data.view import VIEW_PRESETS

    meta = read_json(cache_store / "cache.json", "cache manifest")
    spec = VIEW_PRESETS["tiny-8x64"]
    ok = StoreExpectation(view=spec, grid=tuple(meta["latents"]["grid"]),
                          dim=meta["teacher"]["dim"])
    assert open_store(cache_store, ok).rows.size > 0
    wrong = StoreExpectation(view=VIEW_PRESETS["tiny-8x64-mv2"], grid=(1, 2, 3), dim=7)
    with pytest.raises(CacheMismatchError) as e:
        open_store(cache_store, lambda m: wrong)
    msg = str(e.value)
    assert meta["view"]["hash"] in msg and VIEW_PRESETS["tiny-8x64-mv2"].hash() in msg
    assert "expected (1, 2, 3)" in msg and "expected dim=7" in msg

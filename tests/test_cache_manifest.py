"""cache.json during a build (store_writer.ManifestWriter): each rewrite reads only the commit
records that are new, its bytes are the canonical rendering of the merged state without the
member tables, and the final write is the full merge of every record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import salt_vla.cache.store_writer as store_writer
from salt_vla.cache.format import STATUS_BUILDING, StorePaths, dumps
from salt_vla.cache.frames import encode_jpeg
from salt_vla.cache.info import store_info
from salt_vla.cache.store_writer import (
    ManifestWriter,
    ShardTransaction,
    _pending,
    _shard_entry,
    committed_shards,
    merged_manifest,
    new_manifest,
    prepare_store,
)
from salt_vla.cache.verify import verify_store

SHARDS = 6


@pytest.fixture
def building(tmp_path: Path) -> tuple[Path, dict]:
    """A store prepared for 6 shards of 3 rows, nothing committed."""
    from salt_vla.data.view import ViewSpec

    rows = SHARDS * 3
    spec = ViewSpec(num_frames=2, size=16)
    manifest = new_manifest(
        split="train", teacher={"arch": "test", "dim": 4},
        view={"spec": spec.to_dict(), "hash": spec.hash()},
        frames={"num_frames": 2, "height": 16, "width": 16, "jpeg_quality": 90},
        dtype="float16", tokens=2, dim=4,
        grid=(2, 1, 1), shard_size=3, video_ids=[f"v{i}" for i in range(rows)],
        view_index=[0] * rows, labels=[1] * rows, missing_video_ids=["gone"], command=["t"],
        tool_version="t")
    root = tmp_path / "store"
    return root, prepare_store(root, manifest)


def commit(root: Path, manifest: dict, shard: int) -> dict:
    jpeg = encode_jpeg(np.zeros((16, 16, 3), np.uint8))
    txn = ShardTransaction(root, manifest, shard)
    for r in txn.rows:
        if r == 4:
            txn.add_failure(r, "bad video")
        else:
            txn.add_row(r, np.full((2, 4), r, np.float32), [jpeg, jpeg])
    return txn.commit()


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Shard numbers of every commit record read through read_commit from now on."""
    calls: list[int] = []
    real = store_writer.read_commit

    def counting(root: Path, shard: int, manifest: dict) -> dict | None:
        calls.append(shard)
        return real(root, shard, manifest)

    monkeypatch.setattr(store_writer, "read_commit", counting)
    return calls


def test_rewrites_read_only_new_commit_records(building: tuple[Path, dict],
                                               count_reads: list[int]) -> None:
    root, manifest = building
    writer = ManifestWriter(root, manifest)
    for s in (0, 1, 2):
        writer.add(s, commit(root, manifest, s))  # this process's commits: handed over
        writer.write()
    assert count_reads == [], "a rewrite re-read commit records it was handed"
    commit(root, manifest, 4)  # "another rank": only on disk
    writer.write()
    assert count_reads == [4]
    writer.write()
    assert count_reads == [4], "a known record was read again"
    meta = json.loads(StorePaths(root).manifest.read_text())
    assert meta["status"] == STATUS_BUILDING
    assert [s["status"] for s in meta["shards"]] == ["committed"] * 3 + ["pending", "committed",
                                                                         "pending"]
    assert meta["counts"]["committed_shards"] == 4 and meta["counts"]["failed_rows"] == 1
    assert all("members" not in s.get("frames", {}) for s in meta["shards"])  # interim form


def test_interim_bytes_are_the_canonical_rendering(building: tuple[Path, dict]) -> None:
    root, manifest = building
    writer = ManifestWriter(root, manifest)
    recs = {s: commit(root, manifest, s) for s in (1, 3)}
    for s, rec in recs.items():
        writer.add(s, rec)
    want = dict(manifest)
    want["shards"] = [_shard_entry(recs[i], interim=True) if i in recs
                      else _pending(i, SHARDS * 3, 3) for i in range(SHARDS)]
    full = merged_manifest(root, manifest)
    want["counts"] = full["counts"]
    want["status"] = STATUS_BUILDING
    assert writer.interim_bytes() == dumps(want)


def test_final_write_is_the_full_merge_and_a_resumed_writer_reads_each_record_once(
        building: tuple[Path, dict], count_reads: list[int]) -> None:
    root, manifest = building
    for s in range(SHARDS - 1):
        commit(root, manifest, s)
    writer = ManifestWriter(root, manifest)  # a resumed build: earlier commits on disk
    assert sorted(count_reads) == list(range(SHARDS - 1))
    count_reads.clear()
    writer.add(SHARDS - 1, commit(root, manifest, SHARDS - 1))
    assert writer.complete
    final = writer.write()
    assert final["status"] == "complete"
    on_disk = StorePaths(root).manifest.read_bytes()
    assert on_disk == dumps(merged_manifest(root, manifest, committed_shards(root, manifest)))
    assert all("members" in s["frames"] for s in json.loads(on_disk)["shards"])
    assert StorePaths(root).failures.read_text().count("\n") == 2  # the missing video + row 4
    report = verify_store(root)
    assert report.ok, report.problems


def test_verify_and_info_on_an_interrupted_build(building: tuple[Path, dict]) -> None:
    """Killed after shard 2's commit but before cache.json was rewritten: the record is the
    truth for both, and the counts are what was written (not the store's planned rows)."""
    root, manifest = building
    writer = ManifestWriter(root, manifest)
    for s in (0, 1):  # shard 1 holds row 4, a failed video
        writer.add(s, commit(root, manifest, s))
    writer.write()
    commit(root, manifest, 2)  # committed, but cache.json not rewritten since (SIGKILL)
    stale = json.loads(StorePaths(root).manifest.read_text())
    assert sum(s["status"] == "committed" for s in stale["shards"]) == 2
    report = verify_store(root, quick=True)
    # Only the build's state is reported: the interim entries match their records.
    assert all("not complete" in p or "is not committed" in p for p in report.problems), \
        report.problems
    assert not any("differs from commit record" in p for p in report.problems)
    assert sum("is not committed" in p for p in report.problems) == SHARDS - 3
    detail = {c.name: c.detail for c in report.checks}
    assert detail["shards committed"] == f"{SHARDS - 3} problem(s); 3/{SHARDS}", detail
    info = store_info(root)
    assert info["status"] == "building" and info["shards"] == f"3/{SHARDS} committed"
    assert info["written_rows"] == 8 and info["failed_rows"] == 1  # 9 rows, row 4 failed
    assert detail["latent shards"].startswith("8 rows present, 1 failed"), detail
    assert detail["frame shards"].startswith("8 samples"), detail
    full = verify_store(root)  # the data of the three committed shards checks out
    assert all("not complete" in p or "is not committed" in p for p in full.problems), \
        full.problems


def test_disk_full_at_the_commit_record_leaves_the_shard_uncommitted_and_removed(
        building: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing commits/shard-i.json (after its files were renamed into place):
    the shard is not committed, none of its files stay to hold the space, and a re-run once
    there is space commits it."""
    import errno

    from salt_vla.cache.store_writer import CacheBuildError, read_commit

    root, manifest = building
    commit(root, manifest, 0)
    paths = StorePaths(root)
    real = store_writer.write_json_atomic

    def disk_full(path: Path, obj: object) -> None:
        if path == paths.commit_record(1):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr(store_writer, "write_json_atomic", disk_full)
    with pytest.raises(CacheBuildError) as e:
        commit(root, manifest, 1)
    assert "shard-000001.json" in str(e.value) and "space" in str(e.value).lower(), str(e.value)
    assert read_commit(root, 1, manifest) is None
    left = [p for p in (paths.latent_shard(1), paths.frames_shard(1), paths.commit_record(1))
            if p.exists()]
    assert not left, f"files of the uncommitted shard left behind: {left}"
    assert not [p for p in paths.tmp.iterdir() if "000001" in p.name]
    assert paths.latent_shard(0).exists() and read_commit(root, 0, manifest) is not None
    monkeypatch.setattr(store_writer, "write_json_atomic", real)  # space again
    commit(root, manifest, 1)
    writer = ManifestWriter(root, manifest)
    writer.write()
    assert store_info(root)["shards"] == f"2/{SHARDS} committed"
    assert any(c.name == "shards committed" and c.detail.endswith(f"; 2/{SHARDS}")
               for c in verify_store(root, quick=True).checks)

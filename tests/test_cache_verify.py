"""`salt cache verify` on an intact store and on copies with one injected corruption each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from salt_vla.cache.shard import read_index
from salt_vla.cache.verify import verify_store
from salt_vla.cli import app


@pytest.fixture
def store(cache_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    return copy


def _verify_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["cache", "verify", *args])
    return res.exit_code, res.output


def _meta(store: Path) -> dict:
    return json.loads((store / "cache.json").read_text())


def _first_good_row(store: Path, shard: int) -> int:
    meta = _meta(store)
    s = meta["shards"][shard]
    failed = {f["row"] for f in s["failures"]}
    return next(r for r in range(s["row_start"], s["row_stop"]) if r not in failed)


def test_intact_store_verifies(cache_store: Path) -> None:
    code, out = _verify_cli(str(cache_store))
    assert code == 0, out
    assert "OK:" in out and "FAIL" not in out
    assert verify_store(cache_store, quick=True).ok


def test_default_dir_comes_from_the_environment(cache_store: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALT_CACHE", str(cache_store))
    code, out = _verify_cli("--quick")
    assert code == 0, out
    assert f"cache: {cache_store}  (from $SALT_CACHE)" in out


def test_flipped_byte_in_latent_shard(store: Path) -> None:
    row = _first_good_row(store, 1)
    path = store / "latents.zarr" / "c" / "1" / "0" / "0"
    offsets, nbytes, _ = read_index(path, 4)
    local = row - 4
    data = bytearray(path.read_bytes())
    data[int(offsets[local]) + int(nbytes[local]) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = _verify_cli(str(store))
    assert code == 1
    assert "checksum mismatch in shard 1" in out and f"rows {row}" in out, out


def test_deleted_shard(store: Path) -> None:
    (store / "latents.zarr" / "c" / "2" / "0" / "0").unlink()
    for quick in ([], ["--quick"]):
        code, out = _verify_cli(str(store), *quick)
        assert code == 1
        assert "missing shard: shard 2 latents" in out, out


def test_truncated_frames_tar(store: Path) -> None:
    path = store / "frames" / "shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out = _verify_cli(str(store), "--quick")
    assert code == 1
    assert "shard 0 frames" in out and "truncated" in out, out


def test_nan_row_written_through_zarr(store: Path) -> None:
    zarr = pytest.importorskip("zarr")
    row = _first_good_row(store, 0)
    z = zarr.open(str(store / "latents.zarr"), mode="r+")
    values = np.asarray(z[row])
    values[3, 5] = np.nan
    z[row] = values
    code, out = _verify_cli(str(store))
    assert code == 1
    assert "non-finite values" in out and f"rows {row}" in out, out


def test_manifest_edited_to_a_wrong_view_hash(store: Path) -> None:
    raw = (store / "cache.json").read_text()
    meta = _meta(store)
    edited = raw.replace(f'"hash": "{meta["view"]["hash"]}"', '"hash": "0123456789abcdef"')
    assert edited != raw
    (store / "cache.json").write_text(edited)
    code, out = _verify_cli(str(store), "--quick")
    assert code == 1
    assert "view-hash mismatch" in out and "identity digest mismatch" in out, out


def test_manifest_edited_to_a_wrong_shard_checksum(store: Path) -> None:
    raw = (store / "cache.json").read_text()
    sha = _meta(store)["shards"][3]["latents"]["sha256"]
    (store / "cache.json").write_text(raw.replace(sha, "0" * 64))
    code, out = _verify_cli(str(store))
    assert code == 1
    assert "checksum mismatch: shard 3 latents" in out, out
    assert "differs from commit record" in out, out


def test_recompute_catches_latents_of_the_wrong_clip(store: Path) -> None:
    zarr = pytest.importorskip("zarr")
    report = verify_store(store, recompute=3)
    assert report.ok, report.problems
    valid = [c for c in report.checks if c.name.startswith("recompute")]
    assert valid and valid[0].ok
    z = zarr.open(str(store / "latents.zarr"), mode="r+")
    meta = _meta(store)
    failed = {f["row"] for s in meta["shards"] for f in s["failures"]}
    good = [r for r in range(meta["rows"]["count"]) if r not in failed]
    for r in good:  # every row gets another clip's latents
        z[r] = np.asarray(z[good[(good.index(r) + 1) % len(good)]])
    report = verify_store(store, recompute=3)
    assert any("recomputed latents differ" in p for p in report.problems), report.problems


def test_recompute_without_the_checkpoint_says_so(store: Path) -> None:
    raw = (store / "cache.json").read_text()
    meta = _meta(store)
    meta["teacher_source"] = "/nonexistent/teacher.pth"
    (store / "cache.json").write_text(json.dumps(meta))
    assert raw != (store / "cache.json").read_text()
    code, out = _verify_cli(str(store), "--quick", "--recompute", "2")
    assert code == 1
    assert "cannot recompute" in out and "--teacher PATH" in out, out


def test_malformed_manifest_is_a_problem_not_a_crash(store: Path) -> None:
    meta = _meta(store)
    del meta["rows"]
    (store / "cache.json").write_text(json.dumps(meta))
    code, out = _verify_cli(str(store), "--quick")
    assert code == 1
    assert "malformed" in out and "rows" in out, out

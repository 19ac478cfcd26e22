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


# --- depths: --quick reads no data, --sample reads a part, the full pass every byte once ---


def _data_files(store: Path) -> dict[Path, int]:
    """Every latents / scale shard file and frames tar, with its size."""
    files = [*(store / "latents.zarr" / "c").rglob("*"), *(store / "frames").glob("*.tar")]
    return {f.resolve(): f.stat().st_size for f in files if f.is_file()}


@pytest.fixture
def data_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every read of a data file from now on: ``preads`` (path, offset, length) through the
    descriptors os.open gave, ``opens`` of data files through Python's open, ``memmaps``."""
    import builtins
    import io
    import os as os_mod

    seen: dict[str, list] = {"preads": [], "opens": [], "memmaps": []}
    fd_path: dict[int, Path] = {}
    real_open, real_pread, real_preadv = os_mod.open, os_mod.pread, os_mod.preadv
    real_read, real_builtin_open, real_io_open = os_mod.read, builtins.open, io.open

    def os_open(path, flags, *a, **k):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *a, **k)
        fd_path[fd] = Path(path).resolve()
        return fd

    def pread(fd, n, off):  # type: ignore[no-untyped-def]
        seen["preads"].append((fd_path.get(fd), off, n))
        return real_pread(fd, n, off)

    def preadv(fd, bufs, off, *a):  # type: ignore[no-untyped-def]
        seen["preads"].append((fd_path.get(fd), off, sum(len(b) for b in bufs)))
        return real_preadv(fd, bufs, off, *a)

    def read(fd, n):  # type: ignore[no-untyped-def]
        seen["preads"].append((fd_path.get(fd), None, n))
        return real_read(fd, n)

    def py_open(file, *a, **k):  # type: ignore[no-untyped-def]
        if isinstance(file, (str, Path)):
            seen["opens"].append(Path(file).resolve())
        return real_io_open(file, *a, **k)

    def memmap(*a, **k):  # type: ignore[no-untyped-def]
        seen["memmaps"].append(a)
        raise AssertionError("np.memmap used")

    monkeypatch.setattr(os_mod, "open", os_open)
    monkeypatch.setattr(os_mod, "pread", pread)
    monkeypatch.setattr(os_mod, "preadv", preadv)
    monkeypatch.setattr(os_mod, "read", read)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(np, "memmap", memmap)
    assert real_builtin_open  # restored by monkeypatch
    return seen


def test_quick_reads_no_latent_or_frame_bytes(cache_store: Path,
                                              data_reads: dict[str, list]) -> None:
    from salt_vla.cache.shard import index_nbytes

    files = _data_files(cache_store)
    report = verify_store(cache_store, quick=True)
    assert report.ok, report.problems
    assert report.bytes_read == 0
    assert not data_reads["memmaps"]
    assert not [p for p in data_reads["opens"] if p in files], "a data file opened with open()"
    tail = index_nbytes(4)
    data_preads = [(p, off, n) for p, off, n in data_reads["preads"] if p in files]
    assert data_preads, "the shard indexes were not read"
    for path, off, n in data_preads:
        assert path.suffix != ".tar", f"--quick read {n} bytes of the tar {path}"
        assert off == files[path] - tail and n == tail, \
            f"--quick read bytes {off}..{off + n} of {path}: not its index"


def test_full_verify_reads_every_data_byte_once(cache_store: Path,
                                                data_reads: dict[str, list]) -> None:
    files = _data_files(cache_store)
    report = verify_store(cache_store)
    assert report.ok, report.problems
    assert report.bytes_read == sum(files.values())
    by_file: dict[Path, int] = {}
    for path, _off, n in data_reads["preads"]:
        if path in files:
            by_file[path] = by_file.get(path, 0) + n
    index_reads = {p: (4 * 16 + 4) for p in files if p.suffix != ".tar"}  # structure check
    assert {p: n - index_reads.get(p, 0) for p, n in by_file.items()} == files


def test_sample_touches_every_shard_and_finds_a_flipped_byte(store: Path) -> None:
    meta = _meta(store)
    report = verify_store(store, sample=0.01, seed=3)
    assert report.ok, report.problems
    shards_with_rows = sum(1 for s in meta["shards"]
                           if s["row_stop"] - s["row_start"] > len(s["failures"]))
    assert f"{shards_with_rows} sampled rows" in report.table()  # one per shard
    assert "not a proof" in " ".join(report.notes)
    full = verify_store(store)
    assert 0 < report.bytes_read < full.bytes_read
    row = _first_good_row(store, 2)
    path = store / "latents.zarr" / "c" / "2" / "0" / "0"
    offsets, _, _ = read_index(path, 4)
    data = bytearray(path.read_bytes())
    data[int(offsets[row - 8]) + 11] ^= 0x10
    path.write_bytes(bytes(data))
    code, out = _verify_cli(str(store), "--sample", "1.0")
    assert code == 1 and "checksum mismatch in shard 2" in out and f"rows {row}" in out, out
    code, out = _verify_cli(str(store), "--quick")  # the structure is intact
    assert code == 0, out


def test_sample_checks_frames_against_the_row_table(store: Path) -> None:
    raw = (store / "frames" / "shard-000001.tar").read_bytes()
    row = _first_good_row(store, 1)
    key = f'"video_id": "{_meta(store)["rows"]["video_id"][row]}"'.encode()
    pos = raw.index(key)  # the row's .json member: same length, another video id
    other = key[:-2] + (b"9" if key[-2:-1] != b"9" else b"8") + key[-1:]
    (store / "frames" / "shard-000001.tar").write_bytes(raw[:pos] + other + raw[pos + len(key):])
    report = verify_store(store, sample=1.0)
    assert any(".json of rows" in p and str(row) in p for p in report.problems), report.problems
    assert verify_store(store, quick=True).ok  # sizes and tables still agree


def test_progress_reports_bytes_and_an_eta(cache_store: Path) -> None:
    import io

    from salt_vla.cache.verify import print_progress

    seen = []
    report = verify_store(cache_store, progress=lambda p: seen.append((p.done_bytes,
                                                                       p.line())))
    assert report.ok and seen
    assert seen[-1][0] == report.bytes_read
    assert "4/4 shards" in seen[-1][1] and "ETA" in seen[-1][1]
    buf = io.StringIO()
    verify_store(cache_store, sample=0.5, progress=print_progress(buf))
    assert buf.getvalue().strip().splitlines()[-1].startswith("verify: 4/4 shards")


def test_cli_refuses_quick_with_sample(cache_store: Path) -> None:
    code, out = _verify_cli(str(cache_store), "--quick", "--sample", "0.5")
    assert code == 2 and "--quick" in out
    code, out = _verify_cli(str(cache_store), "--sample", "1.5")
    assert code == 2


def test_structure_check_for_the_trainer(cache_store: Path, store: Path) -> None:
    from salt_vla.cache.structure import check_structure

    assert check_structure(cache_store) == []
    (store / "latents.zarr" / "c" / "1" / "0" / "0").unlink()
    problems = check_structure(store, commit_records=False)
    assert problems and "missing shard: shard 1 latents" in problems[0]

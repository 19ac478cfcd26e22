"""Crash safety of the build: SIGKILL and re-run, disk full, permission denied, no data."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CACHE_BUILD_ARGS

from salt_vla.cache.store_writer import CRASH_ENV, CacheBuildError


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a finished store; cache.json without "command" (it names --out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "cache.json":
                meta = json.loads(data)
                meta.pop("command")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(root))] = data
    return out


def assert_same_store(got: Path, want: Path) -> None:
    a, b = store_files(got), store_files(want)
    assert sorted(a) == sorted(b), f"different files: {sorted(set(a) ^ set(b))}"
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"files differ from the uninterrupted build: {differ}"


def build_cmd(data_root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "salt_vla", "cache", "build", str(data_root),
            *CACHE_BUILD_ARGS, "--out", str(out)]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(CRASH_ENV, None)
    env.update(extra)
    return env


def _committed(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "commits").glob("shard-*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["after-rename:1", "sigkill"])
def test_sigkill_then_rerun_gives_identical_bytes(
    crash: str, cache_data_root: Path, cache_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    if crash == "sigkill":
        # An outside SIGKILL as soon as one shard is committed, wherever the build is then.
        proc = subprocess.Popen(build_cmd(cache_data_root, out), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (out / "commits").is_dir() or not _committed(out):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard committed within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    else:
        # Killed after shard 1's files were renamed into place but before its commit record.
        res = subprocess.run(build_cmd(cache_data_root, out), env=_env(**{CRASH_ENV: crash}),
                             capture_output=True, text=True)
        assert res.returncode == -signal.SIGKILL, res.stderr
        assert _committed(out) == [0]
        assert (out / "latents.zarr" / "c" / "1" / "0" / "0").exists()
    assert json.loads((out / "cache.json").read_text())["status"] == "building"
    committed_before = _committed(out)
    assert committed_before, "the kill came before any commit"

    # Re-run (in-process: same options as the command line, and a faster test).
    from salt_vla.cache.build import build_cache

    msgs: list[str] = []
    result = build_cache(_cfg(cache_data_root, out), log=msgs.append)
    skipped = len(committed_before)
    rank_line = next(m for m in msgs if m.startswith("[rank "))  # after the plan lines
    assert f"{skipped} committed, {4 - skipped} to build" in rank_line, msgs
    rows_before = sum(min(4, 13 - 4 * i) for i in committed_before)
    assert result.status == "complete" and result.rows_skipped == rows_before
    assert_same_store(out, cache_store)


def _cfg(data_root: Path, out: Path):  # noqa: ANN202 - test helper
    from salt_vla.cache.build import BuildConfig
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import VIEW_PRESETS

    return BuildConfig(data_root=data_root, out=out, teacher="random:vit_tiny:0",
                       view=VIEW_PRESETS["tiny-8x64"], shard_size=4, device="cpu",
                       pipeline=PipelineConfig(batch_size=3, workers=1),
                       command=("salt", "test"), show_progress=False)


def test_disk_full_stops_with_the_path_and_keeps_committed_shards(
    cache_data_root: Path, cache_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salt_vla.cache import shard as shard_mod
    from salt_vla.cache.build import build_cache

    out = tmp_path / "store"
    real = shard_mod.ShardFileWriter.write_row

    def write_row(self, local, row):  # noqa: ANN001, ANN202
        if self.offsets is not None and getattr(self._f, "name", "").endswith("000002.latents"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, local, row)

    monkeypatch.setattr(shard_mod.ShardFileWriter, "write_row", write_row)
    with pytest.raises(CacheBuildError) as info:
        build_cache(_cfg(cache_data_root, out), log=lambda m: None)
    msg = str(info.value)
    assert "disk full" in msg and "shard-000002.latents" in msg and "--out" in msg, msg
    meta = json.loads((out / "cache.json").read_text())
    assert [s["status"] for s in meta["shards"]] == ["committed", "committed", "pending",
                                                     "pending"]
    assert not any((out / "tmp").iterdir()), "the failed shard's temporary files remain"
    monkeypatch.setattr(shard_mod.ShardFileWriter, "write_row", real)
    result = build_cache(_cfg(cache_data_root, out), log=lambda m: None)
    assert result.rows_skipped == 8 and result.status == "complete"
    assert_same_store(out, cache_store)


def test_permission_denied_names_the_path(cache_data_root: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from salt_vla.cache import store_writer
    from salt_vla.cache.build import build_cache

    def denied(path, obj):  # noqa: ANN001, ANN202
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_writer, "write_json_atomic", denied)
    out = tmp_path / "store"
    with pytest.raises(CacheBuildError) as info:
        build_cache(_cfg(cache_data_root, out), log=lambda m: None)
    msg = str(info.value)
    assert "permission denied" in msg and str(out / "cache.json") in msg, msg
    assert not (out / "cache.json").exists()


def test_missing_data_root_names_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from salt_vla.cli import app

    missing = tmp_path / "no-such-root"
    res = CliRunner().invoke(app, ["cache", "build", str(missing), *CACHE_BUILD_ARGS,
                                   "--out", str(tmp_path / "store")])
    assert res.exit_code == 1
    assert f"data root {missing} does not exist" in res.output, res.output
    assert not (tmp_path / "store").exists()


def test_a_second_build_on_the_same_directory_is_refused(cache_data_root: Path,
                                                         tmp_path: Path) -> None:
    from salt_vla.cache.build import build_cache
    from salt_vla.cache.store_writer import StoreLock

    out = tmp_path / "store"
    with StoreLock(out), pytest.raises(CacheBuildError, match="another build is writing"):
        build_cache(_cfg(cache_data_root, out), log=lambda m: None)

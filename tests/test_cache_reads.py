"""The store's readers under load: bounded open files (an LRU sized from RLIMIT_NOFILE, in a
subprocess with a low limit), the soft limit raised, EMFILE as a clear error, exact-size reads
that equal a memory map byte for byte (failed rows included), read-ahead, fork safety, and
the bytes-read counters."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from salt_vla.cache.format import StorePaths
from salt_vla.cache.frames import encode_jpeg
from salt_vla.cache.latent_store import LatentStore, MissingRowError
from salt_vla.cache.reads import OpenFiles, TooManyOpenFilesError, reader_budget
from salt_vla.cache.shard import EMPTY, index_nbytes, read_index
from salt_vla.cache.store import open_store
from salt_vla.cache.store_writer import (
    ShardTransaction,
    new_manifest,
    prepare_store,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]


def make_store(root: Path, shards: int, rows_per_shard: int, *, dtype: str = "float16",
               tokens: int = 4, dim: int = 8, frames: int = 2, fail: tuple[int, ...] = ()
               ) -> Path:
    """A complete store of ``shards`` tiny shards written by the build's writer: latents
    ``row + token / 10`` (distinct per row), two 16x16 JPEG frames per row, rows in ``fail``
    recorded as failed."""
    rows = shards * rows_per_shard
    manifest = new_manifest(
        split="train", teacher={"arch": "test", "dim": dim},
        view={"spec": {}, "hash": "test"},
        frames={"num_frames": frames, "height": 16, "width": 16}, dtype=dtype,
        tokens=tokens, dim=dim, grid=(tokens, 1, 1), shard_size=rows_per_shard,
        video_ids=[f"v{i}" for i in range(rows)], view_index=[0] * rows, labels=[0] * rows,
        missing_video_ids=[], command=["test"], tool_version="test")
    manifest = prepare_store(root, manifest)
    jpeg = encode_jpeg(np.full((16, 16, 3), 100, np.uint8))
    for s in range(shards):
        txn = ShardTransaction(root, manifest, s)
        for r in txn.rows:
            if r in fail:
                txn.add_failure(r, "test failure")
            else:
                lat = r + np.arange(tokens * dim, dtype=np.float32).reshape(tokens, dim) / 10
                txn.add_row(r, lat, [jpeg] * frames)
        txn.commit()
    write_manifest(root, manifest)
    return root


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 shards of 2 rows: 240 shard files, far more than the limits the tests set."""
    return make_store(tmp_path_factory.mktemp("many") / "store", 120, 2, fail=(5, 77))


def _run(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (its own RLIMIT_NOFILE); it prints one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_open_files_stay_within_the_bound_under_random_access(many_shards: Path) -> None:
    got = _run("""
        import json, os, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        import numpy as np
        from salt_vla.cache.reads import reader_budget
        from salt_vla.cache.store import open_store

        def fds():
            return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
        base = fds()
        store = open_store(sys.argv[1])
        rng = np.random.default_rng(0)
        peak = peak_lat = peak_frames = 0
        for _ in range(400):
            rows = rng.choice(store.rows, 6, replace=False)
            store.latents.get(rows)  # 4 reading threads
            fut = store.latents.get_async(rows[::-1])
            for r in rows[:3]:
                store.frames.jpegs(int(r))
            fut.result()
            peak = max(peak, fds() - base)
            peak_lat = max(peak_lat, store.latents.open_files)
            peak_frames = max(peak_frames, store.frames.open_files)
        print(json.dumps({"peak": peak, "lat": peak_lat, "frames": peak_frames,
                          "budget": reader_budget(), "opened": store.latents.stats.opened,
                          "shards": len(store.latents.frames_shards())}))
        """, str(many_shards))
    assert got["budget"] == reader_budget(48) == 6
    assert got["shards"] == 120  # 240 shard files vs a limit of 48
    assert got["opened"] > got["budget"], "the test did not make the LRU evict"
    assert got["lat"] <= got["budget"] and got["frames"] <= got["budget"], got
    assert got["peak"] <= 2 * got["budget"], f"descriptors beyond the two readers' bound: {got}"


def test_soft_limit_is_raised_to_the_hard_limit(many_shards: Path) -> None:
    got = _run("""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 300))
        from salt_vla.cache.store import open_store
        store = open_store(sys.argv[1])
        store.latents.get(store.rows[:4])
        print(json.dumps({"soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
        """, str(many_shards))
    assert got["soft"] == 300


def test_emfile_is_a_salt_error_naming_the_limit_and_the_fix(many_shards: Path) -> None:
    got = _run("""
        import json, os, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        from salt_vla.cache.reads import TooManyOpenFilesError
        from salt_vla.cache.store import open_store
        store = open_store(sys.argv[1])
        hog = []
        try:
            while True:  # another part of the process takes every descriptor
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            store.latents.get(store.rows[-3:])
            print(json.dumps({"error": None}))
        except TooManyOpenFilesError as e:
            print(json.dumps({"error": str(e), "salt": True}))
        """, str(many_shards))
    assert got["error"] is not None and got["salt"]
    msg = got["error"]
    assert "too many open files" in msg and "ulimit -n" in msg and "64" in msg, msg
    assert "latents.zarr/c/" in msg  # names the file it could not open


def test_lru_closes_the_least_recently_used_idle_file(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 10)
        paths.append(p)
    files = OpenFiles(paths, capacity=2)
    for i in (0, 1, 0, 2):  # 1 is the least recently used when 2 needs room
        with files.fd(i) as fd:
            assert os.pread(fd, 1, 0) == bytes([i])
    assert sorted(files._open) == [0, 2] and files.stats.closed == 1
    with files.fd(3) as fd3, files.fd(4) as fd4:  # both held: neither may be closed
        assert os.pread(fd3, 1, 0) == b"\x03" and os.pread(fd4, 1, 0) == b"\x04"
        assert files.open_count == 2
    files.close()
    assert files.open_count == 0


def _memmap_rows(root: Path, rows: np.ndarray) -> np.ndarray:
    """The rows as a memory map of the shard files reads them (the previous reader)."""
    store = LatentStore(root)
    paths = StorePaths(root)
    out = []
    for r in rows.tolist():
        s, k = divmod(r, store.shard_size)
        offsets, nbytes, _ = read_index(paths.latent_shard(s), store.shard_size)
        mm = np.memmap(paths.latent_shard(s), dtype=np.uint8, mode="r")
        out.append(np.array(mm[int(offsets[k]):int(offsets[k] + nbytes[k])]).view(store.dtype)
                   .reshape(store.tokens, store.dim))
    return np.stack(out)


def test_exact_reads_equal_a_memory_map_byte_for_byte(cache_store: Path) -> None:
    zarr = pytest.importorskip("zarr")
    store = LatentStore(cache_store)
    valid = store.valid_rows
    assert len(valid) < len(store)  # the fixture has failed rows
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.concatenate([valid, valid[:3]]))  # shuffled, with repeats
    got = store.get(rows)
    want = _memmap_rows(cache_store, rows)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    z = zarr.open(str(cache_store / "latents.zarr"), mode="r")
    assert np.array_equal(got[:5], np.stack([z[int(r)] for r in rows[:5]]))
    one = LatentStore(cache_store, threads=1)
    assert one.get(rows).tobytes() == got.tobytes()
    assert store.get_async(rows).result().tobytes() == got.tobytes()
    assert store.get([]).shape == (0, store.tokens, store.dim)
    failed = sorted(set(range(len(store))) - set(valid.tolist()))
    for r in failed:
        with pytest.raises(MissingRowError, match=f"row {r} "):
            store.get([int(valid[0]), r])
        assert np.all(np.isnan(z[r]))  # what a plain zarr reader sees for it


def test_read_counters_add_up(many_shards: Path) -> None:
    store = LatentStore(many_shards)
    rows = store.valid_rows[:10]  # shards 0..5, row 5 failed
    store.get(rows)
    touched = len({int(r) // store.shard_size for r in rows})
    st = store.stats
    assert st.rows == 10 and st.bytes_needed == 10 * store.row_nbytes
    assert st.bytes_read == st.bytes_needed + touched * index_nbytes(store.shard_size)
    assert 10 + touched <= st.reads <= 2 * 10 + touched  # copies, hints (cold rows), indexes
    frames = open_store(many_shards).frames
    frames.jpegs(int(rows[0]))
    fs = frames.stats
    assert fs.rows == 1 and fs.reads == 1  # one read for the row's two frames
    assert fs.bytes_needed < fs.bytes_read < fs.bytes_needed + 2 * 1024  # + one header, padding


def test_frames_read_in_one_span_equal_frame_by_frame_reads(cache_store: Path) -> None:
    store = open_store(cache_store)
    spans = store.frames._span.copy()
    assert (spans > 0).all()  # every row of a store this code wrote is one read
    whole = {int(r): store.frames.jpegs(int(r)) for r in store.rows}
    store.frames._span[:] = 0  # force the frame-by-frame path
    assert {int(r): store.frames.jpegs(int(r)) for r in store.rows} == whole


def _child_reads(store: LatentStore, rows: np.ndarray, q: mp.Queue) -> None:
    fresh = store.open_files  # descriptors the child's reader holds before reading
    q.put((fresh, store.get(rows).tobytes(), store.open_files))


def test_forked_child_closes_inherited_descriptors_and_reads(many_shards: Path) -> None:
    store = LatentStore(many_shards)
    rows = store.valid_rows[::7]
    want = store.get(rows).tobytes()
    assert store.open_files > 0
    q: mp.Queue = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child_reads, args=(store, rows, q))
    p.start()
    fresh, got, after = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert fresh == 0, "the child kept descriptors it inherited"
    assert got == want and 0 < after <= store._latents.files.capacity


def test_truncated_shard_reads_fail_naming_the_file(many_shards: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(many_shards, copy)
    path = StorePaths(copy).latent_shard(3)
    offsets, _, _ = read_index(path, 2)
    assert offsets[0] != EMPTY
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(Exception, match="latents.zarr/c/3/0/0") as e:
        LatentStore(copy).get([6])
    assert "salt cache verify" in str(e.value)


def test_too_many_open_files_error_is_a_salt_error() -> None:
    from salt_vla.errors import SaltError

    assert issubclass(TooManyOpenFilesError, SaltError)
    assert reader_budget(1024) == 224 and reader_budget(8) == 2

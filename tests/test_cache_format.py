"""Store format pieces on their own: shard files vs zarr-python, frames tars, manifests."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from salt_vla.cache.format import (
    dumps,
    latent_shard_relpath,
    write_json_atomic,
    zarr_array_metadata,
)
from salt_vla.cache.frames import (
    FramesTarWriter,
    decode_jpeg,
    jpeg_round_trip,
)
from salt_vla.cache.frames_reader import iter_frames_shard
from salt_vla.cache.shard import (
    EMPTY,
    ShardFileWriter,
    ShardIndexError,
    index_nbytes,
    read_index,
)


def _write_store_by_hand(root: Path, values: np.ndarray, shard_size: int,
                         failed: set[int]) -> None:
    rows, tokens, dim = values.shape
    meta = zarr_array_metadata(rows, tokens, dim, "float16", shard_size)
    (root / "latents.zarr").mkdir(parents=True)
    (root / "latents.zarr" / "zarr.json").write_bytes(dumps(meta))
    for s in range((rows + shard_size - 1) // shard_size):
        path = root / latent_shard_relpath(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            w = ShardFileWriter(f, shard_size, tokens * dim * 2)
            for local in range(shard_size):
                row = s * shard_size + local
                if row < rows and row not in failed:
                    w.write_row(local, values[row])
            w.close()


def test_hand_written_shards_read_by_zarr(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    values = rng.standard_normal((7, 6, 5)).astype("<f2")
    _write_store_by_hand(tmp_path, values, shard_size=3, failed={4})
    z = zarr.open(str(tmp_path / "latents.zarr"), mode="r")
    assert z.shape == (7, 6, 5) and z.dtype == np.float16
    got = z[:]
    ok = [r for r in range(7) if r != 4]
    np.testing.assert_array_equal(got[ok], values[ok])
    assert np.isnan(got[4]).all(), "a failed row must read as the NaN fill value"


def test_zarr_written_shards_parse_with_our_index(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    values = np.arange(4 * 3 * 2, dtype="<f2").reshape(4, 3, 2)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 3, 2), dtype="float16",
                          chunks=(1, 3, 2), shards=(4, 3, 2), compressors=None,
                          fill_value=np.nan, zarr_format=3)
    z[0] = values[0]
    z[2:4] = values[2:4]
    offsets, nbytes, size = read_index(tmp_path / "a.zarr" / "c" / "0" / "0" / "0", 4)
    assert offsets[1] == EMPTY and nbytes[1] == EMPTY
    data = (tmp_path / "a.zarr" / "c" / "0" / "0" / "0").read_bytes()
    for r in (0, 2, 3):
        row = np.frombuffer(data[int(offsets[r]):int(offsets[r] + nbytes[r])], "<f2")
        np.testing.assert_array_equal(row.reshape(3, 2), values[r])


def test_shard_index_crc_detects_damage(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    with open(path, "wb") as f:
        w = ShardFileWriter(f, 2, 8)
        w.write_row(0, np.ones(4, "<f2"))
        w.close()
    read_index(path, 2)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the index
    path.write_bytes(bytes(data))
    with pytest.raises(ShardIndexError, match="crc32c"):
        read_index(path, 2)
    path.write_bytes(bytes(data[: index_nbytes(2) - 1]))
    with pytest.raises(ShardIndexError, match="truncated"):
        read_index(path, 2)


def test_shard_writer_refuses_out_of_order_rows() -> None:
    w = ShardFileWriter(io.BytesIO(), 4, 8)
    w.write_row(2, np.zeros(4, "<f2"))
    with pytest.raises(ValueError, match="increasing order"):
        w.write_row(1, np.zeros(4, "<f2"))


def _frames(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)


def test_frames_tar_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    def write(path: Path) -> tuple[int, str, list[np.ndarray]]:
        pixels = []
        with open(path, "wb") as f:
            w = FramesTarWriter(f)
            for row in (5, 7):
                jpegs, px = jpeg_round_trip(_frames(row))
                pixels.append(px)
                w.add(f"{row:09d}", jpegs, {"row": row, "video_id": str(row), "view": 0,
                                            "label": 1})
            size, sha = w.close()
        return size, sha, pixels

    size, sha, pixels = write(tmp_path / "a.tar")
    size2, sha2, _ = write(tmp_path / "b.tar")
    assert (size, sha) == (size2, sha2)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert os.path.getsize(tmp_path / "a.tar") == size
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
    samples = list(iter_frames_shard(tmp_path / "a.tar"))
    assert [s["row"] for s in samples] == [5, 7]
    for s, px in zip(samples, pixels, strict=True):
        assert s["frames"].dtype == np.uint8 and s["frames"].shape == (3, 16, 24, 3)
        # the reader sees exactly what the teacher was fed
        np.testing.assert_array_equal(s["frames"], px)
        assert s["label"] == 1 and s["view"] == 0


def test_jpeg_round_trip_is_stable() -> None:
    jpegs, px = jpeg_round_trip(_frames(0))
    again, px2 = jpeg_round_trip(_frames(0))
    assert jpegs == again
    np.testing.assert_array_equal(px, px2)
    np.testing.assert_array_equal(decode_jpeg(jpegs[0]), px[0])


def test_manifest_dumps_is_canonical_json(tmp_path: Path) -> None:
    obj = {"b": {"z": [1, 2], "a": {"x": 1}}, "a": [{"k": 1, "j": 2}], "c": "é"}
    raw = dumps(obj)
    assert json.loads(raw) == obj
    assert raw == dumps(json.loads(raw))
    write_json_atomic(tmp_path / "m.json", obj)
    assert (tmp_path / "m.json").read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"], "temp file left behind"

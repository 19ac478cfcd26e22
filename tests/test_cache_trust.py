"""A store checked on read (issue 16, store side): each row's crc32c as the reader copies
it, each frames sample's .json against the row table."""

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

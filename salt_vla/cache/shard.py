"""One zarr v3 shard file of the latents array, written and parsed without zarr-python.

Per the zarr v3 ``sharding_indexed`` codec with our configuration (format.zarr_array_metadata):
a shard file is the raw inner chunks (one row each, ``tokens * dim`` little-endian values)
followed by the index: ``chunks_per_shard`` pairs of little-endian uint64 ``(offset, nbytes)``
in row order, then the crc32c of those index bytes as a little-endian uint32. A row that was
never written (a failed video, or beyond the end of the array) has ``(2**64-1, 2**64-1)`` and
reads as the fill value. We write rows in order, back to back, so shard bytes are a pure
function of the rows' values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np

from salt_vla.errors import SaltError

EMPTY = np.uint64(2**64 - 1)
INDEX_ENTRY_BYTES = 16
CRC_BYTES = 4


class ShardIndexError(SaltError, ValueError):
    """A shard file's index is missing, truncated or fails its crc32c."""


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """crc32c (Castagnoli) as zarr's crc32c codec computes it."""
    # google_crc32c rejects memoryviews but takes any array exposing the buffer protocol.
    return int(google_crc32c.value(np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)))


def index_nbytes(chunks: int) -> int:
    """Bytes of the index (with its crc32c) at the end of a shard of ``chunks`` inner chunks."""
    return chunks * INDEX_ENTRY_BYTES + CRC_BYTES


def encode_index(offsets: np.ndarray, nbytes: np.ndarray) -> bytes:
    """Index bytes: ``(offset, nbytes)`` uint64 pairs then their crc32c."""
    table = np.stack([offsets.astype("<u8"), nbytes.astype("<u8")], axis=1)
    raw = np.ascontiguousarray(table).tobytes()
    return raw + np.uint32(crc32c(raw)).astype("<u4").tobytes()


def parse_index(tail: bytes | memoryview | np.ndarray, chunks: int,
                where: str = "shard") -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, nbytes)`` uint64 arrays from the last ``index_nbytes(chunks)`` bytes of a
    shard file; raises ShardIndexError when the crc32c does not match."""
    buf = np.frombuffer(memoryview(tail).cast("B"), dtype=np.uint8)
    need = index_nbytes(chunks)
    if buf.size != need:
        raise ShardIndexError(f"{where}: index needs {need} bytes, got {buf.size}")
    raw = buf[:-CRC_BYTES]
    stored = int(buf[-CRC_BYTES:].view("<u4")[0])
    if crc32c(raw) != stored:
        raise ShardIndexError(f"{where}: shard index fails its crc32c (file damaged)")
    table = raw.view("<u8").reshape(chunks, 2)
    return table[:, 0].copy(), table[:, 1].copy()


def read_index(path: Path, chunks: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse the index of the shard file at ``path``; returns ``(offsets, nbytes, file_size)``
    and checks that every chunk lies inside the data part of the file."""
    need = index_nbytes(chunks)
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < need:
            raise ShardIndexError(f"{path}: {size} bytes, shorter than its {need}-byte index "
                                  f"(truncated)")
        f.seek(size - need)
        offsets, nbytes = parse_index(f.read(need), chunks, str(path))
    present = offsets != EMPTY
    if np.any(offsets[present] + nbytes[present] > size - need):
        raise ShardIndexError(f"{path}: index points past the end of the data (truncated)")
    return offsets, nbytes, size


class ShardFileWriter:
    """Streams one shard file: rows in increasing order, then the index on ``close``.

    Keeps only the index in memory, so a 600 MB shard never sits in RAM. Computes each
    row's crc32c and the whole file's sha256 as it goes (the commit record's checksums).
    """

    def __init__(self, f: BinaryIO, chunks: int, row_nbytes: int) -> None:
        self._f = f
        self.chunks = chunks
        self.row_nbytes = row_nbytes
        self.offsets = np.full(chunks, EMPTY, dtype=np.uint64)
        self.nbytes = np.full(chunks, EMPTY, dtype=np.uint64)
        self.row_crc: list[int | None] = [None] * chunks
        self._pos = 0
        self._last = -1
        self._sha = hashlib.sha256()

    def write_row(self, local: int, row: np.ndarray) -> int:
        """Write the row at local position ``local`` (increasing); returns its crc32c."""
        if not self._last < local < self.chunks:
            raise ValueError(f"rows must be written in increasing order within the shard; got "
                             f"{local} after {self._last}")
        data = memoryview(np.ascontiguousarray(row)).cast("B")
        if data.nbytes != self.row_nbytes:
            raise ValueError(f"row {local} has {data.nbytes} bytes, expected {self.row_nbytes}")
        self._f.write(data)
        self._sha.update(data)
        self.offsets[local] = self._pos
        self.nbytes[local] = data.nbytes
        self._pos += data.nbytes
        self._last = local
        crc = crc32c(data)
        self.row_crc[local] = crc
        return crc

    def close(self) -> tuple[int, str]:
        """Append the index; returns ``(file_size, sha256 hex)``. The caller fsyncs."""
        index = encode_index(self.offsets, self.nbytes)
        self._f.write(index)
        self._sha.update(index)
        self._pos += len(index)
        return self._pos, self._sha.hexdigest()

"""Random access by row to the store's frames tars (the student's input pixels).

The cache's own reader streams the tars (webdataset). Training wants random access instead
(a global shuffle each epoch, and exact resume by position), so this module indexes the tar
members once — names and byte offsets only, from the headers — and then reads a row's JPEGs
with one ``pread`` per frame, decoding them with the cache's own ``decode_jpeg`` so the
student sees exactly the pixels the teacher saw.

Indexing reads only the 512-byte member headers (one ``pread`` each; see
:func:`_scan_ustar`). The index is a handful of flat numpy arrays: DataLoader workers
inherit it through fork without copy-on-write growth (a dict of Python objects would be
touched, and so copied page by page, as workers read it).
"""

from __future__ import annotations

import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from salt_vla.cache.frames import decode_jpeg
from salt_vla.errors import SaltError


class FramesIndexError(SaltError, ValueError):
    """A frames tar that cannot be indexed, or a row it does not hold."""


_BLOCK = 512
_FILE_TYPES = (b"0", b"\0")
_SKIP_TYPES = (b"5",)  # directories: no data


def _scan_ustar(path: Path) -> list[tuple[bytes, int, int]]:
    """``(name, data offset, size)`` of every regular member, from the raw 512-byte headers.

    Several times faster than ``tarfile`` (one ``pread`` and a few slices per member), which
    matters for SSv2: ~2.9M members in ~660 shards. Raises ValueError on anything but plain
    ustar headers (the cache writes nothing else); the caller then falls back to ``tarfile``.
    """
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off + _BLOCK <= size:
            hdr = os.pread(fd, _BLOCK, off)
            if hdr.count(0) == _BLOCK:
                return out  # end-of-archive marker
            if hdr[257:262] != b"ustar":  # also catches a misaligned (damaged) archive
                raise ValueError(f"no ustar header at byte {off}")
            n = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
            kind = hdr[156:157]
            if kind in _FILE_TYPES:
                name = hdr[:100].split(b"\0", 1)[0]
                prefix = hdr[345:500].split(b"\0", 1)[0]
                out.append((prefix + b"/" + name if prefix else name, off + _BLOCK, n))
            elif kind not in _SKIP_TYPES:
                raise ValueError(f"unsupported tar member type {kind!r} at byte {off}")
            off += _BLOCK + (n + _BLOCK - 1) // _BLOCK * _BLOCK
        if off != size:
            raise ValueError(f"truncated: the next member would start at byte {off}, the file "
                             f"has {size} bytes")
    finally:
        os.close(fd)
    return out


def _members(path: Path) -> list[tuple[bytes, int, int]]:
    try:
        return _scan_ustar(path)
    except ValueError:  # something tarfile may still understand (pax headers, ...)
        with tarfile.open(path, mode="r:") as tar:
            return [(m.name.encode(), m.offset_data, m.size) for m in tar if m.isfile()]


def _index_tar(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, frame_no, offsets, sizes)`` of every ``<row>.<t>.jpg`` member of one tar."""
    rows: list[int] = []
    frame_no: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    try:
        for name, data_off, n in _members(path):
            base = name.rsplit(b"/", 1)[-1]
            key, _, ext = base.partition(b".")
            if not ext.endswith(b".jpg"):
                continue
            rows.append(int(key))
            frame_no.append(int(ext[: -len(b".jpg")]))
            offsets.append(data_off)
            sizes.append(n)
    except (tarfile.TarError, OSError, ValueError) as e:
        raise FramesIndexError(
            f"cannot index frames tar {path}: {e}. Run `salt cache verify` on the store"
        ) from e
    return (np.asarray(rows, np.int64), np.asarray(frame_no, np.int32),
            np.asarray(offsets, np.int64), np.asarray(sizes, np.int64))


class TarFrames:
    """``frames(row) -> uint8 [T, H, W, 3]`` over a list of frames tars.

    Safe to use from forked DataLoader workers: file descriptors are opened lazily per
    process.
    """

    def __init__(self, shards: list[Path], threads: int = 8) -> None:
        self.shards = [Path(s) for s in shards]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            parts = list(pool.map(_index_tar, self.shards))
        shard_ids = np.concatenate(
            [np.full(len(p[0]), i, np.int32) for i, p in enumerate(parts)]
        ) if parts else np.empty(0, np.int32)
        rows = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
        frame_no = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int32)
        offsets = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64)
        sizes = np.concatenate([p[3] for p in parts]) if parts else np.empty(0, np.int64)
        # Members sorted by (row, frame): a row's frames are one contiguous slice.
        order = np.lexsort((frame_no, rows))
        self._shard = shard_ids[order]
        self._offset = offsets[order]
        self._size = sizes[order]
        rows = rows[order]
        self.rows, self._start, counts = np.unique(rows, return_index=True, return_counts=True)
        self._count = counts.astype(np.int32)
        self._fds: dict[int, int] = {}
        self._pid = -1
        self._lock = threading.Lock()  # decode threads share the descriptors

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_pid"] = {}, -1  # descriptors do not cross processes
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # first use in this process (e.g. a forked worker)
            # A forked child inherits a lock that may have been held mid-fork: replace it.
            self._lock = threading.Lock()
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self.shards[shard], os.O_RDONLY)
                    self._fds[shard] = fd
        return fd

    def jpegs(self, row: int) -> list[bytes]:
        """The JPEG bytes of ``row``'s frames, in frame order."""
        i = int(np.searchsorted(self.rows, row))
        if i >= len(self.rows) or self.rows[i] != row:
            raise FramesIndexError(f"row {row} is not in the frames tars ({len(self)} rows)")
        start, count = int(self._start[i]), int(self._count[i])
        out = []
        for j in range(start, start + count):
            size = int(self._size[j])
            data = os.pread(self._fd(int(self._shard[j])), size, int(self._offset[j]))
            if len(data) != size:
                raise FramesIndexError(
                    f"short read of row {row} in {self.shards[int(self._shard[j])]} "
                    "(truncated tar?): run `salt cache verify`"
                )
            out.append(data)
        return out

    def frames(self, row: int) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` pixels of ``row`` as the teacher saw them."""
        return np.stack([decode_jpeg(j) for j in self.jpegs(row)])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

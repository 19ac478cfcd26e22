"""The one reader of the store's frames tars (the student's input pixels).

Every reader of a frames tar goes through :func:`scan_members` (names and byte offsets of
the members, from the 512-byte headers) or through the member table a shard's commit record
holds since format version 2 (the same offsets, recorded by the writer, so nothing is
scanned):

- :class:`TarFrames`: random access by row, for training (a global shuffle each epoch, and
  exact resume by position). A row's .json and frames are adjacent in its tar, so they are
  read with one ``pread`` of exactly their span (the headers between them included); the
  .json is checked against the row table, and the frames are decoded with
  the cache's own ``decode_jpeg``, so the student sees exactly the pixels the teacher saw. At
  most ``open_files`` tars are open at once (an LRU, ``reads.OpenFiles``).
- :func:`iter_tar_files` / :func:`iter_frames_shard`: a whole shard in file order
  (``salt cache verify``, tests).
- :func:`frames_pipeline`: the same tars through webdataset (its own tar reader), for users
  who stream the store with the webdataset stack.

The row index is a handful of flat numpy arrays: DataLoader workers inherit it through fork
without copy-on-write growth (a dict of Python objects would be touched, and so copied page
by page, as workers read it).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.format import MANIFEST, SHARD_COMMITTED, frame_key, row_record_mismatch
from salt_vla.cache.frames import decode_jpeg
from salt_vla.cache.reads import OpenFiles, ReadStats, pread_exact
from salt_vla.errors import SaltError


class FramesIndexError(SaltError, ValueError):
    """A frames tar that cannot be indexed, or a row it does not hold."""


BLOCK = tarfile.BLOCKSIZE  # 512: one ustar header, and the unit data is padded to
_FILE_TYPES = (b"0", b"\0")
_SKIP_TYPES = (b"5",)  # directories: no data

# (name, data offset, data size) of one regular tar member.
Member = tuple[bytes, int, int]
# (row_start, members) of one shard, as its commit record holds it (see _recorded_members).
MemberTable = tuple[int, Sequence[Sequence[int] | None]]
# (rows, frame numbers, data offsets, data sizes) of the members of one or more tars;
# int64 / int32 / int64 / int64, one entry per member, a row's .json as frame JSON_MEMBER.
_Index = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
JSON_MEMBER = -1  # sorts before frame 0: a row's members are .json, then frames in order


def _scan_ustar(path: Path) -> list[Member]:
    """Every regular member, from the raw 512-byte headers (one ``pread`` each).

    Several times faster than ``tarfile`` (one ``pread`` and a few slices per member), which
    matters for SSv2: ~2.9M members in ~660 shards. Raises FramesIndexError on a truncated
    archive, and ValueError on anything but the plain ustar headers the cache writes (the
    caller then asks ``tarfile``).
    """
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off + BLOCK <= size:
            hdr = os.pread(fd, BLOCK, off)
            if hdr.count(0) == BLOCK:
                return out  # end-of-archive marker
            if hdr[257:262] != b"ustar":  # also catches a misaligned (damaged) archive
                raise ValueError(f"no ustar header at byte {off}")
            n = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
            kind = hdr[156:157]
            if kind in _FILE_TYPES:
                name = hdr[:100].split(b"\0", 1)[0]
                prefix = hdr[345:500].split(b"\0", 1)[0]
                out.append((prefix + b"/" + name if prefix else name, off + BLOCK, n))
            elif kind not in _SKIP_TYPES:
                raise ValueError(f"unsupported tar member type {kind!r} at byte {off}")
            off += BLOCK + (n + BLOCK - 1) // BLOCK * BLOCK
        if off != size:
            raise FramesIndexError(f"cannot index frames tar {path}: truncated: the next "
                                   f"member would start at byte {off}, the file has {size} "
                                   "bytes")
    finally:
        os.close(fd)
    return out


def scan_members(path: Path | str) -> list[Member]:
    """``(name, data offset, size)`` of every regular member of the tar at ``path``, in file
    order; the header scan that format-version-1 stores (no member tables) need.

    Raises FramesIndexError naming the file when it is truncated or not a tar.
    """
    path = Path(path)
    try:
        return _scan_ustar(path)
    except FramesIndexError:
        raise
    except OSError as e:
        raise FramesIndexError(f"cannot index frames tar {path}: {e}") from e
    except ValueError:  # a header the fast scanner does not parse (pax, GNU long names, ...)
        pass
    try:
        with tarfile.open(path, mode="r:") as tar:
            return [(m.name.encode(), m.offset_data, m.size) for m in tar if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FramesIndexError(f"cannot index frames tar {path}: {e}") from e


def split_member_name(name: bytes) -> tuple[bytes, bytes]:
    """``b"dir/000000007.003.jpg"`` -> ``(b"000000007", b"003.jpg")`` (webdataset's split)."""
    key, _, ext = name.rsplit(b"/", 1)[-1].partition(b".")
    return key, ext


def _scanned_index(path: Path) -> _Index:
    """The members of one tar (each row's .json as frame ``JSON_MEMBER``), from its
    headers."""
    rows: list[int] = []
    frame_no: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    try:
        for name, data_off, n in scan_members(path):
            key, ext = split_member_name(name)
            if ext == b"json":
                frame = JSON_MEMBER
            elif ext.endswith(b".jpg"):
                frame = int(ext[: -len(b".jpg")])
            else:
                continue
            rows.append(int(key))
            frame_no.append(frame)
            offsets.append(data_off)
            sizes.append(n)
    except FramesIndexError as e:
        raise FramesIndexError(f"{e}. Run `salt cache verify` on the store") from e
    except ValueError as e:  # a member name that is not <row>.<frame>.jpg
        raise FramesIndexError(f"cannot index frames tar {path}: {e}. Run `salt cache verify` "
                               "on the store") from e
    return (np.asarray(rows, np.int64), np.asarray(frame_no, np.int32),
            np.asarray(offsets, np.int64), np.asarray(sizes, np.int64))


def _recorded_members(tables: Sequence[MemberTable]) -> tuple[np.ndarray, ...]:
    """Every member of several tars, from their commit records' member tables.

    ``tables[j] = (row_start, members)``; ``members[i]`` is ``None`` (a failed row) or
    ``[offset, n_0, ..., n_T]``: the byte offset of the row's first header and the data size
    of each of its members in tar order (``<key>.json``, then frames 0..T-1). Each member is
    one 512-byte ustar header plus its data padded to 512, so member ``k``'s data starts at
    ``offset + 512 * (k + 1) + sum(pad512(n_j) for j < k)``.

    Returns flat arrays with one entry per member: ``(table j, row, k, data offset, size)``.
    """
    owner_table: list[int] = []
    rows: list[int] = []
    first: list[int] = []
    counts: list[int] = []
    sizes: list[int] = []
    for j, (row_start, members) in enumerate(tables):
        for local, entry in enumerate(members):
            if entry is None:
                continue
            owner_table.append(j)
            rows.append(row_start + local)
            first.append(entry[0])
            counts.append(len(entry) - 1)
            sizes.extend(entry[1:])
    n = np.asarray(sizes, np.int64)
    count = np.asarray(counts, np.int64)
    span = BLOCK + (n + BLOCK - 1) // BLOCK * BLOCK  # header + padded data of each member
    owner = np.repeat(np.arange(len(rows)), count)  # the row of each member
    row_begin = np.cumsum(count) - count  # position of each row's first member in ``n``
    before = np.cumsum(span) - span  # bytes of all earlier members, of every row
    within = before - before[row_begin][owner]  # ... of the earlier members of the same row
    data = np.asarray(first, np.int64)[owner] + within + BLOCK
    k = np.arange(len(n)) - row_begin[owner]  # position of the member within its row
    return (np.asarray(owner_table, np.int64)[owner], np.asarray(rows, np.int64)[owner], k,
            data, n)


def table_members(row_start: int, members: Sequence[Sequence[int] | None]) -> list[Member]:
    """The ``(name, data offset, size)`` list a header scan of the tar must give, from its
    member table (``salt cache verify`` compares the two)."""
    out: list[Member] = []
    for local, entry in enumerate(members):
        if entry is not None:
            out += row_members(row_start + local, entry)
    return out


def row_members(row: int, entry: Sequence[int]) -> list[Member]:
    """``(name, data offset, size)`` of one row's members from its member-table entry
    ``[offset, n_0, ..., n_T]`` (the rule of :func:`_recorded_members`, one row in plain
    Python: numpy costs more than it saves on 17 numbers)."""
    key = frame_key(row)
    off = int(entry[0])
    out = []
    for k, n in enumerate(entry[1:]):
        ext = "json" if k == 0 else f"{k - 1:03d}.jpg"
        out.append((f"{key}.{ext}".encode(), off + BLOCK, int(n)))
        off += BLOCK + (int(n) + BLOCK - 1) // BLOCK * BLOCK
    return out


def _recorded_index(tables: Sequence[MemberTable]) -> tuple[np.ndarray, _Index]:
    """The members of several tars from their member tables: the table ``j`` of each, and
    the index (member 0, the row's <key>.json, as frame ``JSON_MEMBER``)."""
    tab, rows, k, data, n = _recorded_members(tables)
    return tab, (rows, (k - 1).astype(np.int32), data, n)


class FramesRowError(FramesIndexError):
    """A row's sample in a frames tar is another row's, by its .json: its label, video id,
    view or row number disagree with the row table (rows swapped, or a tar replaced)."""


class TarFrames:
    """``frames(row) -> uint8 [T, H, W, 3]`` over a list of frames tars.

    ``row_table`` (``cache.json["rows"]``), when given, is checked on every read: the row's
    ``<key>.json`` (read in the same ``pread`` as its frames: its header and ~120 bytes more)
    must hold the row's video id, view and label, else :class:`FramesRowError` (a student
    would otherwise learn to predict one clip's latents from another's pixels).

    ``recorded[i]``, when given and not None, is shard ``i``'s member table
    ``(row_start, members)`` from its commit record (see :func:`_recorded_index`): that tar is
    indexed without reading it. Shards without one are indexed by a header scan, several at
    once (``threads``). :meth:`from_manifest` opens a store's tars this way.

    Safe to use from forked DataLoader workers: file descriptors are opened lazily per
    process, at most ``open_files`` at once (default ``reads.reader_budget()``); ``stats``
    counts the bytes read vs the JPEG bytes needed.
    """

    def __init__(self, shards: Sequence[Path | str],
                 recorded: Sequence[MemberTable | None] | None = None, threads: int = 8,
                 open_files: int | None = None, row_table: dict[str, Any] | None = None,
                 root: Path | str | None = None) -> None:
        self.shards = list(shards)  # Paths or strings, as given (os.open takes either)
        self.row_table = row_table
        self.root = root  # the store, for messages
        tables = list(recorded) if recorded is not None else [None] * len(self.shards)
        if len(tables) != len(self.shards):
            raise ValueError(f"{len(tables)} member tables for {len(self.shards)} shards")
        with_table = [i for i, t in enumerate(tables) if t is not None]
        to_scan = [i for i, t in enumerate(tables) if t is None]
        parts: list[tuple[np.ndarray, _Index]] = []
        if with_table:
            tab, index = _recorded_index([t for t in tables if t is not None])
            parts.append((np.asarray(with_table, np.int32)[tab], index))
        if to_scan:
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                scanned = list(pool.map(_scanned_index, [self.shards[i] for i in to_scan]))
            for i, index in zip(to_scan, scanned, strict=True):
                parts.append((np.full(len(index[0]), i, np.int32), index))
        shard_ids = _cat([p[0] for p in parts], np.int32)
        rows = _cat([p[1][0] for p in parts], np.int64)
        frame_no = _cat([p[1][1] for p in parts], np.int32)
        offsets = _cat([p[1][2] for p in parts], np.int64)
        sizes = _cat([p[1][3] for p in parts], np.int64)
        # Members sorted by (row, frame): a row's frames are one contiguous slice.
        order = np.lexsort((frame_no, rows))
        self._shard = shard_ids[order]
        self._offset = offsets[order]
        self._size = sizes[order]
        rows = rows[order]
        self.rows, self._start, counts = np.unique(rows, return_index=True, return_counts=True)
        self._count = counts.astype(np.int32)
        self._json = frame_no[order][self._start] == JSON_MEMBER  # per row: has a .json
        self._span = _row_spans(self._shard, self._offset, self._size, self._start,
                                self._count)
        self.stats = ReadStats()
        self._files = OpenFiles(self.shards, open_files, stats=self.stats)

    @classmethod
    def from_manifest(cls, root: Path | str, meta: dict[str, Any], threads: int = 8
                      ) -> TarFrames:
        """The frames tars of the committed shards of the store at ``root`` (``meta`` =
        its cache.json), indexed from the recorded member tables where the shards have them
        (format version 2) and by a header scan where not (version 1).

        Each tar's size is checked against its record (one ``stat``, no read), so a truncated
        or replaced tar is refused here rather than as a short read mid-run.
        """
        root = Path(root)
        shards = [s for s in meta["shards"] if s.get("status") == SHARD_COMMITTED]
        where = str(root)  # strings: a Path per tar costs ~0.1 ms (0.3 s for 2,640 tars)
        paths = [f"{where}/{s['frames']['path']}" for s in shards]
        recorded_bytes = np.asarray([s["frames"]["bytes"] for s in shards], np.int64)
        for path, want in zip(paths, recorded_bytes.tolist(), strict=True):
            try:
                have = os.stat(path).st_size
            except FileNotFoundError:
                raise FramesIndexError(f"frames tar {path} is missing; run `salt cache verify "
                                       f"{root}`") from None
            if have != want:
                raise FramesIndexError(
                    f"frames tar {path} has {have} bytes, its commit record says {want} "
                    f"(truncated or replaced); run `salt cache verify {root}`")
        tables: list[MemberTable | None] = [
            (s["row_start"], s["frames"]["members"]) if "members" in s["frames"] else None
            for s in shards]
        try:
            frames = cls(paths, tables, threads, row_table=meta.get("rows"), root=root)
        except FramesIndexError:  # a scan's own error (version-1 shards)
            raise
        except (TypeError, ValueError, IndexError) as e:  # a table not shaped as documented
            raise FramesIndexError(f"{root / MANIFEST}: a frames member table is malformed "
                                   f"({e}); run `salt cache verify {root}`") from e
        past = frames._offset + frames._size > recorded_bytes[frames._shard]
        if past.any():
            path = paths[int(frames._shard[np.flatnonzero(past)[0]])]
            raise FramesIndexError(f"the member table of {path} points past the end of the "
                                   f"file (cache.json edited?); run `salt cache verify {root}`")
        return frames

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def open_files(self) -> int:
        """Tars this process holds open now."""
        return self._files.open_count

    def jpegs(self, row: int) -> list[bytes]:
        """The JPEG bytes of ``row``'s frames, in frame order (its .json checked against the
        row table, when the reader has one)."""
        i = self._position(row)
        members = self._members(row, i)
        if not self._json[i]:
            return members
        if self.row_table is not None:
            wrong = row_record_mismatch(self.row_table, row, members[0])
            if wrong is not None:
                shard = self.shards[int(self._shard[int(self._start[i])])]
                store = f" {self.root}" if self.root is not None else ""
                raise FramesRowError(
                    f"frames tar {shard}: the sample of row {row} is not that row's: its .json "
                    f"has {wrong} (rows swapped or the tar replaced after the build); run "
                    f"`salt cache verify{store}`")
        return members[1:]

    def _position(self, row: int) -> int:
        """``row``'s place in the index (FramesIndexError when the tars do not hold it)."""
        i = int(np.searchsorted(self.rows, row))
        if i >= len(self.rows) or self.rows[i] != row:
            raise FramesIndexError(f"row {row} is not in the frames tars ({len(self)} rows)")
        return i

    def _members(self, row: int, i: int) -> list[bytes]:
        """The data of every member of ``row``, at index place ``i`` (its .json first, when
        it has one)."""
        start, count = int(self._start[i]), int(self._count[i])
        shard = int(self._shard[start])
        span = int(self._span[i])
        offsets = self._offset[start:start + count].tolist()
        sizes = self._size[start:start + count].tolist()
        if span > 0:  # the usual case: one read of the row's frames and the headers between
            buf = bytearray(span)
            with self._files.fd(shard) as fd:
                n = pread_exact(fd, memoryview(buf), offsets[0])
            if n != span:
                self._short(row, shard)
            mv = memoryview(buf)
            out = [bytes(mv[o - offsets[0]:o - offsets[0] + k]) for o, k in zip(offsets, sizes,
                                                                               strict=True)]
            self.stats.add(1, sum(sizes), span, 1)
            return out
        out = []  # frames not adjacent in one tar (a version-1 tar by another writer)
        for j in range(start, start + count):
            size = int(self._size[j])
            with self._files.fd(int(self._shard[j])) as fd:
                data = os.pread(fd, size, int(self._offset[j]))
            if len(data) != size:
                self._short(row, int(self._shard[j]))
            out.append(data)
        self.stats.add(1, sum(sizes), sum(sizes), count)
        return out

    def _short(self, row: int, shard: int) -> None:
        raise FramesIndexError(f"short read of row {row} in {self.shards[shard]} (truncated "
                               "tar?): run `salt cache verify`")

    def frames(self, row: int) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` pixels of ``row`` as the teacher saw them."""
        return np.stack([decode_jpeg(j) for j in self.jpegs(row)])

    def close(self) -> None:
        """Close the tars (the reader stays usable: it reopens what it needs)."""
        self._files.close()


def _row_spans(shard: np.ndarray, offset: np.ndarray, size: np.ndarray, start: np.ndarray,
               count: np.ndarray) -> np.ndarray:
    """Per row: the bytes from its first frame's data to its last frame's end when its frames
    lie in one tar in frame order with only headers and padding between them (as the cache
    writes them), so one read serves the row; 0 where not (read frame by frame)."""
    if not len(start):
        return np.zeros(0, np.int64)
    last = start + count - 1
    span = offset[last] + size[last] - offset[start]
    one_tar = np.maximum.reduceat(shard, start) == np.minimum.reduceat(shard, start)
    # Frame j+1 must start after frame j ends, within the same row.
    gap_ok = np.ones(len(offset), bool)
    gap_ok[1:] = offset[1:] >= offset[:-1] + size[:-1]
    gap_ok[start] = True  # a row's first frame follows another row's: not a gap of this row
    ordered = np.minimum.reduceat(gap_ok, start).astype(bool)
    # Only headers (512 each) and padding (< 512 each) between the frames.
    tight = span <= np.add.reduceat(size, start) + count.astype(np.int64) * 2 * BLOCK
    return np.where(one_tar & ordered & tight, span, 0).astype(np.int64)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)


# --- whole shards, in file order -------------------------------------------------------------


def iter_tar_files(path: Path | str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a frames tar, in file order, without decoding."""
    members = scan_members(path)
    key: str | None = None
    files: dict[str, bytes] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for name, data_off, n in members:
            k, ext = (p.decode("utf-8", "surrogateescape") for p in split_member_name(name))
            if key is not None and k != key:
                yield key, files
                files = {}
            key = k
            data = os.pread(fd, n, data_off)
            if len(data) != n:
                raise FramesIndexError(f"short read of {name.decode(errors='replace')} in "
                                       f"{path} (truncated tar?)")
            files[ext] = data
    finally:
        os.close(fd)
    if key is not None:
        yield key, files


def group_sample(key: str, files: dict[str, bytes]) -> dict[str, Any]:
    """Files of one sample (extension -> bytes) -> ``{"row", "frames", "label", "video_id",
    "view"}`` with frames uint8 ``[T, H, W, 3]``."""
    if "json" not in files:
        raise ValueError(f"frames sample {key} has no {key}.json")
    meta = json.loads(files["json"])
    names = sorted(e for e in files if e.endswith(".jpg"))
    if not names:
        raise ValueError(f"frames sample {key} has no frames")
    frames = np.stack([decode_jpeg(files[n]) for n in names])
    return {"row": int(meta["row"]), "frames": frames, "label": int(meta["label"]),
            "video_id": str(meta["video_id"]), "view": int(meta["view"])}


def iter_frames_shard(path: Path | str) -> Iterator[dict[str, Any]]:
    """Decoded samples of one frames tar, in row order (no webdataset needed)."""
    for key, files in iter_tar_files(path):
        yield group_sample(key, files)


def _decode_wds(sample: dict[str, Any]) -> dict[str, Any]:
    files = {k: v for k, v in sample.items() if not k.startswith("__")}
    return group_sample(sample["__key__"], files)


def frames_pipeline(
    shards: Iterable[Path | str],
    *,
    shuffle_shards: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 0,
    split_by_node: bool = True,
    split_by_worker: bool = True,
) -> Any:
    """A webdataset pipeline over frames tars yielding ``{"row", "frames", "label",
    "video_id", "view"}``.

    Shards are shuffled with ``seed`` and a per-iteration epoch counter (same order on every
    rank, so the node split stays disjoint), then split across ``torch.distributed`` ranks and
    DataLoader workers; ``shuffle_buffer`` > 0 also shuffles samples within that buffer.
    Use it as an IterableDataset (``DataLoader(pipeline, num_workers=...)``).
    """
    import webdataset as wds

    urls = [str(s) for s in shards]
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if shuffle_shards:
        stages.append(wds.detshuffle(bufsize=max(len(urls), 1), initial=max(len(urls), 1),
                                     seed=seed))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages.append(wds.tarfile_to_samples())
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=seed))
    stages.append(wds.map(_decode_wds))
    return wds.DataPipeline(*stages)

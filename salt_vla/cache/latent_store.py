"""LatentStore: the reader of cached teacher latents, exact reads of the shard files.

zarr-python decodes a sharded read through its async codec pipeline (~450 clips/s on this
class of machine); the bytes of a row are already contiguous and uncompressed in the shard
file, so copying exactly those bytes at the shard index's offset serves them at memcpy speed
when they are cached and at the device's speed when not:

- shard files are memory-mapped with ``MADV_RANDOM`` (a page fault reads its page only: the
  plain map of the previous reader read 4.4-4.6x the needed bytes of a cold shuffled store on
  the measuring VM, whose read-around window is 8 MB), and a batch's row ranges are hinted
  with ``MADV_WILLNEED`` before they are copied: the kernel queues exactly those pages at
  once, so a cold batch keeps the device busy; warm, the copy is a user-space memcpy from the
  page cache (a ``pread`` into the batch array measured 2x slower on the VM);
- the copies of a batch are shared by a small thread pool (``threads``), and
  :meth:`get_async` reads the next batches ahead while the caller works;
- at most ``open_files`` shard maps are open (an LRU, see ``reads.py``, one descriptor each):
  a 2,640-shard store trains under ``ulimit -n 1024``;
- ``stats`` counts the bytes asked for vs needed;
- ``verify_reads`` (default on) checks each row's crc32c against its commit record's
  ``row_crc32c`` (and ``scale_crc32c``, int8) as it is copied: google-crc32c runs at GB/s
  (the overhead is in BENCHMARKS.md), and a flipped byte then stops a run at the row instead
  of training on it. A mismatch is a :class:`RowChecksumError` naming the row and the shard.

Each shard's index is parsed once per process (and inherited by forked DataLoader workers);
maps and threads are per process, so the store can be created in the main process and used
in forked (or spawned) workers. int8 stores (``quantize.py``) are dequantised here: the
caller gets float16 rows either way. As with any memory map, a shard file truncated while it
is mapped faults (SIGBUS) on the missing pages: committed files are never rewritten, and
``salt cache verify`` finds one that was.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    QUANTIZED_DTYPES,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    latent_shard_relpath,
    read_json,
    read_manifest,
    row_record,
    scale_shard_relpath,
    zarr_array_metadata,
    zarr_scale_metadata,
)
from salt_vla.cache.quantize import SCALE_DTYPE, dequantize_into
from salt_vla.cache.reads import OpenFiles, ReadStats
from salt_vla.cache.shard import EMPTY, crc32c, index_from, index_nbytes
from salt_vla.errors import SaltError

READ_THREADS = 4  # reads of one batch in flight at once (cold reads need a queue)


class RowChecksumError(SaltError, ValueError):
    """A row's bytes do not have the crc32c its commit record holds: the shard file was
    changed or damaged after the build."""


class MissingRowError(SaltError, KeyError):
    """A requested row has no latents (its video failed to decode, or its shard is missing)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _load_mincore() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _load_mincore()


def map_address(m: mmap.mmap) -> int:
    """Where map ``m`` starts in this process's memory."""
    return np.frombuffer(m, np.uint8, 1, 0).__array_interface__["data"][0]


def resident(address: int, vec: ctypes.Array) -> bool:
    """Whether the page at ``address`` (page-aligned, inside a map) is in the page cache
    (``mincore`` into ``vec``, a 1-byte buffer; False where it cannot be asked, so the caller
    hints)."""
    if _MINCORE is None or _MINCORE(address, mmap.PAGESIZE, vec) != 0:
        return False
    return bool(vec[0] & 1)


class _ShardFiles:
    """One sharded array of the store (the latents, or the int8 scales): its files mapped
    behind an LRU (``reads.OpenFiles``, ``MADV_RANDOM`` maps), and each shard's parsed index."""

    def __init__(self, root: Path, paths: list[str], shard_size: int, row_nbytes: int,
                 capacity: int | None, stats: ReadStats) -> None:
        self.root = root
        self.files = OpenFiles(paths, capacity, kind="map", stats=stats)
        self.shard_size = shard_size
        self.row_nbytes = row_nbytes
        self.stats = stats
        self.offsets: dict[int, np.ndarray] = {}  # shard -> uint64 row offsets, EMPTY = none
        self._address: dict[int, tuple[mmap.mmap, int]] = {}  # shard -> (its map, address)
        # mincore's answer. Two threads hinting at once may mix answers up: that only decides
        # whether a row is hinted, never what is read.
        self._vec = (ctypes.c_ubyte * 1)()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_address"] = {}  # maps and ctypes buffers do not cross processes
        del state["_vec"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._vec = (ctypes.c_ubyte * 1)()

    def index(self, shard: int) -> np.ndarray:
        got = self.offsets.get(shard)
        if got is None:
            got = self.offsets[shard] = self._read_index(shard)
        return got

    def _read_index(self, shard: int) -> np.ndarray:
        path = self.files.paths[shard]
        start = shard * self.shard_size
        try:
            with self.files.fd(shard) as m:
                offsets, nbytes = index_from(lambda off, n: m[off:off + n], len(m),
                                             self.shard_size, str(path))
        except FileNotFoundError:
            raise MissingRowError(f"shard file {path} (rows {start}..) is missing; run "
                                  f"`salt cache verify {self.root}`") from None
        except ValueError as e:  # ShardIndexError, or an empty file mmap refuses
            raise CacheFormatError(f"{path}: {e}; run `salt cache verify {self.root}`") from None
        self.stats.add(0, 0, index_nbytes(self.shard_size), 1)
        bad = (offsets != EMPTY) & (nbytes != self.row_nbytes)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise CacheFormatError(
                f"{path}: row {row} is stored as {int(nbytes[bad][0])} bytes, expected "
                f"{self.row_nbytes} raw bytes (compressed or damaged); run `salt cache verify`"
            )
        return offsets

    def offset(self, shard: int, local: int) -> int | None:
        off = self.index(shard)[local]
        return None if off == EMPTY else int(off)

    def hint(self, shard: int, offset: int) -> bool:
        """Ask the kernel to read the row at ``offset`` now (``MADV_WILLNEED``: it queues
        exactly those pages and returns), unless its first and last pages are in the page
        cache already (then the row is taken to be: a warm read skips the hint, which costs
        as much as 7% of the copy). Returns whether it hinted."""
        start = offset - offset % mmap.PAGESIZE
        last = offset + self.row_nbytes - 1
        with self.files.fd(shard) as m:
            known = self._address.get(shard)
            if known is None or known[0] is not m:  # (re)opened since: look it up again
                known = self._address[shard] = (m, map_address(m))
            base, vec = known[1], self._vec
            if resident(base + start, vec) and resident(base + last - last % mmap.PAGESIZE,
                                                        vec):
                return False
            m.madvise(mmap.MADV_WILLNEED, start, offset + self.row_nbytes - start)
        return True

    def read(self, shard: int, offset: int, out: np.ndarray) -> None:
        """The row at ``offset`` of ``shard`` into ``out`` (uint8, ``row_nbytes``)."""
        with self.files.fd(shard) as m:
            out[...] = np.frombuffer(m, np.uint8, self.row_nbytes, offset)

    def view(self, shard: int, offset: int, dtype: np.dtype, shape: tuple[int, ...],
             use: Callable[[np.ndarray], None]) -> None:
        """``use(row)`` on the row at ``offset`` seen in place (no copy), as ``dtype``."""
        with self.files.fd(shard) as m:
            use(np.frombuffer(m, dtype, self.row_nbytes // dtype.itemsize, offset).reshape(shape))


class LatentStore:
    """Read-only access to ``latents.zarr`` of the cache at ``root``.

    ``get(rows)`` returns ``[len(rows), tokens, dim]`` float16/float32 (the stored dtype; int8
    stores dequantised to float16), equal to ``zarr.open(root / "latents.zarr")[rows]`` (times
    the scales of ``latents_scale.zarr`` for int8). Rows of failed videos are not readable
    (``MissingRowError``); ``valid_rows`` lists the others. ``threads``: reads in flight per
    batch; ``open_files``: descriptors kept open per array (default: ``reads.reader_budget``);
    ``verify_reads``: check every row read against its recorded crc32c (RowChecksumError).
    """

    def __init__(self, root: Path | str, *, allow_incomplete: bool = False,
                 manifest: dict[str, Any] | None = None, threads: int = READ_THREADS,
                 open_files: int | None = None, verify_reads: bool = True) -> None:
        """``manifest``: cache.json of ``root`` when the caller has read it already
        (:func:`salt_vla.cache.store.open_store` reads it once for both readers)."""
        self.root = Path(root)
        self.paths = StorePaths(self.root)
        self.meta: dict[str, Any] = read_manifest(self.root) if manifest is None else manifest
        if self.meta.get("status") != STATUS_COMPLETE and not allow_incomplete:
            done = sum(s.get("status") == "committed" for s in self.meta.get("shards", []))
            raise CacheFormatError(
                f"the cache at {self.root} is not complete ({done} of "
                f"{len(self.meta.get('shards', []))} shards committed in cache.json). Re-run "
                f"`salt cache build` with the same options to finish it."
            )
        lat = self.meta["latents"]
        self.shape: tuple[int, int, int] = tuple(int(x) for x in lat["shape"])  # type: ignore
        if lat["dtype"] not in DTYPES:
            raise CacheFormatError(f"{self.paths.manifest}: unsupported dtype {lat['dtype']!r}")
        self.stored_dtype: np.dtype = DTYPES[lat["dtype"]]
        self.quantized = lat["dtype"] in QUANTIZED_DTYPES
        # What get() returns: int8 rows come back dequantised, as float16.
        self.dtype: np.dtype = SCALE_DTYPE if self.quantized else self.stored_dtype
        self.shard_size = int(lat["shard_size"])
        self.num_rows, self.tokens, self.dim = self.shape
        self.row_nbytes = self.tokens * self.dim * self.stored_dtype.itemsize  # on disk
        self._check_zarr_metadata()
        present = np.zeros(self.num_rows, dtype=bool)
        self.verify_reads = bool(verify_reads)
        self._records: dict[int, dict[str, Any]] = {}  # shard -> its cache.json entry
        self._crcs: dict[tuple[str, int], np.ndarray | None] = {}  # (part, shard) -> uint32
        for s in self.meta["shards"]:
            if s.get("status") == "committed":
                self._records[int(s["index"])] = s
                present[s["row_start"]:s["row_stop"]] = True
                for f in s.get("failures", []):
                    present[f["row"]] = False
        self.present = present
        self.threads = max(1, int(threads))
        self.stats = ReadStats()
        shards = range(int(lat.get("num_shards", -(-self.num_rows // self.shard_size))))
        # Plain strings: a Path per shard file costs ~0.1 ms each (0.3 s for 2,640 shards).
        where = str(self.root)
        self._latents = _ShardFiles(self.root, [f"{where}/{latent_shard_relpath(s)}"
                                                for s in shards],
                                    self.shard_size, self.row_nbytes, open_files, self.stats)
        self._scales = (_ShardFiles(self.root, [f"{where}/{scale_shard_relpath(s)}"
                                                for s in shards],
                                    self.shard_size, self.tokens * SCALE_DTYPE.itemsize,
                                    open_files, self.stats) if self.quantized else None)
        self._pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = None
        self._local = threading.local()

    def _check_zarr_metadata(self) -> None:
        """The zarr metadata must describe the array cache.json promises (shape, dtype,
        one row per inner chunk, raw bytes): our reader assumes all of it."""
        lat = self.meta["latents"]
        arrays = [(self.paths.zarr_json,
                   zarr_array_metadata(*self.shape, lat["dtype"], self.shard_size))]
        if self.quantized:
            arrays.append((self.paths.scale_zarr_json,
                           zarr_scale_metadata(self.num_rows, self.tokens, self.shard_size)))
        for path, want in arrays:
            got = read_json(path, "zarr array metadata")
            for key in ("shape", "data_type", "chunk_grid", "codecs"):
                if got.get(key) != want[key]:
                    raise CacheFormatError(
                        f"{path}: {key} is {got.get(key)!r} but cache.json implies "
                        f"{want[key]!r}; the store was modified. Rebuild it (`salt cache build`)."
                    )

    # --- row table -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_rows

    @property
    def valid_rows(self) -> np.ndarray:
        """Rows with latents (all rows except failed videos), int64, increasing."""
        return np.flatnonzero(self.present)

    @property
    def video_ids(self) -> list[str]:
        return self.meta["rows"]["video_id"]

    @property
    def view_indices(self) -> np.ndarray:
        return np.asarray(self.meta["rows"]["view_index"], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """Class index per row, -1 where unlabeled."""
        return np.asarray(self.meta["rows"]["label"], dtype=np.int64)

    def row_info(self, row: int) -> dict[str, Any]:
        return row_record(self.meta["rows"], row)

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.meta["latents"]["grid"])  # type: ignore[return-value]

    @property
    def view_hash(self) -> str:
        return self.meta["view"]["hash"]

    @property
    def view_spec(self) -> dict[str, Any]:
        return self.meta["view"]["spec"]

    @property
    def teacher(self) -> dict[str, Any]:
        return self.meta["teacher"]

    def frames_shards(self) -> list[Path]:
        """Frames tar of every shard, in shard order."""
        return [self.root / s["frames"]["path"] for s in self.meta["shards"]
                if s.get("status") == "committed"]

    @property
    def open_files(self) -> int:
        """Shard files this process holds open now (latents and scales)."""
        return self._latents.files.open_count + (
            self._scales.files.open_count if self._scales is not None else 0)

    # --- reading --------------------------------------------------------------------------

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._pid != os.getpid() or self._pool is None or self._ahead is None:
            # Threads do not survive a fork: a forked child makes its own.
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="salt-latents")
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="salt-latents-ahead")
            self._pid = os.getpid()
        return self._pool, self._ahead

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Latents of ``rows``: ``[len(rows), tokens, dim]`` (a new array; float16 for
        int8 stores). Every row's pages are hinted to the kernel first, then copied out by
        ``threads`` threads (a cold batch has all its reads queued at once)."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            bad = int(idx[(idx < 0) | (idx >= self.num_rows)][0])
            raise IndexError(f"row {bad} out of range for a cache of {self.num_rows} rows")
        missing = ~self.present[idx]
        if missing.any():
            self._missing(int(idx[np.flatnonzero(missing)[0]]))
        out = np.empty((idx.size, self.tokens, self.dim), dtype=self.dtype)
        if idx.size == 0:
            return out
        # File order: consecutive rows of a shard are hinted and read back to back.
        order = np.argsort(idx, kind="stable")
        plan = []  # (position in out, row, latents offset, scale offset)
        hinted = 0
        for pos in order.tolist():
            row = int(idx[pos])
            shard, local = divmod(row, self.shard_size)
            off = self._latents.offset(shard, local)
            soff = self._scales.offset(shard, local) if self._scales is not None else 0
            if off is None or soff is None:
                self._missing(row)
            hinted += self._latents.hint(shard, off)
            plan.append((pos, row, off, soff))
        parts = [p for p in np.array_split(np.arange(len(plan)), min(self.threads, len(plan)))
                 if p.size]
        if len(parts) <= 1:
            self._read_rows(plan, out)
        else:
            pool, _ = self._executors()
            futures = [pool.submit(self._read_rows, [plan[i] for i in p.tolist()], out)
                       for p in parts]
            for f in futures:
                f.result()
        per_row = self.row_nbytes + (self.tokens * 2 if self.quantized else 0)
        self.stats.add(idx.size, idx.size * per_row, idx.size * per_row, len(plan) + hinted)
        return out

    def get_async(self, rows: Sequence[int] | np.ndarray) -> Future:
        """Start reading ``rows`` in the background; ``.result()`` is ``get(rows)``. Reads
        run one batch at a time, in submission order, so a caller that keeps ``k`` batches
        submitted holds at most ``k`` batches of memory."""
        _, ahead = self._executors()
        return ahead.submit(self.get, np.array(rows, dtype=np.int64))

    def _missing(self, row: int) -> None:
        info = self.row_info(row)
        raise MissingRowError(
            f"row {row} (video {info['video_id']}, view {info['view']}) has no latents: "
            f"its video failed to decode (see failures.jsonl). Sample from "
            f"LatentStore.valid_rows."
        )

    def _read_rows(self, plan: list[tuple[int, int, int, int]], out: np.ndarray) -> None:
        """One thread's share of a batch: ``(position in out, row, offsets)`` per row."""
        flat = out.reshape(out.shape[0], -1).view(np.uint8)
        check = self.verify_reads
        if not self.quantized:
            for pos, row, off, _ in plan:
                self._latents.read(row // self.shard_size, off, flat[pos])
                if check:
                    self._check_crc("latents", row, off, flat[pos])
            return
        assert self._scales is not None
        scale, scratch = self._scratch()

        def use(q: np.ndarray, pos: int, row: int, off: int) -> None:
            if check:
                self._check_crc("latents", row, off, q)
            dequantize_into(q, scale, out[pos], scratch)

        for pos, row, off, soff in plan:
            shard = row // self.shard_size
            self._scales.read(shard, soff, scale.view(np.uint8))
            if check:
                self._check_crc("scale", row, soff, scale)
            self._latents.view(shard, off, np.dtype(np.int8), (self.tokens, self.dim),
                               lambda q, p=pos, r=row, o=off: use(q, p, r, o))

    def _recorded_crcs(self, part: str, shard: int) -> np.ndarray | None:
        """The crc32c of each row of ``shard``'s ``part`` file (``latents``/``scale``) as its
        commit record holds them, uint32 (None where a store predates them)."""
        key = (part, shard)
        if key not in self._crcs:
            hexes = self._records.get(shard, {}).get(
                "row_crc32c" if part == "latents" else "scale_crc32c")
            self._crcs[key] = None if hexes is None else np.asarray(
                [0 if h is None else int(h, 16) for h in hexes], np.uint32)
        return self._crcs[key]

    def _check_crc(self, part: str, row: int, offset: int, data: np.ndarray) -> None:
        shard, local = divmod(row, self.shard_size)
        want = self._recorded_crcs(part, shard)
        if want is None or local >= len(want):
            return
        got = crc32c(data)
        if got != int(want[local]):
            info = self.row_info(row)
            files = self._latents if part == "latents" else self._scales
            assert files is not None
            raise RowChecksumError(
                f"row {row} (video {info['video_id']}, view {info['view']}) of shard {shard} "
                f"fails its crc32c: {'' if part == 'latents' else 'the int8 scales in '}"
                f"{files.files.paths[shard]} at byte {offset} hash to {got:08x}, the commit "
                f"record says {int(want[local]):08x}: the shard file was changed or damaged "
                f"after the build. Run `salt cache verify {self.root}`: it lists every "
                f"damaged row and how to rebuild the shard")

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread buffers for int8 rows: the scales and the float32 product."""
        got = getattr(self._local, "buffers", None)
        if got is None:
            got = (np.empty(self.tokens, SCALE_DTYPE),
                   np.empty((self.tokens, self.dim), np.float32))
            self._local.buffers = got
        return got

    def __getitem__(self, row: int) -> np.ndarray:
        return self.get([row])[0]

    def close(self) -> None:
        """Close the shard files and stop the reading threads (the store stays usable)."""
        for arr in (self._latents, self._scales):
            if arr is not None:
                arr.files.close()
        for ex in (self._pool, self._ahead):
            if ex is not None:
                ex.shutdown(wait=True)
        self._pool = self._ahead = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = state["_ahead"] = state["_pid"] = None
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

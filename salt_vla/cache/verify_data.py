"""The data passes of ``salt cache verify`` (``verify.py`` runs them): the full pass reads
every byte of every shard file once, in file order; the sampled pass reads a random subset of
rows, every shard touched. Both add their problems to the shard's
``structure.ShardCheck`` and report their bytes to a :class:`VerifyProgress`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from salt_vla.cache.format import DTYPES, QUANTIZED_DTYPES, frame_key, row_record_mismatch
from salt_vla.cache.frames import decode_jpeg
from salt_vla.cache.frames_reader import (
    FramesIndexError,
    Member,
    row_members,
    scan_members,
    split_member_name,
    table_members,
)
from salt_vla.cache.progress import format_bytes, format_seconds
from salt_vla.cache.reads import pread_exact
from salt_vla.cache.shard import EMPTY, crc32c
from salt_vla.cache.structure import BLOCK, ShardCheck, rows_text

CHUNK = 8 << 20  # bytes per read of a whole-file pass


class VerifyProgress:
    """Bytes and shards done of a data pass, with rate and ETA; ``callback(self)`` is called
    at most every ``interval`` seconds (and once at the end) from the checking threads."""

    def __init__(self, total_bytes: int, total_shards: int,
                 callback: Callable[[VerifyProgress], None] | None, interval: float = 0.5
                 ) -> None:
        self.total_bytes, self.total_shards = total_bytes, total_shards
        self.done_bytes = self.done_shards = 0
        self.start = time.monotonic()
        self.callback, self.interval = callback, interval
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, nbytes: int = 0, shards: int = 0) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self.done_shards += shards
            now = time.monotonic()
            final = self.done_shards == self.total_shards and shards
            if self.callback is not None and (final or now - self._last >= self.interval):
                self._last = now
                self.callback(self)

    @property
    def finished(self) -> bool:
        return self.done_shards >= self.total_shards

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done_bytes / elapsed if elapsed > 0 else 0.0
        left = self.total_bytes - self.done_bytes
        eta = format_seconds(left / rate) if rate > 0 else "--:--"
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return (f"verify: {self.done_shards}/{self.total_shards} shards, "
                f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)} "
                f"({pct:5.1f}%)  {format_bytes(rate)}/s  elapsed {format_seconds(elapsed)}  "
                f"ETA {eta}")


def _all_finite(data: np.ndarray, dtype: np.dtype) -> bool:
    """No NaN/inf in ``data`` (raw bytes of ``dtype``). For float16, test the exponent bits
    as integers: numpy's float16 arithmetic is emulated and ~10x slower."""
    if dtype == np.dtype("<f2"):
        return not np.any((data.view("<u2") & 0x7C00) == 0x7C00)
    if dtype.kind == "i":  # int8 latents: finite by construction; -128 is never written
        return not np.any(data.view(dtype) == np.iinfo(dtype).min)
    return bool(np.isfinite(data.view(dtype)).all())


# --- the full pass: every byte, each file once ---------------------------------------------


RowPart = tuple[str, "tuple[np.ndarray, np.ndarray] | None", int, np.dtype, "list | None",
                list[str]]


def _row_parts(meta: dict, shard: dict, check: ShardCheck) -> list[RowPart]:
    """The row files of a shard: ``(part, parsed index, row bytes, dtype, recorded crc32c
    list, problem list)`` for the latents and, int8, the scales."""
    lat = meta["latents"]
    dtype = DTYPES[lat["dtype"]]
    parts: list[RowPart] = [("latents", check.latent_index,
                             lat["tokens"] * lat["dim"] * dtype.itemsize, dtype,
                             shard.get("row_crc32c"), check.latents)]
    if "scale" in shard:
        parts.append(("scale", check.scale_index, lat["tokens"] * 2, np.dtype("<f2"),
                      shard.get("scale_crc32c"), check.scale))
    return parts


def _where(shard: dict, part: str, path: Path) -> str:
    return f"shard {shard['index']} {'latents' if part == 'latents' else 'latent scales'} {path}"


def full_shard(root: Path, meta: dict, shard: dict, check: ShardCheck,
                prog: VerifyProgress) -> int:
    """sha256, per-row crc32c and finite values of the shard's latents (and scales), sha256
    and every header of its tar; problems go into ``check``. Returns the bytes read."""
    nbytes = 0
    for part, index, row_nbytes, row_dtype, crcs, problems in _row_parts(meta, shard, check):
        if index is None or any(p.startswith("truncated") for p in problems):
            continue  # the structure check said why; the data cannot be read as recorded
        got, probs = _scan_rows_file(root, shard, part, index, row_nbytes, row_dtype, crcs,
                                     prog)
        nbytes += got
        problems += probs
    if not check.frames:
        got, probs = _scan_tar(root, meta, shard, prog)
        nbytes += got
        check.frames += probs
    return nbytes


def _scan_rows_file(root: Path, shard: dict, part: str, index: tuple[np.ndarray, np.ndarray],
                    row_nbytes: int, dtype: np.dtype, crcs: list | None,
                    prog: VerifyProgress) -> tuple[int, list[str]]:
    """One sequential pass over a latents/scale shard file: sha256 of the whole file, and
    each row's crc32c and finite values as its bytes go by."""
    path = root / shard[part]["path"]
    where = _where(shard, part, path)
    offsets, _ = index
    start = shard["row_start"]
    present = np.flatnonzero(offsets != EMPTY)
    row_at = {int(offsets[k]): int(k) for k in present}
    sha = hashlib.sha256()
    crc_bad, nonfinite = [], []
    size = shard[part]["bytes"]
    fd = os.open(path, os.O_RDONLY)
    try:
        _advise_sequential(fd)
        pos = 0
        buf = bytearray(max(row_nbytes, 1))
        while pos < size:
            local = row_at.get(pos)
            # A row: exactly its bytes; anything else (the index, gaps): up to the next row.
            if local is not None:
                n = row_nbytes
            else:
                nxt = min((o for o in row_at if o > pos), default=size)
                n = min(nxt, size) - pos
            view = memoryview(buf)[:n] if n <= len(buf) else memoryview(bytearray(n))
            got = pread_exact(fd, view, pos)
            if got != n:
                return pos + got, [f"truncated file: {where} ends at byte {pos + got}"]
            sha.update(view)
            if local is not None and local < len(crcs or []):
                want = (crcs or [])[local]
                data = np.frombuffer(view, dtype=np.uint8)
                if want is None or f"{crc32c(data):08x}" != want:
                    crc_bad.append(start + local)
                if not _all_finite(data, dtype):
                    nonfinite.append(start + local)
            pos += n
            prog.add(n)
    finally:
        os.close(fd)
    problems = []
    if sha.hexdigest() != shard[part]["sha256"]:
        problems.append(f"checksum mismatch: {where} sha256 {sha.hexdigest()[:16]}..., "
                        f"cache.json records {shard[part]['sha256'][:16]}...")
    if crc_bad:
        problems.append(f"checksum mismatch in {where}, rows {rows_text(crc_bad)}")
    if nonfinite:
        what = "non-finite scales (NaN/inf)" if part == "scale" else "non-finite values " \
            "(NaN/inf)" if dtype.kind == "f" else "out-of-range int8 values (-128)"
        problems.append(f"{what} in {where}, rows {rows_text(nonfinite)}")
    return pos, problems


def _advise_sequential(fd: int) -> None:
    if hasattr(os, "POSIX_FADV_SEQUENTIAL"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


def _scan_tar(root: Path, meta: dict, shard: dict, prog: VerifyProgress
              ) -> tuple[int, list[str]]:
    """One sequential pass over the shard's tar: its sha256, and every member header
    (from the member table, version 2; from a header scan, version 1) checked as it goes by."""
    path = root / shard["frames"]["path"]
    where = f"shard {shard['index']} frames {path}"
    table = shard["frames"].get("members")
    if table is None:
        problems, scanned = _scanned_samples_problems(meta, shard, where)
        expected: list[Member] = []
    else:
        problems = []
        expected = scanned = table_members(shard["row_start"], table)
    headers = {off - BLOCK: (name, n) for name, off, n in expected}
    jsons = RowJsons(scanned)
    sha = hashlib.sha256()
    size = shard["frames"]["bytes"]
    bad: list[str] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        _advise_sequential(fd)
        pos = 0
        buf = bytearray(CHUNK)
        while pos < size:
            n = min(CHUNK, size - pos)
            view = memoryview(buf)[:n]
            got = pread_exact(fd, view, pos)
            if got != n:
                return pos + got, problems + [f"truncated file: {where} ends at byte "
                                              f"{pos + got}"]
            sha.update(view)
            if headers:
                bad += _check_headers(fd, view, pos, headers)
            jsons.take(view, pos)
            pos += n
            prog.add(n)
    finally:
        os.close(fd)
    problems += json_problems(where, meta["rows"], jsons.found)
    if bad:
        fix = (f"delete commits/shard-{shard['index']:06d}.json and re-run `salt cache build` "
               "with the same options to rewrite the shard")
        problems.append(f"{where}: member table in cache.json disagrees with the tar headers "
                        f"(first at {bad[0]}; {len(bad)} member(s)): the tar or the record "
                        f"changed after the build; {fix}")
    if sha.hexdigest() != shard["frames"]["sha256"]:
        problems.append(f"checksum mismatch: {where} sha256 {sha.hexdigest()[:16]}..., "
                        f"cache.json records {shard['frames']['sha256'][:16]}...")
    return pos, problems


class RowJsons:
    """Collects each row's ``<key>.json`` data from a tar streamed chunk by chunk (``take``
    each chunk in file order): ``found[row] = bytes``. ``members``: the tar's members as
    ``(name, data offset, size)``, from the member table or a header scan."""

    def __init__(self, members: list[Member]) -> None:
        self.pending = sorted((off, n, int(split_member_name(name)[0]))
                              for name, off, n in members
                              if split_member_name(name)[1] == b"json")
        self.found: dict[int, bytearray] = {}
        self._next = 0

    def take(self, view: memoryview, pos: int) -> None:
        end = pos + len(view)
        while self._next < len(self.pending):
            off, n, row = self.pending[self._next]
            if off >= end:
                return
            got = self.found.setdefault(row, bytearray())
            got += view[max(off, pos) - pos:min(off + n, end) - pos]
            if off + n > end:
                return  # continues in the next chunk
            self._next += 1


def json_problems(where: str, rows: dict, found: dict[int, bytes | bytearray]) -> list[str]:
    """The rows whose .json in the tar disagrees with cache.json's row table (label, video
    id, view, row), the first with its difference."""
    wrong = {r: why for r in sorted(found)
             if (why := row_record_mismatch(rows, r, bytes(found[r]))) is not None}
    if not wrong:
        return []
    first = next(iter(wrong))
    return [f"{where}: the .json of rows {rows_text(list(wrong))} does not match cache.json's "
            f"row table (row {first}: {wrong[first]}): rows swapped, the tar replaced or the "
            "row table edited; training on it would pair clips with other clips' labels"]


def _check_headers(fd: int, view: memoryview, pos: int,
                   headers: dict[int, tuple[bytes, int]]) -> list[str]:
    """Headers expected to start inside ``view`` (the file's bytes from ``pos``): name and
    size must be what the member table says. A header cut by the chunk's end is read whole."""
    bad = []
    end = pos + len(view)
    for off in [o for o in headers if pos <= o < end]:
        hdr = bytes(view[off - pos:off - pos + BLOCK])
        if len(hdr) < BLOCK:
            hdr = os.pread(fd, BLOCK, off)
        name, n = headers.pop(off)
        if not _header_matches(hdr, name, n):
            bad.append(name.decode(errors="replace"))
    return bad


def _header_matches(hdr: bytes, name: bytes, size: int) -> bool:
    if len(hdr) < BLOCK or hdr[257:262] != b"ustar":
        return False
    got_name = hdr[:100].split(b"\0", 1)[0]
    prefix = hdr[345:500].split(b"\0", 1)[0]
    if prefix:
        got_name = prefix + b"/" + got_name
    try:
        got_size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        return False
    return got_name == name and got_size == size and hdr[156:157] in (b"0", b"\0")


def _scanned_samples_problems(meta: dict, shard: dict, where: str
                              ) -> tuple[list[str], list[Member]]:
    """Version-1 shards (no member table): the samples found by a header scan must be the
    shard's rows minus failures, each with a .json and ``num_frames`` frames. Returns the
    problems and the scanned members."""
    path = Path(where.split(" frames ", 1)[1])
    try:
        scanned = scan_members(path)
    except FramesIndexError as e:
        return [f"truncated or unreadable frames tar, {where}: {e}"], []
    members: dict[str, list[str]] = {}
    for name, _, _ in scanned:
        key, ext = (p.decode("utf-8", "surrogateescape") for p in split_member_name(name))
        members.setdefault(key, []).append(ext)
    failed = {f["row"] for f in shard["failures"]}
    want = [frame_key(r) for r in range(shard["row_start"], shard["row_stop"]) if r not in failed]
    num_frames = meta["frames"]["num_frames"]
    problems = []
    if list(members) != want:
        problems.append(f"frame count mismatch: {where} has {len(members)} samples, expected "
                        f"{len(want)} (rows of the shard minus failures)")
    bad = [k for k, exts in members.items()
           if sum(e.endswith(".jpg") for e in exts) != num_frames or "json" not in exts]
    if bad:
        problems.append(f"{where}: samples without {num_frames} frames and a .json: "
                        f"{rows_text([int(k) for k in bad])}")
    return problems, scanned


# --- the sampled pass ----------------------------------------------------------------------


def pick_rows(shards: list[dict], fraction: float, seed: int) -> dict[int, list[int]]:
    """Per committed shard, ``max(1, round(fraction * rows with data))`` of its rows with
    data, drawn with ``seed``: every shard is touched."""
    rng = np.random.default_rng([0x5A3D, seed])
    out = {}
    for s in shards:
        failed = {f["row"] for f in s["failures"]}
        rows = [r for r in range(s["row_start"], s["row_stop"]) if r not in failed]
        k = min(len(rows), max(1, round(fraction * len(rows)))) if rows else 0
        out[s["index"]] = sorted(rng.choice(rows, size=k, replace=False).tolist()) if k else []
    return out


def sample_bytes(meta: dict, shard: dict, rows: int) -> int:
    """Bytes a sample of ``rows`` rows of ``shard`` reads, roughly (for the progress line)."""
    lat = meta["latents"]
    per = lat["tokens"] * lat["dim"] * DTYPES[lat["dtype"]].itemsize
    if lat["dtype"] in QUANTIZED_DTYPES:
        per += lat["tokens"] * 2
    n = max(1, shard["row_stop"] - shard["row_start"] - len(shard["failures"]))
    return rows * (per + shard["frames"]["bytes"] // n)


def sample_shard(root: Path, meta: dict, shard: dict, check: ShardCheck, rows: list[int],
                  prog: VerifyProgress) -> int:
    """The sampled rows of one shard (see the module docstring); returns the bytes read."""
    start = shard["row_start"]
    nbytes = 0
    for part, index, row_nbytes, row_dtype, crcs, problems in _row_parts(meta, shard, check):
        if index is None:
            continue
        path = root / shard[part]["path"]
        where = _where(shard, part, path)
        crc_bad, nonfinite = [], []
        fd = os.open(path, os.O_RDONLY)
        try:
            for r in rows:
                off = index[0][r - start]
                if off == EMPTY:
                    continue  # the structure check reported it
                buf = bytearray(row_nbytes)
                got = pread_exact(fd, memoryview(buf), int(off))
                nbytes += got
                data = np.frombuffer(buf, np.uint8)
                want = (crcs or [None] * (r - start + 1))[r - start]
                if got != row_nbytes or want is None or f"{crc32c(data):08x}" != want:
                    crc_bad.append(r)
                elif not _all_finite(data, row_dtype):
                    nonfinite.append(r)
                prog.add(got)
        finally:
            os.close(fd)
        if crc_bad:
            problems.append(f"checksum mismatch in {where}, rows {rows_text(crc_bad)}")
        if nonfinite:
            problems.append(f"non-finite or out-of-range values in {where}, rows "
                            f"{rows_text(nonfinite)}")
    got, probs = _sample_frames(root, meta, shard, rows, check)
    nbytes += got
    prog.add(got)
    check.frames += probs
    return nbytes


def _sample_frames(root: Path, meta: dict, shard: dict, rows: list[int], check: ShardCheck
                   ) -> tuple[int, list[str]]:
    """Each sampled row's tar members: one read of its span, every header against the member
    table, the .json against the row table, every JPEG decoded to the recorded frame size."""
    path = root / shard["frames"]["path"]
    where = f"shard {shard['index']} frames {path}"
    table = shard["frames"].get("members")
    if check.frames:
        return 0, []  # the structure is wrong already: offsets cannot be trusted
    if table is None:  # version 1: the header scan tells where the rows are
        return 0, _scanned_samples_problems(meta, shard, where)[0]
    fr = meta["frames"]
    r_table = meta["rows"]
    start = shard["row_start"]
    bad_headers, bad_jpeg = [], []
    found: dict[int, bytes] = {}
    nbytes = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for r in rows:
            entry = table[r - start]
            members = row_members(r, entry)
            first = entry[0]
            last_name, last_off, last_n = members[-1]
            buf = bytearray(last_off + last_n - first)
            got = pread_exact(fd, memoryview(buf), first)
            nbytes += got
            if got != len(buf):
                bad_headers.append(r)
                continue
            if not all(_header_matches(bytes(buf[off - BLOCK - first:off - first]), name, n)
                       for name, off, n in members):
                bad_headers.append(r)
                continue
            _, json_off, json_n = members[0]
            found[r] = bytes(buf[json_off - first:json_off - first + json_n])
            try:
                for _, off, n in members[1:]:
                    px = decode_jpeg(bytes(buf[off - first:off - first + n]))
                    if px.shape != (fr["height"], fr["width"], 3):
                        raise ValueError(f"frame of shape {px.shape}")
            except (OSError, ValueError):
                bad_jpeg.append(r)
    finally:
        os.close(fd)
    problems = []
    if bad_headers:
        problems.append(f"{where}: member table in cache.json disagrees with the tar headers "
                        f"for rows {rows_text(bad_headers)}: the tar or the record changed "
                        f"after the build")
    problems += json_problems(where, r_table, found)
    if bad_jpeg:
        problems.append(f"{where}: undecodable or wrongly sized JPEG frames in rows "
                        f"{rows_text(bad_jpeg)}")
    return nbytes, problems

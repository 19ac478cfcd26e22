"""``salt cache verify``: check that a store is whole, consistent and what it claims to be.

Three depths, each a superset of the structure check (``structure.py``: manifest, commit
records, sizes, shard indexes, member tables; O(shards), no data read):

- ``quick``: the structure only; seconds for SSv2.
- ``sample=f``: also a random fraction ``f`` of the rows, at least one in every shard: each
  sampled row's latent (and int8 scale) bytes against its crc32c and for finite values, its
  tar members' headers against the member table, its ``.json`` against the row table, its
  JPEGs decoded. A sample that passes is evidence, not proof: rows not drawn are not read,
  and whole-file sha256 sums are not computed.
- full (the default): every byte, each file read once, in order, by several threads at once:
  sha256 of every file, every row's crc32c and finite values, every tar header against the
  member table.

Every check adds a line to the report; every failure adds a problem naming the file, shard
or rows. ``ok`` is True when no problem was found (the CLI's exit 0; 1 otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    QUANTIZED_DTYPES,
    SHARD_COMMITTED,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    frame_key,
    identity_digest,
    read_manifest,
)
from salt_vla.cache.frames import decode_jpeg
from salt_vla.cache.frames_reader import (
    FramesIndexError,
    Member,
    group_sample,
    iter_tar_files,
    scan_members,
    split_member_name,
    table_members,
)
from salt_vla.cache.progress import format_bytes, format_seconds
from salt_vla.cache.reads import pread_exact
from salt_vla.cache.shard import EMPTY, crc32c
from salt_vla.cache.store_writer import failure_lines
from salt_vla.cache.structure import (
    BLOCK,
    ShardCheck,
    check_shards,
    rows_text,
    zarr_metadata_problems,
)

CHUNK = 8 << 20  # bytes per read of a whole-file pass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Checks run (name, ok, detail) and the problems found; ``ok`` when there are none."""

    root: Path
    mode: str = "full"
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0  # data bytes read (latents, scales, frames; not the JSON files)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, name: str, problems: list[str], detail: str) -> None:
        self.checks.append(Check(name, not problems, detail if not problems else
                                 f"{len(problems)} problem(s)"))
        self.problems.extend(problems)

    def table(self) -> str:
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}")
        return "\n".join(lines)


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


def print_progress(stream: TextIO | None = None, log_interval: float = 30.0
                   ) -> Callable[[VerifyProgress], None]:
    """A :class:`VerifyProgress` callback for ``salt cache verify``: redraws one line on a
    terminal; on a file or pipe prints a line every ``log_interval`` seconds and at the end."""
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    last = [0.0]

    def show(p: VerifyProgress) -> None:
        now = time.monotonic()
        if tty:
            out.write("\r" + p.line() + ("\n" if p.finished else ""))
        elif p.finished or now - last[0] >= log_interval:
            last[0] = now
            out.write(p.line() + "\n")
        out.flush()

    return show


def _all_finite(data: np.ndarray, dtype: np.dtype) -> bool:
    """No NaN/inf in ``data`` (raw bytes of ``dtype``). For float16, test the exponent bits
    as integers: numpy's float16 arithmetic is emulated and ~10x slower."""
    if dtype == np.dtype("<f2"):
        return not np.any((data.view("<u2") & 0x7C00) == 0x7C00)
    if dtype.kind == "i":  # int8 latents: finite by construction; -128 is never written
        return not np.any(data.view(dtype) == np.iinfo(dtype).min)
    return bool(np.isfinite(data.view(dtype)).all())


def verify_store(
    root: Path | str,
    *,
    quick: bool = False,
    sample: float | None = None,
    recompute: int = 0,
    teacher_ckpt: Path | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[VerifyProgress], None] | None = None,
) -> VerifyReport:
    """Check the store at ``root``: the structure (``quick``), plus a random fraction
    ``sample`` of the rows, or (neither) every byte; see the module docstring.
    ``progress`` is called with a :class:`VerifyProgress` during the data pass."""
    if sample is not None and not 0.0 < sample <= 1.0:
        raise ValueError(f"sample={sample}: a fraction in (0, 1]")
    root = Path(root)
    mode = "quick" if quick else ("sample" if sample is not None else "full")
    report = VerifyReport(root, mode)
    t0 = time.perf_counter()
    try:
        meta = read_manifest(root)
    except CacheFormatError as e:
        report.add("manifest", [str(e)], "")
        return report
    try:
        _verify(report, root, meta, mode, sample, seed, threads, progress)
        if recompute > 0:
            _recompute(report, root, meta, recompute, teacher_ckpt, device, seed)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        # A manifest edited into another shape: say so instead of a traceback.
        report.add("manifest fields", [f"{StorePaths(root).manifest} is malformed "
                                       f"({type(e).__name__}: {e}); rebuild the cache"], "")
    report.seconds = time.perf_counter() - t0
    return report


def _manifest_problems(paths: StorePaths, meta: dict) -> list[str]:
    probs = []
    digest = identity_digest(meta)
    if digest != meta.get("identity_sha256"):
        probs.append(f"{paths.manifest}: identity digest mismatch (stored "
                     f"{str(meta.get('identity_sha256'))[:16]}..., content gives "
                     f"{digest[:16]}...): cache.json was edited after the build")
    lat = meta["latents"]
    rows = meta["rows"]
    n = rows["count"]
    for key in ("video_id", "view_index", "label"):
        if len(rows[key]) != n:
            probs.append(f"{paths.manifest}: row table '{key}' has {len(rows[key])} entries "
                         f"for {n} rows")
    if lat["shape"][0] != n or lat["tokens"] != lat["shape"][1] or lat["dim"] != lat["shape"][2]:
        probs.append(f"{paths.manifest}: latents shape {lat['shape']} disagrees with rows/"
                     f"tokens/dim")
    if int(np.prod(lat["grid"])) != lat["tokens"]:
        probs.append(f"{paths.manifest}: grid {lat['grid']} does not give {lat['tokens']} tokens")
    if lat["dtype"] not in DTYPES:
        probs.append(f"{paths.manifest}: latents dtype {lat['dtype']!r} is not one of "
                     f"{', '.join(DTYPES)}")
    if meta.get("status") != STATUS_COMPLETE:
        probs.append(f"{paths.manifest}: status is {meta.get('status')!r}, not complete: "
                     f"re-run `salt cache build` with the same options to finish")
    return probs


def _view_problems(paths: StorePaths, meta: dict) -> list[str]:
    try:
        from salt_vla.data.view import ViewSpec

        current = ViewSpec.from_dict(meta["view"]["spec"]).hash()
    except (ValueError, TypeError, KeyError) as e:
        return [f"view spec in {paths.manifest} is not readable by this code: {e}"]
    if current != meta["view"]["hash"]:
        return [f"view-hash mismatch: cache.json records {meta['view']['hash']}, the current "
                f"code computes {current} for the stored view spec (the view code or the "
                f"manifest changed; rebuild the cache)"]
    return []


def _verify(report: VerifyReport, root: Path, meta: dict, mode: str, sample: float | None,
            seed: int, threads: int | None,
            progress: Callable[[VerifyProgress], None] | None) -> None:
    paths = StorePaths(root)
    lat = meta["latents"]
    n = meta["rows"]["count"]
    report.add("manifest", _manifest_problems(paths, meta), f"{n} rows, {lat['num_shards']} "
               f"shards, format v{meta['format_version']}")
    report.add("zarr metadata", zarr_metadata_problems(root, meta),
               f"[{', '.join(map(str, lat['shape']))}] {lat['dtype']}, {lat['shard_size']} "
               "rows/shard")
    report.add("view hash", _view_problems(paths, meta), f"{meta['view']['hash']}")

    # --- shards: structure, then the data pass of the mode ----------------------------------
    shards = meta["shards"]
    committed = [s for s in shards if s["status"] == SHARD_COMMITTED]
    pending = [f"shard {s['index']} (rows {s['row_start']}..{s['row_stop'] - 1}) is not "
               "committed" for s in shards if s["status"] != SHARD_COMMITTED]
    workers = max(1, threads or min(8, os.cpu_count() or 1))
    checks = check_shards(root, meta, committed, threads=workers)
    quantized = lat["dtype"] in QUANTIZED_DTYPES
    sampled = 0
    if mode != "quick":
        by_index = {c.index: c for c in checks}
        if mode == "sample":
            assert sample is not None
            picks = _pick_rows(committed, sample, seed)
            sampled = sum(len(p) for p in picks.values())
            total = sum(_row_bytes(meta, s, len(picks[s["index"]])) for s in committed)
        else:
            picks = {}
            total = sum(s["latents"]["bytes"] + s["frames"]["bytes"]
                        + s.get("scale", {}).get("bytes", 0) for s in committed)
        prog = VerifyProgress(total, len(committed), progress)

        def data_pass(s: dict) -> int:
            check = by_index[s["index"]]
            if mode == "sample":
                nbytes = _sample_shard(root, meta, s, check, picks[s["index"]], prog)
            else:
                nbytes = _full_shard(root, meta, s, check, prog)
            prog.add(shards=1)
            return nbytes

        with ThreadPoolExecutor(max_workers=workers) as ex:
            report.bytes_read = sum(ex.map(data_pass, committed))
    failed = sum(len(s["failures"]) for s in committed)
    report.add("shards committed", pending + [p for c in checks for p in c.commit],
               f"{len(committed)}/{len(shards)}")
    what = {"quick": "index, sizes",
            "sample": f"index, sizes; {sampled} sampled rows: crc32c, finite",
            "full": "index, sizes, sha256, row crc32c, finite"}[mode]
    report.add("latent shards", [p for c in checks for p in c.latents],
               f"{n - failed} rows present, {failed} failed ({what})")
    if quantized:
        report.add("latent scales", [p for c in checks for p in c.scale],
                   f"int8 per-token float16 scales ({what})")
    fwhat = {"quick": "sizes, member tables",
             "sample": f"sizes, member tables; {sampled} sampled rows: headers, .json, JPEGs",
             "full": "sizes, member tables, every header, sha256"}[mode]
    report.add("frame shards", [p for c in checks for p in c.frames],
               f"{n - failed} samples ({fwhat})")

    # --- failures.jsonl -------------------------------------------------------------------
    probs = []
    if meta.get("status") == STATUS_COMPLETE:
        try:
            if paths.failures.read_bytes() != failure_lines(meta):
                probs.append(f"{paths.failures} does not list the failures recorded in "
                             f"cache.json")
        except FileNotFoundError:
            probs.append(f"{paths.failures} is missing")
    report.add("failures.jsonl", probs, f"{failed} failed rows, "
               f"{len(meta['rows']['missing_video_ids'])} missing videos")

    if mode == "sample":
        report.notes.append(
            f"sampled {sampled} of {n - failed} rows ({100 * sampled / max(1, n - failed):.2g}"
            f"%, every shard): a passing sample is not a proof; rows not drawn were not read "
            "and file sha256 sums were not computed (run without --sample for that)")
    if mode == "quick" and any("members" not in s["frames"] for s in committed):
        report.notes.append("format-version-1 shards have no member tables: --quick checked "
                            "their tars' sizes only (a full or sampled verify reads the headers)")
    stale = list(paths.tmp.glob("*")) if paths.tmp.exists() else []
    if stale:
        report.notes.append(f"{len(stale)} leftover temporary file(s) in {paths.tmp} (from an "
                            f"interrupted build; harmless, removed by the next build)")


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


def _full_shard(root: Path, meta: dict, shard: dict, check: ShardCheck,
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
        problems = _scanned_samples_problems(meta, shard, where)
        expected: list[Member] = []
    else:
        problems = []
        expected = table_members(shard["row_start"], table)
    headers = {off - BLOCK: (name, n) for name, off, n in expected}
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
            pos += n
            prog.add(n)
    finally:
        os.close(fd)
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


def _scanned_samples_problems(meta: dict, shard: dict, where: str) -> list[str]:
    """Version-1 shards (no member table): the samples found by a header scan must be the
    shard's rows minus failures, each with a .json and ``num_frames`` frames."""
    path = Path(where.split(" frames ", 1)[1])
    try:
        scanned = scan_members(path)
    except FramesIndexError as e:
        return [f"truncated or unreadable frames tar, {where}: {e}"]
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
    return problems


# --- the sampled pass ----------------------------------------------------------------------


def _pick_rows(shards: list[dict], fraction: float, seed: int) -> dict[int, list[int]]:
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


def _row_bytes(meta: dict, shard: dict, rows: int) -> int:
    """Bytes a sample of ``rows`` rows of ``shard`` reads, roughly (for the progress line)."""
    lat = meta["latents"]
    per = lat["tokens"] * lat["dim"] * DTYPES[lat["dtype"]].itemsize
    if lat["dtype"] in QUANTIZED_DTYPES:
        per += lat["tokens"] * 2
    n = max(1, shard["row_stop"] - shard["row_start"] - len(shard["failures"]))
    return rows * (per + shard["frames"]["bytes"] // n)


def _sample_shard(root: Path, meta: dict, shard: dict, check: ShardCheck, rows: list[int],
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
        return 0, _scanned_samples_problems(meta, shard, where)
    fr = meta["frames"]
    r_table = meta["rows"]
    start = shard["row_start"]
    bad_headers, bad_json, bad_jpeg = [], [], []
    nbytes = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for r in rows:
            entry = table[r - start]
            members = table_members(r, [entry])
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
            try:
                info = json.loads(bytes(buf[json_off - first:json_off - first + json_n]))
                ok = (info.get("row") == r and info.get("video_id") == r_table["video_id"][r]
                      and info.get("view") == r_table["view_index"][r]
                      and info.get("label") == r_table["label"][r])
            except (ValueError, UnicodeDecodeError):
                ok = False
            if not ok:
                bad_json.append(r)
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
    if bad_json:
        problems.append(f"{where}: the .json of rows {rows_text(bad_json)} does not match "
                        "cache.json's row table")
    if bad_jpeg:
        problems.append(f"{where}: undecodable or wrongly sized JPEG frames in rows "
                        f"{rows_text(bad_jpeg)}")
    return nbytes, problems


# --- recompute -----------------------------------------------------------------------------


def _recompute(report: VerifyReport, root: Path, meta: dict, k: int,
               teacher_ckpt: Path | str | None, device: str, seed: int) -> None:
    """Re-run the teacher on ``k`` random rows' stored frames and compare with their latents."""
    from salt_vla.cache.latent_store import LatentStore

    name = f"recompute {k} rows"
    source = str(teacher_ckpt) if teacher_ckpt is not None else meta.get("teacher_source", "")
    t = meta["teacher"]
    if not source.startswith("random:") and not Path(source).is_file():
        report.add(name, [f"cannot recompute: the teacher checkpoint {source!r} recorded in "
                          f"cache.json does not exist here; pass --teacher-ckpt PATH"], "")
        return
    try:
        import torch

        from salt_vla.cache.build import make_teacher_fn
        from salt_vla.models.teacher import TeacherSpec, load_teacher

        spec = TeacherSpec(arch=t["arch"], num_frames=t["num_frames"], img_size=t["img_size"],
                           tubelet=t["tubelet"], patch=t["patch"], layer=t["layer"],
                           target_norm=t["target_norm"])
        teacher = load_teacher(source, spec, device=device)
    except (ValueError, OSError, KeyError) as e:
        report.add(name, [f"cannot recompute: loading teacher {source!r} failed: {e}"], "")
        return
    if teacher.sha256 != t["sha256"]:
        report.add(name, [f"cannot recompute: {source} has sha256 {teacher.sha256[:16]}..., "
                          f"the cache was built from {str(t['sha256'])[:16]}..."], "")
        return
    store = LatentStore(root, allow_incomplete=True)
    valid = store.valid_rows
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(valid, size=min(k, valid.size), replace=False))
    frames = _frames_of_rows(root, meta, pick.tolist())
    got_rows = [r for r in pick.tolist() if r in frames]
    lost = sorted(set(pick.tolist()) - set(got_rows))
    probs = [f"recompute: no stored frames found for rows {rows_text(lost)}"] if lost else []
    fn = make_teacher_fn(teacher, device, meta["latents"]["dtype"])
    bf16 = meta["teacher"].get("compute", {}).get("precision") == "bf16-autocast" or (
        torch.device(device).type == "cuda")
    worst = 0.0
    bad = []
    for r in got_rows:
        ref = store.get([r])[0].astype(np.float32)
        new = fn(frames[r][None])[0].astype(np.float32)
        scale = float(np.sqrt(np.mean(ref**2))) or 1.0
        if bf16:
            # bf16 autocast differs run to run at ~1e-2 relative: compare in RMS.
            err = float(np.sqrt(np.mean((new - ref) ** 2))) / scale
            tol = 3e-2
        else:
            # fp32 both times: only fp16 storage rounding (2^-11 relative) and summation order.
            err = float(np.max(np.abs(new - ref) / (np.abs(ref) + 1e-2 * scale)))
            tol = 4e-3
        worst = max(worst, err)
        if not err <= tol:
            bad.append(r)
    if bad:
        probs.append(f"recomputed latents differ from the stored ones beyond tolerance "
                     f"(worst relative error {worst:.3g}) in rows {rows_text(bad)}")
    report.add(name, probs, f"{len(got_rows)} rows, worst relative error {worst:.2g}"
               f"{' (bf16 RMS)' if bf16 else ''}")


def _frames_of_rows(root: Path, meta: dict, rows: list[int]) -> dict[int, np.ndarray]:
    """Decoded stored frames of ``rows`` (reads only the shards holding them)."""
    size = meta["latents"]["shard_size"]
    want = set(rows)
    out: dict[int, np.ndarray] = {}
    by_shard = sorted({r // size for r in rows})
    for i in by_shard:
        s = meta["shards"][i]
        try:
            for key, files in iter_tar_files(root / s["frames"]["path"]):
                if int(key) in want:
                    out[int(key)] = group_sample(key, files)["frames"]
        except (OSError, ValueError, json.JSONDecodeError):  # FramesIndexError is a ValueError
            continue
    return out




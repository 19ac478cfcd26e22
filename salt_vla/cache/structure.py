"""A store's structure, checked without reading its data: O(shards) reads, no latent or frame
byte touched.

Per committed shard: the commit record matches cache.json's entry; each file exists with the
recorded size; each shard index (the last ``16 * shard_size + 4`` bytes of a latents or scale
shard file) parses, passes its crc32c, and holds exactly the rows that are not recorded as
failed, each of the row size; the frames member table has one entry per row (none for failed
rows), each of ``2 + num_frames`` numbers, the rows' members chained back to back from byte 0
and ending where the file's end-of-archive blocks begin. That is what ``salt cache verify
--quick`` runs, in seconds for SSv2 (one commit record, one 4 KB index and two ``stat`` s per
shard), and what a trainer can run at start: :func:`check_structure`.

What it cannot see: flipped bits inside rows or frames, a tar whose headers disagree with the
member table while keeping every size (the full and the sampled verify read those).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    QUANTIZED_DTYPES,
    SHARD_COMMITTED,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    dumps,
    read_json,
    read_manifest,
    zarr_array_metadata,
    zarr_scale_metadata,
)
from salt_vla.cache.shard import EMPTY, ShardIndexError, read_index

BLOCK = 512  # one ustar header; member data is padded to it
END_OF_ARCHIVE = 2 * BLOCK  # two zero blocks
RECORD = 20 * BLOCK  # tarfile pads the archive to a multiple of its record size
_SHOW = 8  # row ids shown per problem line


def rows_text(rows: list[int]) -> str:
    """``"3, 7, 9"``, or the first few and the count."""
    more = f", ... ({len(rows)} rows)" if len(rows) > _SHOW else ""
    return ", ".join(map(str, rows[:_SHOW])) + more


@dataclass
class ShardCheck:
    """Problems found in one shard, by part, and what a data pass over it needs: each shard
    file's parsed index (None where it could not be read)."""

    index: int
    commit: list[str] = field(default_factory=list)
    latents: list[str] = field(default_factory=list)
    scale: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    latent_index: tuple[np.ndarray, np.ndarray] | None = None
    scale_index: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def problems(self) -> list[str]:
        return self.commit + self.latents + self.scale + self.frames


def check_structure(root: Path | str, meta: dict[str, Any] | None = None, *,
                    commit_records: bool = True, uncommitted: bool = True,
                    threads: int | None = None) -> list[str]:
    """Every structural problem of the store at ``root`` (``meta``: its cache.json, when
    read already), one line each naming the file and the fix; empty when sound.

    O(shards): no data bytes are read (see the module docstring). ``commit_records``: also
    compare each shard's commit record with cache.json (``salt cache verify`` does; a trainer
    that trusts cache.json may skip the ~1 ms per shard). ``uncommitted``: also list the
    shards not committed (a trainer reads only the committed ones). Raises CacheFormatError
    when cache.json itself is unreadable.
    """
    root = Path(root)
    meta = read_manifest(root) if meta is None else meta
    problems = zarr_metadata_problems(root, meta)
    shards = [s for s in meta["shards"] if s.get("status") == SHARD_COMMITTED]
    if uncommitted:
        problems += [f"shard {s['index']} (rows {s['row_start']}..{s['row_stop'] - 1}) is not "
                     "committed" for s in meta["shards"] if s.get("status") != SHARD_COMMITTED]
    for check in check_shards(root, meta, shards, commit_records=commit_records,
                              threads=threads):
        problems += check.problems
    return problems


def check_shards(root: Path, meta: dict[str, Any], shards: list[dict[str, Any]], *,
                 commit_records: bool = True, threads: int | None = None,
                 done: Callable[[ShardCheck], None] | None = None) -> list[ShardCheck]:
    """:func:`check_shard` of each shard entry, several at once, in shard order."""
    workers = max(1, threads or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check_shard, root, meta, s, commit_records) for s in shards]
        out = []
        for f in futures:
            out.append(f.result())
            if done is not None:
                done(out[-1])
    return out


def zarr_metadata_problems(root: Path, meta: dict[str, Any]) -> list[str]:
    """``zarr.json`` of the latents (and of the scales, int8) must be what cache.json
    implies."""
    paths = StorePaths(root)
    lat = meta["latents"]
    arrays = [(paths.zarr_json, zarr_array_metadata(*lat["shape"], lat["dtype"],
                                                    lat["shard_size"]))]
    if lat["dtype"] in QUANTIZED_DTYPES:
        arrays.append((paths.scale_zarr_json, zarr_scale_metadata(lat["shape"][0],
                                                                  lat["tokens"],
                                                                  lat["shard_size"])))
    problems = []
    for path, want in arrays:
        try:
            got = read_json(path, "zarr array metadata")
        except CacheFormatError as e:
            problems.append(str(e))
            continue
        if dumps(got) != dumps(want):
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            problems.append(f"{path} differs from what cache.json implies in "
                            f"{', '.join(diff)}")
    return problems


def check_shard(root: Path, meta: dict[str, Any], shard: dict[str, Any],
                commit_records: bool = True) -> ShardCheck:
    """The structure of one committed shard (see the module docstring)."""
    out = ShardCheck(shard["index"])
    if commit_records:
        out.commit = commit_record_problems(root, meta, shard)
    lat = meta["latents"]
    dtype = DTYPES[lat["dtype"]]
    failed = {f["row"] for f in shard["failures"]}
    out.latents, out.latent_index = _sharded_file_problems(
        root, shard, "latents", lat["tokens"] * lat["dim"] * dtype.itemsize, lat["shard_size"],
        failed)
    if "scale" in shard or lat["dtype"] in QUANTIZED_DTYPES:
        out.scale, out.scale_index = _sharded_file_problems(
            root, shard, "scale", lat["tokens"] * 2, lat["shard_size"], failed)
    out.frames = _frames_problems(root, meta, shard, failed)
    return out


def commit_record_problems(root: Path, meta: dict[str, Any], shard: dict[str, Any]) -> list[str]:
    """The shard's commit record must hold what cache.json says (a cache.json written during
    a build leaves the member tables out: then they are not compared)."""
    rec_path = StorePaths(root).commit_record(shard["index"])
    try:
        rec = read_json(rec_path, "commit record")
    except CacheFormatError as e:
        return [f"shard {shard['index']}: {e}"]
    if rec.get("identity_sha256") != meta.get("identity_sha256"):
        return [f"shard {shard['index']}: commit record {rec_path} belongs to another build"]
    entry = {k: v for k, v in shard.items() if k != "status"}
    rec = {k: v for k, v in rec.items() if k != "identity_sha256"}
    if meta.get("status") != STATUS_COMPLETE and "members" not in entry.get("frames", {}):
        rec["frames"] = {k: v for k, v in rec.get("frames", {}).items() if k != "members"}
    if rec != entry:
        diff = sorted(k for k in set(rec) | set(entry) if rec.get(k) != entry.get(k))
        return [f"shard {shard['index']}: cache.json differs from commit record {rec_path} "
                f"in {', '.join(diff)} (cache.json edited?)"]
    return []


def _sharded_file_problems(root: Path, shard: dict[str, Any], part: str, row_nbytes: int,
                           shard_size: int, failed: set[int]
                           ) -> tuple[list[str], tuple[np.ndarray, np.ndarray] | None]:
    """Size and index of the shard's latents (or scale) file; returns the problems and the
    parsed index."""
    i = shard["index"]
    if part not in shard:
        return [f"shard {i}: cache.json records no {part} file (int8 stores have one per "
                "shard); rebuild the shard"], None
    path = root / shard[part]["path"]
    where = f"shard {i} {'latents' if part == 'latents' else 'latent scales'} {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [f"missing shard: {where} does not exist"], None
    problems = []
    if size != shard[part]["bytes"]:
        problems.append(f"truncated or resized file: {where} has {size} bytes, cache.json "
                        f"records {shard[part]['bytes']}")
    try:
        offsets, nbytes, _ = read_index(path, shard_size)
    except ShardIndexError as e:
        return problems + [f"damaged shard index: {e}"], None
    start, stop = shard["row_start"], shard["row_stop"]
    rows = start + np.arange(shard_size)
    present = offsets != EMPTY
    expected = (rows < stop) & ~np.isin(rows, list(failed))
    missing = rows[expected & ~present].tolist()
    unexpected = rows[present & ~expected].tolist()
    badsize = rows[present & expected & (nbytes != row_nbytes)].tolist()
    if missing:
        problems.append(f"rows missing from {where} (not recorded as failures): "
                        f"{rows_text(missing)}")
    if unexpected:
        problems.append(f"{where} holds rows recorded as failed or past the end: "
                        f"{rows_text(unexpected)}")
    if badsize:
        problems.append(f"{where}: rows not stored as {row_nbytes} raw bytes: "
                        f"{rows_text(badsize)}")
    return problems, (offsets, nbytes)


def _frames_problems(root: Path, meta: dict[str, Any], shard: dict[str, Any],
                     failed: set[int]) -> list[str]:
    path = root / shard["frames"]["path"]
    where = f"shard {shard['index']} frames {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [f"missing frames shard: {where} does not exist"]
    problems = []
    if size != shard["frames"]["bytes"]:
        problems.append(f"truncated or resized file: {where} has {size} bytes, cache.json "
                        f"records {shard['frames']['bytes']}")
    want = shard["row_stop"] - shard["row_start"] - len(failed)
    if shard["frames"].get("samples") != want:
        problems.append(f"frame count mismatch: {where} holds {shard['frames'].get('samples')} "
                        f"samples, expected {want} (rows of the shard minus failures)")
    table = shard["frames"].get("members")
    if table is not None:
        problems += member_table_problems(where, shard, table, meta["frames"]["num_frames"],
                                          size, failed)
    return problems


def member_table_problems(where: str, shard: dict[str, Any], table: Any, num_frames: int,
                          tar_size: int, failed: set[int]) -> list[str]:
    """The member table's own consistency, against the tar's size only (no read): one entry
    per row, None exactly for failed rows, ``[offset, n_json, n_0 .. n_T-1]`` each, rows
    chained back to back from byte 0 up to the end-of-archive blocks."""
    fix = (f"delete commits/shard-{shard['index']:06d}.json and re-run `salt cache build` "
           "with the same options to rewrite the shard")
    start, stop = shard["row_start"], shard["row_stop"]
    if not isinstance(table, list) or len(table) != stop - start:
        n = len(table) if isinstance(table, list) else type(table).__name__
        return [f"{where}: malformed member table in cache.json ({n} entries for "
                f"{stop - start} rows); {fix}"]
    wrong_none = [start + k for k, e in enumerate(table) if (e is None) != (start + k in failed)]
    if wrong_none:
        return [f"{where}: member table entries of rows {rows_text(wrong_none)} disagree with "
                f"the recorded failures; {fix}"]
    entries = [e for e in table if e is not None]
    if not entries:
        end = 0
    else:
        if any(not isinstance(e, list) or len(e) != 2 + num_frames for e in entries):
            return [f"{where}: malformed member table in cache.json (entries must hold "
                    f"{2 + num_frames} numbers: offset, .json size, {num_frames} frame sizes); "
                    f"{fix}"]
        try:
            arr = np.asarray(entries, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            return [f"{where}: malformed member table in cache.json ({e}); {fix}"]
        sizes = arr[:, 1:]
        if (sizes < 0).any() or (arr[:, 0] < 0).any():
            return [f"{where}: negative offset or size in the member table; {fix}"]
        span = BLOCK * sizes.shape[1] + ((sizes + BLOCK - 1) // BLOCK * BLOCK).sum(axis=1)
        ends = arr[:, 0] + span
        starts_ok = np.empty(len(arr), bool)
        starts_ok[0] = arr[0, 0] == 0
        starts_ok[1:] = arr[1:, 0] == ends[:-1]
        if not starts_ok.all():
            k = int(np.flatnonzero(~starts_ok)[0])
            row = [start + j for j, e in enumerate(table) if e is not None][k]
            return [f"{where}: member table: row {row} does not start where the previous row's "
                    f"members end (byte {int(arr[k, 0])}); {fix}"]
        end = int(ends[-1])
    if not end + END_OF_ARCHIVE <= tar_size < end + END_OF_ARCHIVE + RECORD:
        return [f"{where}: member table ends at byte {end} but the tar has {tar_size} bytes "
                f"(expected the end-of-archive blocks right after); the tar or its record "
                f"changed after the build; {fix}"]
    return []

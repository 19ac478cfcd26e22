"""Writing a store: creating or resuming it, one shard transaction at a time, and finalising.

Commit protocol of shard ``i`` (the only way data enters a store):

1. latents and frames are streamed to ``tmp/shard-i.latents`` and ``tmp/shard-i.tar``,
   checksummed on the way (per-row crc32c, per-file sha256), flushed and fsynced;
2. both files are renamed to their final names (``latents.zarr/c/i/0/0``,
   ``frames/shard-i.tar``) and the directories fsynced;
3. the commit record ``commits/shard-i.json`` (checksums, failures, the store's identity
   digest) is written atomically: from this moment shard ``i`` is committed;
4. ``cache.json`` (rewritten atomically by rank 0 only) mirrors the commit records.

Step 4 runs every few seconds during a build, so it costs O(new commits), not O(all): a
:class:`ManifestWriter` keeps the merged manifest in memory, reads only the commit records
that appeared since its last write (its own commits are handed to it; other ranks' are found
by listing ``commits/``), and renders the row table and each shard entry to JSON once. While
the build runs, cache.json's committed shard entries leave out the frames member table
(``frames.members``, 18 numbers a row, ~85% of a finished manifest): no reader of a store in
progress needs it (the trainer opens complete stores only; ``salt cache info`` and
``verify`` read the commit records), and the final write, once every shard is committed,
merges the full records.

A crash before 3 leaves a shard uncommitted whatever is on disk, and the next build
rewrites it; a crash after 3 leaves it committed, and the next build skips it. Shard bytes
depend only on the rows' values, so a resumed store equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from salt_vla.cache.format import (
    COMMITS_DIR,
    DTYPES,
    FAILURES_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAMES_DIR,
    IDENTITY_KEYS,
    LATENTS_DIR,
    LATENTS_SCALE_DIR,
    MANIFEST,
    QUANTIZED_DTYPES,
    SCALE_DTYPE_NAME,
    SHARD_COMMITTED,
    SHARD_PENDING,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    TMP_DIR,
    CacheFormatError,
    StorePaths,
    describe_os_error,
    dumps,
    dumps_fields,
    frame_key,
    frames_shard_relpath,
    identity_digest,
    latent_shard_relpath,
    num_shards,
    read_json,
    render_entry,
    render_entry_list,
    render_field,
    row_record,
    scale_shard_relpath,
    shard_rows,
    write_json_atomic,
    zarr_array_metadata,
    zarr_scale_metadata,
)
from salt_vla.cache.frames import FramesTarWriter
from salt_vla.cache.quantize import quantize_int8
from salt_vla.cache.shard import ShardFileWriter
from salt_vla.errors import SaltError
from salt_vla.files import fsync_dir, write_bytes_atomic

# Fault injection for the crash-safety tests: "<point>:<shard>" SIGKILLs this process at that
# point of that shard's commit. Points: after-tmp, after-rename, after-record.
CRASH_ENV = "SALT_CACHE_CRASH_AT"


class CacheBuildError(SaltError, RuntimeError):
    """The build cannot go on; the message names the path and what to do."""


def _crash_point(point: str, shard: int) -> None:
    if os.environ.get(CRASH_ENV) == f"{point}:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)


def new_manifest(
    *,
    split: str,
    teacher: dict[str, Any],
    view: dict[str, Any],
    frames: dict[str, Any],
    dtype: str,
    tokens: int,
    dim: int,
    grid: tuple[int, int, int],
    shard_size: int,
    video_ids: list[str],
    view_index: list[int],
    labels: list[int],
    missing_video_ids: list[str],
    command: list[str],
    tool_version: str,
) -> dict[str, Any]:
    """The manifest of a store about to be built: every shard pending."""
    rows = len(video_ids)
    n = num_shards(rows, shard_size)
    latents: dict[str, Any] = {
        "path": "latents.zarr",
        "dtype": dtype,
        "shape": [rows, tokens, dim],
        "tokens": tokens,
        "dim": dim,
        "grid": list(grid),
        "shard_size": shard_size,
        "num_shards": n,
        "fill_value": "NaN",
        "shard_path": "latents.zarr/c/{shard}/0/0",
    }
    if dtype in QUANTIZED_DTYPES:
        latents["fill_value"] = 0
        latents["scale"] = {
            "path": LATENTS_SCALE_DIR,
            "dtype": SCALE_DTYPE_NAME,
            "shape": [rows, tokens],
            "shard_path": LATENTS_SCALE_DIR + "/c/{shard}/0",
            "fill_value": "NaN",
            "rule": "value = latents[r, t, :] * scale[r, t]; scale[r, t] = max|x[t, :]| / 127 "
                    "(float16), latents = round(x / scale) clipped to [-127, 127]",
        }
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "split": split,
        "teacher": teacher,
        "view": view,
        "frames": frames,
        "latents": latents,
        "rows": {
            "count": rows,
            "video_id": list(video_ids),
            "view_index": list(view_index),
            "label": list(labels),
            "missing_video_ids": list(missing_video_ids),
        },
    }
    manifest["identity_sha256"] = identity_digest(manifest)
    manifest["tool_version"] = tool_version
    manifest["command"] = list(command)
    manifest["status"] = STATUS_BUILDING
    manifest["shards"] = [_pending(i, rows, shard_size) for i in range(n)]
    manifest["counts"] = _counts(manifest)
    manifest["failures_file"] = "failures.jsonl"
    return manifest


def _pending(i: int, rows: int, shard_size: int) -> dict[str, Any]:
    r = shard_rows(i, rows, shard_size)
    return {"index": i, "row_start": r.start, "row_stop": r.stop, "status": SHARD_PENDING}


def _counts(manifest: dict[str, Any]) -> dict[str, int]:
    shards = manifest["shards"]
    done = [s for s in shards if s["status"] == SHARD_COMMITTED]
    counts = _empty_counts(manifest, len(shards))
    for s in done:
        _count_shard(counts, s)
    return counts


def _empty_counts(manifest: dict[str, Any], shards: int) -> dict[str, int]:
    return {"rows": manifest["rows"]["count"], "shards": shards, "committed_shards": 0,
            "written_rows": 0, "failed_rows": 0,
            "missing_videos": len(manifest["rows"]["missing_video_ids"]), "latent_bytes": 0,
            "frames_bytes": 0}


def _count_shard(counts: dict[str, int], s: dict[str, Any]) -> None:
    """Add committed shard entry ``s`` to ``counts`` (latent bytes include int8 scales)."""
    failed = len(s["failures"])
    counts["committed_shards"] += 1
    counts["failed_rows"] += failed
    counts["written_rows"] += s["row_stop"] - s["row_start"] - failed
    counts["latent_bytes"] += s["latents"]["bytes"] + s.get("scale", {}).get("bytes", 0)
    counts["frames_bytes"] += s["frames"]["bytes"]


def _identity_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in IDENTITY_KEYS:
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                sub = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:3]
                detail = ", ".join(f"{key}.{k}: stored {str(a.get(k))[:80]!r}, now "
                                   f"{str(b.get(k))[:80]!r}" for k in sub)
                return detail or key
            return f"{key}: stored {str(a)[:80]!r}, now {str(b)[:80]!r}"
    return "identity digest"


def _writable(what: str, path: Path, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, turning an OSError into a CacheBuildError naming ``path`` and the fix."""
    try:
        return fn(*args)
    except OSError as e:
        raise CacheBuildError(describe_os_error(e, path, what)) from e


class StoreLock:
    """Exclusive lock on a store for one build (rank 0 holds it): a second build started on
    the same directory would rewrite the first one's temporary files."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        import fcntl

        _writable("creating", self.path.parent, self.path.parent.mkdir, 0o777, True, True)
        fd = _writable("creating", self.path, os.open, self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CacheBuildError(
                f"another build is writing {self.path.parent} (it holds {self.path}); wait for "
                f"it to finish or stop it, then re-run"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


_OURS = {MANIFEST, LATENTS_DIR, LATENTS_SCALE_DIR, FRAMES_DIR, COMMITS_DIR, TMP_DIR,
         FAILURES_FILE}


def prepare_store(root: Path, manifest: dict[str, Any], check_only: bool = False
                  ) -> dict[str, Any]:
    """Create the store at ``root`` for ``manifest``, or check that the existing one was
    started with the same identity (to resume it). Clears ``tmp/``. Returns the manifest
    on disk (whose ``command`` is the one that created the store). ``check_only``: only
    the checks, nothing written. Rank 0 only, holding the StoreLock."""
    paths = StorePaths(root)
    if paths.manifest.exists():
        old = read_json(paths.manifest, "cache manifest")
        if old.get("format_version") != manifest["format_version"]:
            raise CacheBuildError(
                f"{paths.manifest} was started by another salt-vla version (cache format "
                f"version {old.get('format_version')}; this one writes {manifest['format_version']}"
                f") and cannot be resumed by this one. Finish it with the version that started "
                f"it, choose another --out, or delete {root} to rebuild."
            )
        if old.get("identity_sha256") != manifest["identity_sha256"]:
            raise CacheBuildError(
                f"{paths.manifest} describes another cache ({_identity_diff(old, manifest)}). "
                f"Pass the options it was built with to resume it, choose another --out, or "
                f"delete {root} to rebuild."
            )
        manifest = old
    elif root.exists() and any(p.name not in _OURS and not p.name.startswith(".")
                               for p in root.iterdir()):
        raise CacheBuildError(
            f"{root} exists and is not a cache (no cache.json); choose an empty or new --out"
        )
    if check_only:
        return manifest
    _writable("creating", root, root.mkdir, 0o777, True, True)
    if not paths.manifest.exists():
        _writable("writing", paths.manifest, write_json_atomic, paths.manifest, manifest)
    lat = manifest["latents"]
    quantized = lat["dtype"] in QUANTIZED_DTYPES
    arrays = [paths.latents] + ([paths.latents_scale] if quantized else [])
    for d in (*arrays, paths.frames, paths.commits, paths.tmp):
        _writable("creating", d, d.mkdir, 0o777, True, True)
    # Leftovers of a killed build: shard temp files, and temp files of atomic JSON writes.
    stale = [*paths.tmp.iterdir()]
    for d in (root, paths.commits, *arrays):
        stale += d.glob(".*.tmp-*")
    for p in stale:
        _writable("removing", p, p.unlink)
    metas = [(paths.zarr_json, zarr_array_metadata(*lat["shape"], lat["dtype"],
                                                   lat["shard_size"]))]
    if quantized:
        metas.append((paths.scale_zarr_json, zarr_scale_metadata(lat["shape"][0],
                                                                 lat["tokens"],
                                                                 lat["shard_size"])))
    for path, meta in metas:
        if not path.exists() or path.read_bytes() != dumps(meta):
            _writable("writing", path, write_bytes_atomic, path, dumps(meta))
    return manifest


def read_commit(root: Path, shard: int, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The commit record of ``shard`` when the shard is committed and its files are there
    with the recorded sizes; None when the shard must be (re)built."""
    paths = StorePaths(root)
    rec_path = paths.commit_record(shard)
    if not rec_path.exists():
        return None
    try:
        rec = read_json(rec_path, "commit record")
    except CacheFormatError:
        return None
    if rec.get("identity_sha256") != manifest["identity_sha256"] or rec.get("index") != shard:
        return None
    for part in ("latents", "scale", "frames"):
        if part not in rec:
            continue
        f = root / rec[part]["path"]
        if not f.exists() or f.stat().st_size != rec[part]["bytes"]:
            return None
    return rec


def committed_shards(root: Path, manifest: dict[str, Any],
                     shards: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    """Commit records of the committed shards among ``shards`` (default: all)."""
    todo = range(manifest["latents"]["num_shards"]) if shards is None else shards
    out = {}
    for i in todo:
        rec = read_commit(root, i, manifest)
        if rec is not None:
            out[i] = rec
    return out


@dataclass
class ShardTransaction:
    """Writes shard ``index`` of the store: ``add_row`` / ``add_failure`` in row order, then
    ``commit()``; ``abort()`` removes what was written. See the module docstring."""

    root: Path
    manifest: dict[str, Any]
    index: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = StorePaths(self.root)
        lat = self.manifest["latents"]
        self.rows = shard_rows(self.index, lat["shape"][0], lat["shard_size"])
        self.dtype = DTYPES[lat["dtype"]]
        self.quantized = lat["dtype"] in QUANTIZED_DTYPES
        self._tmp_lat = self.paths.tmp / f"shard-{self.index:06d}.latents"
        self._tmp_tar = self.paths.tmp / f"shard-{self.index:06d}.tar"
        self._tmp_scale = self.paths.tmp / f"shard-{self.index:06d}.scale"
        row_nbytes = lat["tokens"] * lat["dim"] * self.dtype.itemsize
        self._f_lat = _writable("creating", self._tmp_lat, open, self._tmp_lat, "wb")
        self._f_tar = _writable("creating", self._tmp_tar, open, self._tmp_tar, "wb")
        self._lat = ShardFileWriter(self._f_lat, lat["shard_size"], row_nbytes)
        self._f_scale = self._scale = None
        if self.quantized:  # int8: the per-token float16 scales, a second sharded array
            self._f_scale = _writable("creating", self._tmp_scale, open, self._tmp_scale, "wb")
            self._scale = ShardFileWriter(self._f_scale, lat["shard_size"], lat["tokens"] * 2)
        self._tar = FramesTarWriter(self._f_tar)
        self._members: dict[int, list[int]] = {}  # row -> its frames member-table entry
        self._next = self.rows.start

    def _row_meta(self, row: int) -> dict[str, Any]:
        return row_record(self.manifest["rows"], row)

    def _advance(self, row: int) -> None:
        if row < self._next or row not in self.rows:
            raise ValueError(f"shard {self.index}: row {row} out of order (next is "
                             f"{self._next}, shard rows {self.rows.start}..{self.rows.stop - 1})")
        self._next = row + 1

    def add_row(self, row: int, latents: np.ndarray, jpegs: list[bytes]) -> None:
        """Append a row's latents ``[tokens, dim]`` and its JPEG frames."""
        self._advance(row)
        if self.quantized:
            data, scale = quantize_int8(latents)
            assert self._scale is not None
            try:
                self._scale.write_row(row - self.rows.start, scale)
            except OSError as e:
                raise CacheBuildError(_describe(e, self._tmp_scale)) from e
        else:
            data = np.ascontiguousarray(latents, dtype=self.dtype)
        try:
            self._lat.write_row(row - self.rows.start, data)
        except OSError as e:
            raise CacheBuildError(_describe(e, self._tmp_lat)) from e
        try:
            self._members[row] = self._tar.add(frame_key(row), jpegs, self._row_meta(row))
        except OSError as e:
            raise CacheBuildError(_describe(e, self._tmp_tar)) from e

    def add_failure(self, row: int, reason: str) -> None:
        """Record that ``row``'s video could not be decoded; its latents stay empty."""
        self._advance(row)
        meta = self._row_meta(row)
        self.failures.append({"row": row, "video_id": meta["video_id"], "view": meta["view"],
                              "reason": reason})

    def commit(self) -> dict[str, Any]:
        """Steps 1-3 of the commit protocol; returns the commit record."""
        i = self.index
        lat_size, lat_sha = _finish(self._lat, self._f_lat, self._tmp_lat)
        tar_size, tar_sha = _finish(self._tar, self._f_tar, self._tmp_tar)
        scale_size, scale_sha = 0, ""
        if self._scale is not None and self._f_scale is not None:
            scale_size, scale_sha = _finish(self._scale, self._f_scale, self._tmp_scale)
        _crash_point("after-tmp", i)
        rec_path = self.paths.commit_record(i)
        try:
            return self._rename_and_record(lat_size, lat_sha, tar_size, tar_sha, scale_size,
                                           scale_sha)
        except (OSError, CacheBuildError):
            # E.g. the disk filled up at the commit record: the shard is not committed, so
            # its renamed files are garbage that would hold the space a re-run needs.
            if not rec_path.exists():
                self._remove_files()
            raise

    def _rename_and_record(self, lat_size: int, lat_sha: str, tar_size: int, tar_sha: str,
                           scale_size: int, scale_sha: str) -> dict[str, Any]:
        """Steps 2-3 of the commit protocol."""
        i = self.index
        lat_final = self.paths.latent_shard(i)
        tar_final = self.paths.frames_shard(i)
        scale_final = self.paths.scale_shard(i)
        try:
            lat_final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp_lat, lat_final)
            if self._scale is not None:
                scale_final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp_scale, scale_final)
                fsync_dir(scale_final.parent)
            os.replace(self._tmp_tar, tar_final)
            fsync_dir(lat_final.parent)
            fsync_dir(tar_final.parent)
        except OSError as e:
            raise CacheBuildError(_describe(e, lat_final.parent)) from e
        _crash_point("after-rename", i)
        crc = _hex_crcs(self._lat.row_crc[:len(self.rows)])
        record = {
            "index": i,
            "identity_sha256": self.manifest["identity_sha256"],
            "row_start": self.rows.start,
            "row_stop": self.rows.stop,
            "latents": {"path": latent_shard_relpath(i), "bytes": lat_size, "sha256": lat_sha},
            "frames": {"path": frames_shard_relpath(i), "bytes": tar_size, "sha256": tar_sha,
                       "samples": self._tar.samples,
                       # Where each row's tar members are, so readers need not scan headers.
                       "members": [self._members.get(r) for r in self.rows]},
            "row_crc32c": crc,
            "failures": self.failures,
        }
        if self._scale is not None:
            record["scale"] = {"path": scale_shard_relpath(i), "bytes": scale_size,
                               "sha256": scale_sha}
            record["scale_crc32c"] = _hex_crcs(self._scale.row_crc[:len(self.rows)])
        rec_path = self.paths.commit_record(i)
        _writable("writing", rec_path, write_json_atomic, rec_path, record)
        _crash_point("after-record", i)
        return record

    def _remove_files(self) -> None:
        """Every file of this uncommitted shard, temporary or renamed already."""
        i = self.index
        for p in (self._tmp_lat, self._tmp_tar, self._tmp_scale, self.paths.latent_shard(i),
                  self.paths.frames_shard(i), self.paths.scale_shard(i)):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass  # the next build's prepare_store clears what is left

    def abort(self) -> None:
        """Drop the shard's temporary files (the shard stays uncommitted)."""
        for f in (self._f_lat, self._f_tar, self._f_scale):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        for p in (self._tmp_lat, self._tmp_tar, self._tmp_scale):
            p.unlink(missing_ok=True)


def _finish(writer: ShardFileWriter | FramesTarWriter, f: BinaryIO, path: Path
            ) -> tuple[int, str]:
    """Step 1's end for one file: its trailer written, flushed, fsynced and closed; returns
    ``(size, sha256)``."""
    try:
        size, sha = writer.close()
        f.flush()
        os.fsync(f.fileno())
        f.close()
    except OSError as e:
        raise CacheBuildError(_describe(e, path)) from e
    return size, sha


def _hex_crcs(crcs: list[int | None]) -> list[str | None]:
    return [None if c is None else f"{c:08x}" for c in crcs]


def _describe(e: OSError, path: Path) -> str:
    return describe_os_error(e, path, "writing")


def _shard_entry(rec: dict[str, Any], interim: bool = False) -> dict[str, Any]:
    """The cache.json entry of a committed shard from its commit record; ``interim`` (a build
    in progress) leaves out the frames member table (see the module docstring)."""
    entry = {k: v for k, v in rec.items() if k != "identity_sha256"}
    if interim and "members" in entry.get("frames", {}):
        entry["frames"] = {k: v for k, v in entry["frames"].items() if k != "members"}
    entry["status"] = SHARD_COMMITTED
    return entry


def merged_manifest(root: Path, manifest: dict[str, Any],
                    records: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``manifest`` with every committed shard's record folded in (status, counts)."""
    if records is None:
        records = committed_shards(root, manifest)
    out = dict(manifest)
    rows, size = manifest["rows"]["count"], manifest["latents"]["shard_size"]
    shards = []
    for i in range(manifest["latents"]["num_shards"]):
        rec = records.get(i)
        shards.append(_pending(i, rows, size) if rec is None else _shard_entry(rec))
    out["shards"] = shards
    out["counts"] = _counts(out)
    all_done = out["counts"]["committed_shards"] == len(shards)
    out["status"] = STATUS_COMPLETE if all_done else STATUS_BUILDING
    return out


class ManifestWriter:
    """cache.json of a store being built, merged in memory (rank 0; the module docstring
    says why and what an interim cache.json leaves out).

    ``add(shard, record)`` folds in a commit this process made; :meth:`write` first picks up
    the commit records other ranks wrote since the last write (one directory listing, then
    only the new records), then writes cache.json: while shards are pending, assembled from
    the row table and shard entries rendered once; when every shard is committed, the full
    merge of all commit records (once), after failures.jsonl.
    """

    _MERGED = ("shards", "counts", "status")

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self.paths = StorePaths(self.root)
        self.manifest = manifest
        self.num_shards = int(manifest["latents"]["num_shards"])
        # Every field but the merged ones never changes during a build: render it once.
        self._static = {k: render_field(v) for k, v in manifest.items() if k not in self._MERGED}
        self.records_read = 0  # commit records read from disk (the benchmark reports it)
        self._reset()

    def _reset(self) -> None:
        rows, size = self.manifest["rows"]["count"], self.manifest["latents"]["shard_size"]
        self._lines = [render_entry(_pending(i, rows, size)) for i in range(self.num_shards)]
        self._committed: set[int] = set()
        self._seen: set[str] = set()  # names in commits/ already folded in
        self._counts = _empty_counts(self.manifest, self.num_shards)
        self.refresh()

    @property
    def complete(self) -> bool:
        return len(self._committed) == self.num_shards

    def add(self, shard: int, record: dict[str, Any]) -> None:
        """Fold in the commit record of ``shard`` (a no-op when it is already in)."""
        if shard in self._committed:
            return
        entry = _shard_entry(record, interim=True)
        self._lines[shard] = render_entry(entry)
        self._committed.add(shard)
        _count_shard(self._counts, entry)

    def refresh(self) -> int:
        """Fold in the commit records written since the last call (other ranks', or, the
        first time, a previous run's); returns how many were new. Costs one listing of
        ``commits/`` and one read per new record."""
        try:
            names = os.listdir(self.paths.commits)
        except FileNotFoundError:
            return 0
        new = 0
        for name in names:
            if name in self._seen or not (name.startswith("shard-") and name.endswith(".json")):
                continue
            digits = name[len("shard-"):-len(".json")]
            if not digits.isdigit() or not 0 <= int(digits) < self.num_shards:
                continue
            shard = int(digits)
            if shard not in self._committed:
                rec = read_commit(self.root, shard, self.manifest)
                self.records_read += 1
                if rec is None:
                    continue  # another build's record, or files still landing: look again
                self.add(shard, rec)
                new += 1
            self._seen.add(name)
        return new

    def interim_bytes(self) -> bytes:
        """cache.json of the build so far (status building; no member tables)."""
        rendered = dict(self._static)
        rendered["shards"] = render_entry_list(self._lines)
        rendered["counts"] = render_field(self._counts)
        rendered["status"] = render_field(STATUS_BUILDING)
        return dumps_fields(rendered)

    def write(self) -> dict[str, Any]:
        """Write cache.json (and, when complete, failures.jsonl first); returns the
        manifest's merged fields (``status``, ``counts``, and the full manifest when
        complete)."""
        self.refresh()
        if self.complete:
            merged = merged_manifest(self.root, self.manifest)
            if merged["status"] == STATUS_COMPLETE:
                _writable("writing", self.paths.failures, write_bytes_atomic,
                          self.paths.failures, failure_lines(merged))
                _writable("writing", self.paths.manifest, write_json_atomic,
                          self.paths.manifest, merged)
                return merged
            self._reset()  # a record vanished since it was read (deleted by hand)
        _writable("writing", self.paths.manifest, write_bytes_atomic, self.paths.manifest,
                  self.interim_bytes())
        return {"status": STATUS_BUILDING, "counts": dict(self._counts),
                "shards": [{"index": i, "status": SHARD_COMMITTED if i in self._committed
                            else SHARD_PENDING} for i in range(self.num_shards)]}


def failure_lines(manifest: dict[str, Any]) -> bytes:
    """failures.jsonl: missing videos first (no row), then failed rows in row order."""
    lines = [{"row": None, "video_id": v, "view": None, "reason": "video file not found"}
             for v in manifest["rows"]["missing_video_ids"]]
    for s in manifest["shards"]:
        if s["status"] == SHARD_COMMITTED:
            lines.extend(s["failures"])
    return b"".join(json.dumps(x, sort_keys=True).encode() + b"\n" for x in lines)


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Step 4 once, from the commit records on disk (a build keeps a
    :class:`ManifestWriter` instead); when every shard is committed, also writes
    failures.jsonl (before cache.json says "complete"). Rank 0 only."""
    return ManifestWriter(root, manifest).write()

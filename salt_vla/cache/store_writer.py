"""Writing a store: creating or resuming it, one shard transaction at a time, and finalising.

Commit protocol of shard ``i`` (the only way data enters a store):

1. latents and frames are streamed to ``tmp/shard-i.latents`` and ``tmp/shard-i.tar``,
   checksummed on the way (per-row crc32c, per-file sha256), flushed and fsynced;
2. both files are renamed to their final names (``latents.zarr/c/i/0/0``,
   ``frames/shard-i.tar``) and the directories fsynced;
3. the commit record ``commits/shard-i.json`` (checksums, failures, the store's identity
   digest) is written atomically: from this moment shard ``i`` is committed;
4. ``cache.json`` (rewritten atomically by rank 0 only) mirrors the commit records.

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
from typing import Any

import numpy as np

from salt_vla.cache.format import (
    COMMITS_DIR,
    FAILURES_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAMES_DIR,
    IDENTITY_KEYS,
    LATENTS_DIR,
    MANIFEST,
    SHARD_COMMITTED,
    SHARD_PENDING,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    TMP_DIR,
    CacheFormatError,
    StorePaths,
    describe_os_error,
    dumps,
    frame_key,
    frames_shard_relpath,
    identity_digest,
    latent_shard_relpath,
    num_shards,
    read_json,
    shard_rows,
    write_json_atomic,
    zarr_array_metadata,
)
from salt_vla.cache.frames import FramesTarWriter
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
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "split": split,
        "teacher": teacher,
        "view": view,
        "frames": frames,
        "latents": {
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
        },
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
    failed = sum(len(s["failures"]) for s in done)
    written = sum(s["row_stop"] - s["row_start"] for s in done) - failed
    return {
        "rows": manifest["rows"]["count"],
        "shards": len(shards),
        "committed_shards": len(done),
        "written_rows": written,
        "failed_rows": failed,
        "missing_videos": len(manifest["rows"]["missing_video_ids"]),
        "latent_bytes": sum(s["latents"]["bytes"] for s in done),
        "frames_bytes": sum(s["frames"]["bytes"] for s in done),
    }


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


_OURS = {MANIFEST, LATENTS_DIR, FRAMES_DIR, COMMITS_DIR, TMP_DIR, FAILURES_FILE}


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
    for d in (paths.latents, paths.frames, paths.commits, paths.tmp):
        _writable("creating", d, d.mkdir, 0o777, True, True)
    # Leftovers of a killed build: shard temp files, and temp files of atomic JSON writes.
    stale = [*paths.tmp.iterdir()]
    for d in (root, paths.commits, paths.latents):
        stale += d.glob(".*.tmp-*")
    for p in stale:
        _writable("removing", p, p.unlink)
    meta = zarr_array_metadata(*manifest["latents"]["shape"], manifest["latents"]["dtype"],
                               manifest["latents"]["shard_size"])
    if not paths.zarr_json.exists() or paths.zarr_json.read_bytes() != dumps(meta):
        _writable("writing", paths.zarr_json, write_bytes_atomic, paths.zarr_json, dumps(meta))
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
    for part in ("latents", "frames"):
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
        self.dtype = np.dtype(lat["dtype"]).newbyteorder("<")
        self._tmp_lat = self.paths.tmp / f"shard-{self.index:06d}.latents"
        self._tmp_tar = self.paths.tmp / f"shard-{self.index:06d}.tar"
        row_nbytes = lat["tokens"] * lat["dim"] * self.dtype.itemsize
        self._f_lat = _writable("creating", self._tmp_lat, open, self._tmp_lat, "wb")
        self._f_tar = _writable("creating", self._tmp_tar, open, self._tmp_tar, "wb")
        self._lat = ShardFileWriter(self._f_lat, lat["shard_size"], row_nbytes)
        self._tar = FramesTarWriter(self._f_tar)
        self._members: dict[int, list[int]] = {}  # row -> its frames member-table entry
        self._next = self.rows.start

    def _row_meta(self, row: int) -> dict[str, Any]:
        r = self.manifest["rows"]
        return {"row": row, "video_id": r["video_id"][row], "view": r["view_index"][row],
                "label": r["label"][row]}

    def _advance(self, row: int) -> None:
        if row < self._next or row not in self.rows:
            raise ValueError(f"shard {self.index}: row {row} out of order (next is "
                             f"{self._next}, shard rows {self.rows.start}..{self.rows.stop - 1})")
        self._next = row + 1

    def add_row(self, row: int, latents: np.ndarray, jpegs: list[bytes]) -> None:
        """Append a row's latents ``[tokens, dim]`` and its JPEG frames."""
        self._advance(row)
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
        try:
            lat_size, lat_sha = self._lat.close()
            self._f_lat.flush()
            os.fsync(self._f_lat.fileno())
        except OSError as e:
            raise CacheBuildError(_describe(e, self._tmp_lat)) from e
        try:
            tar_size, tar_sha = self._tar.close()
            self._f_tar.flush()
            os.fsync(self._f_tar.fileno())
        except OSError as e:
            raise CacheBuildError(_describe(e, self._tmp_tar)) from e
        self._f_lat.close()
        self._f_tar.close()
        _crash_point("after-tmp", i)
        lat_final = self.paths.latent_shard(i)
        tar_final = self.paths.frames_shard(i)
        try:
            lat_final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp_lat, lat_final)
            os.replace(self._tmp_tar, tar_final)
            fsync_dir(lat_final.parent)
            fsync_dir(tar_final.parent)
        except OSError as e:
            raise CacheBuildError(_describe(e, lat_final.parent)) from e
        _crash_point("after-rename", i)
        crc = [None if c is None else f"{c:08x}" for c in self._lat.row_crc[:len(self.rows)]]
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
        rec_path = self.paths.commit_record(i)
        _writable("writing", rec_path, write_json_atomic, rec_path, record)
        _crash_point("after-record", i)
        return record

    def abort(self) -> None:
        """Drop the shard's temporary files (the shard stays uncommitted)."""
        for f in (self._f_lat, self._f_tar):
            try:
                f.close()
            except OSError:
                pass
        for p in (self._tmp_lat, self._tmp_tar):
            p.unlink(missing_ok=True)


def _describe(e: OSError, path: Path) -> str:
    return describe_os_error(e, path, "writing")


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
        if rec is None:
            shards.append(_pending(i, rows, size))
        else:
            entry = {k: v for k, v in rec.items() if k != "identity_sha256"}
            entry["status"] = SHARD_COMMITTED
            shards.append(entry)
    out["shards"] = shards
    out["counts"] = _counts(out)
    all_done = out["counts"]["committed_shards"] == len(shards)
    out["status"] = STATUS_COMPLETE if all_done else STATUS_BUILDING
    return out


def failure_lines(manifest: dict[str, Any]) -> bytes:
    """failures.jsonl: missing videos first (no row), then failed rows in row order."""
    lines = [{"row": None, "video_id": v, "view": None, "reason": "video file not found"}
             for v in manifest["rows"]["missing_video_ids"]]
    for s in manifest["shards"]:
        if s["status"] == SHARD_COMMITTED:
            lines.extend(s["failures"])
    return b"".join(json.dumps(x, sort_keys=True).encode() + b"\n" for x in lines)


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Step 4: rewrite cache.json from the commit records; when every shard is committed,
    also write failures.jsonl (before cache.json says "complete"). Rank 0 only."""
    paths = StorePaths(root)
    merged = merged_manifest(root, manifest)
    if merged["status"] == STATUS_COMPLETE:
        _writable("writing", paths.failures, write_bytes_atomic, paths.failures,
                  failure_lines(merged))
    _writable("writing", paths.manifest, write_json_atomic, paths.manifest, merged)
    return merged

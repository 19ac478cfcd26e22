"""The on-disk layout of a latent cache: file names, ``cache.json`` schema, atomic writes.

A store is one directory per split::

    cache.json                     manifest (this module); written atomically
    latents.zarr/zarr.json         zarr v3 array metadata, [rows, tokens, dim], sharding codec
    latents.zarr/c/<shard>/0/0     one shard file per ``shard_size`` rows (see shard.py)
    frames/shard-<shard:06d>.tar   webdataset tar of the same rows' JPEG frames (written by
                                   frames.py, read by frames_reader.py)
    commits/shard-<shard:06d>.json commit record of a shard: it exists only once the shard's
                                   files are complete, renamed into place and checksummed;
                                   it also says where each row's tar members are
    failures.jsonl                 videos that could not be decoded, one JSON object a line
    tmp/                           shards being written (never read; cleared by the next build)

docs/cache-format.md describes all of it for readers that do not use this package.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.errors import SaltError
from salt_vla.files import write_bytes_atomic

FORMAT_NAME = "salt-vla-latent-cache"
# Version 2 added the frames member table to the commit records (and so to cache.json's shard
# entries); a version-1 store reads the same, its tars' headers scanned instead.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

MANIFEST = "cache.json"
LATENTS_DIR = "latents.zarr"
FRAMES_DIR = "frames"
COMMITS_DIR = "commits"
TMP_DIR = "tmp"
FAILURES_FILE = "failures.jsonl"

# zarr v3 data type names we store; both little-endian on disk.
DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}

STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"
SHARD_PENDING = "pending"
SHARD_COMMITTED = "committed"

# Keys of cache.json that define what the store contains. Two builds with the same identity
# produce the same bytes; a resumed build must match it exactly.
IDENTITY_KEYS = ("format", "format_version", "split", "teacher", "view", "frames", "latents",
                 "rows")


class CacheFormatError(SaltError, ValueError):
    """A store's files do not match the format (missing, malformed, or from another version)."""


@dataclass(frozen=True)
class StorePaths:
    """Where each file of the store at ``root`` lives."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def latents(self) -> Path:
        return self.root / LATENTS_DIR

    @property
    def zarr_json(self) -> Path:
        return self.root / LATENTS_DIR / "zarr.json"

    @property
    def frames(self) -> Path:
        return self.root / FRAMES_DIR

    @property
    def commits(self) -> Path:
        return self.root / COMMITS_DIR

    @property
    def tmp(self) -> Path:
        return self.root / TMP_DIR

    @property
    def failures(self) -> Path:
        return self.root / FAILURES_FILE

    def latent_shard(self, shard: int) -> Path:
        return self.root / latent_shard_relpath(shard)

    def frames_shard(self, shard: int) -> Path:
        return self.root / frames_shard_relpath(shard)

    def commit_record(self, shard: int) -> Path:
        return self.commits / f"shard-{shard:06d}.json"


def latent_shard_relpath(shard: int) -> str:
    """Shard file of shard ``shard``, relative to the store: zarr's default chunk key."""
    return f"{LATENTS_DIR}/c/{shard}/0/0"


def frames_shard_relpath(shard: int) -> str:
    return f"{FRAMES_DIR}/shard-{shard:06d}.tar"


def frame_key(row: int) -> str:
    """Webdataset sample key of a row (sorts in row order)."""
    return f"{row:09d}"


def num_shards(rows: int, shard_size: int) -> int:
    return (rows + shard_size - 1) // shard_size


def shard_rows(shard: int, rows: int, shard_size: int) -> range:
    """Rows held by ``shard``; the last shard may be short."""
    start = shard * shard_size
    return range(start, min(start + shard_size, rows))


def zarr_array_metadata(rows: int, tokens: int, dim: int, dtype: str, shard_size: int) -> dict:
    """zarr v3 ``zarr.json`` of the latents array: one shard per ``shard_size`` rows, one row
    per inner chunk, raw little-endian bytes, crc32c-protected shard index at the end.

    Missing rows (failed videos) read as the fill value NaN, so a reader that ignores the row
    table cannot silently train on them.
    """
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    return {
        "shape": [rows, tokens, dim],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_size, tokens,
                                                                             dim]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN",
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [1, tokens, dim],
                    "codecs": [le],
                    "index_codecs": [le, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pretty(obj: Any, depth: int, indent: str = "") -> str:
    """Two levels of line breaks, compact below: a 168K-row table stays a few MB and
    still reads well (one line per section field, one line per shard)."""
    inner = indent + "  "
    if depth > 0 and isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_pretty(obj[k], depth - 1, inner)}"
                 for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if depth > 0 and isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return "[\n" + ",\n".join(inner + _compact(x) for x in obj) + "\n" + indent + "]"
    return _compact(obj)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, fixed layout): equal content, equal bytes."""
    return (_pretty(obj, 2) + "\n").encode()


def identity_of(manifest: dict) -> dict:
    """The part of a manifest that fixes the store's content."""
    return {k: manifest[k] for k in IDENTITY_KEYS if k in manifest}


def identity_digest(manifest: dict) -> str:
    """sha256 of the identity: commit records carry it so no record is reused across builds."""
    raw = json.dumps(identity_of(manifest), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """The store's JSON files: canonical bytes (:func:`dumps`) through the one atomic writer."""
    write_bytes_atomic(path, dumps(obj))


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the store, naming the file and the fix on failure."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CacheFormatError(f"{what} not found: {path}") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheFormatError(
            f"{path} is not valid JSON ({e}); the {what} is damaged. Rebuild the cache "
            f"(`salt cache build`, committed shards are kept) or restore the file."
        ) from None


def read_manifest(root: Path | str) -> dict:
    """Read and sanity-check ``cache.json`` of the store at ``root``."""
    paths = StorePaths(Path(root))
    if not paths.root.is_dir():
        raise CacheFormatError(
            f"no cache at {paths.root}: the directory does not exist. Build one with "
            f"`salt cache build`, or pass the right directory."
        )
    meta = read_json(paths.manifest, "cache manifest")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"{paths.manifest} is not a salt-vla cache manifest")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CacheFormatError(
            f"{paths.manifest} has format version {meta.get('format_version')}; this code "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}. Rebuild the cache with "
            "this version."
        )
    return meta


def describe_os_error(e: OSError, path: Path | str, doing: str) -> str:
    """One-line message for a write failure naming the path and what to do about it."""
    where = f"{doing} {path}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full while {where}. Free space on that filesystem or choose another "
                f"--out; committed shards are kept and a re-run resumes after them.")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied while {where}. Make the directory writable by this user "
                f"or choose another --out.")
    if e.errno == errno.EROFS:
        return f"read-only filesystem while {where}. Choose a writable --out."
    return f"{e.strerror or e} while {where}."

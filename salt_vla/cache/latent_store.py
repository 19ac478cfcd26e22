"""LatentStore: the reader of cached teacher latents, a memory map of the shard files.

zarr-python decodes a sharded read through its async codec pipeline (~450 clips/s on this
class of machine); the bytes of a row are already contiguous and uncompressed in the shard
file, so a memory map plus the shard index serves them at memcpy speed. Each shard's index
is parsed once per process; maps are opened lazily per process id, so the store can be
created in the main process and used in forked (or spawned) DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    read_json,
    read_manifest,
    zarr_array_metadata,
)
from salt_vla.cache.shard import EMPTY, ShardIndexError, index_nbytes, parse_index
from salt_vla.errors import SaltError


class MissingRowError(SaltError, KeyError):
    """A requested row has no latents (its video failed to decode, or its shard is missing)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class LatentStore:
    """Read-only access to ``latents.zarr`` of the cache at ``root``.

    ``get(rows)`` returns ``[len(rows), tokens, dim]`` in the stored dtype, equal to
    ``zarr.open(root / "latents.zarr")[rows]``. Rows of failed videos are not readable
    (``MissingRowError``); ``valid_rows`` lists the others.
    """

    def __init__(self, root: Path | str, *, allow_incomplete: bool = False,
                 manifest: dict[str, Any] | None = None) -> None:
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
        self.dtype: np.dtype = DTYPES[lat["dtype"]]
        self.shard_size = int(lat["shard_size"])
        self.num_rows, self.tokens, self.dim = self.shape
        self.row_nbytes = self.tokens * self.dim * self.dtype.itemsize
        self._check_zarr_metadata()
        present = np.zeros(self.num_rows, dtype=bool)
        for s in self.meta["shards"]:
            if s.get("status") == "committed":
                present[s["row_start"]:s["row_stop"]] = True
                for f in s.get("failures", []):
                    present[f["row"]] = False
        self.present = present
        self._pid: int | None = None
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _check_zarr_metadata(self) -> None:
        """The zarr metadata must describe the array cache.json promises (shape, dtype,
        one row per inner chunk, raw bytes): our reader assumes all of it."""
        got = read_json(self.paths.zarr_json, "zarr array metadata")
        want = zarr_array_metadata(*self.shape, self.meta["latents"]["dtype"], self.shard_size)
        for key in ("shape", "data_type", "chunk_grid", "codecs"):
            if got.get(key) != want[key]:
                raise CacheFormatError(
                    f"{self.paths.zarr_json}: {key} is {got.get(key)!r} but cache.json implies "
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
        r = self.meta["rows"]
        return {"row": row, "video_id": r["video_id"][row], "view": r["view_index"][row],
                "label": r["label"][row]}

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

    # --- reading --------------------------------------------------------------------------

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        pid = os.getpid()
        if pid != self._pid:
            # A forked child must not reuse maps bookkept by its parent: start afresh.
            self._maps = {}
            self._pid = pid
        hit = self._maps.get(shard)
        if hit is not None:
            return hit
        path = self.paths.latent_shard(shard)
        start = shard * self.shard_size
        chunks = self.shard_size
        try:
            mm = np.memmap(path, dtype=np.uint8, mode="r")
        except FileNotFoundError:
            raise MissingRowError(f"shard file {path} (rows {start}..) is missing; run "
                                  f"`salt cache verify {self.root}`") from None
        need = index_nbytes(chunks)
        if mm.size < need:
            raise CacheFormatError(f"{path} is truncated ({mm.size} bytes); run "
                                   f"`salt cache verify {self.root}`")
        try:
            offsets, nbytes = parse_index(mm[mm.size - need:], chunks, str(path))
        except ShardIndexError as e:
            raise CacheFormatError(f"{e}; run `salt cache verify {self.root}`") from None
        present = offsets != EMPTY
        bad = present & ((nbytes != self.row_nbytes) | (offsets + nbytes > mm.size - need))
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise CacheFormatError(
                f"{path}: row {row} is stored as {int(nbytes[bad][0])} bytes, expected "
                f"{self.row_nbytes} raw bytes (compressed or damaged); run `salt cache verify`"
            )
        self._maps[shard] = (mm, offsets)
        return mm, offsets

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Latents of ``rows``: ``[len(rows), tokens, dim]`` in the stored dtype (a copy)."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            bad = int(idx[(idx < 0) | (idx >= self.num_rows)][0])
            raise IndexError(f"row {bad} out of range for a cache of {self.num_rows} rows")
        out = np.empty((idx.size, self.tokens, self.dim), dtype=self.dtype)
        flat = out.reshape(idx.size, -1).view(np.uint8)
        nb = self.row_nbytes
        for i, row in enumerate(idx.tolist()):
            shard, local = divmod(row, self.shard_size)
            mm, offsets = self._shard(shard)
            off = offsets[local]
            if off == EMPTY or not self.present[row]:
                info = self.row_info(row)
                raise MissingRowError(
                    f"row {row} (video {info['video_id']}, view {info['view']}) has no latents: "
                    f"its video failed to decode (see failures.jsonl). Sample from "
                    f"LatentStore.valid_rows."
                )
            off = int(off)
            flat[i] = mm[off:off + nb]
        return out

    def __getitem__(self, row: int) -> np.ndarray:
        return self.get([row])[0]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        state["_pid"] = None
        return state

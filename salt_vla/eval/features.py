"""Token features of a whole split, computed once, so the probe trains on them for many epochs.

The frozen encoder runs once per clip (one deterministic view: the encoder's ``ViewSpec``,
view index 0); features are stored as float16 ``[clips, tokens, dim]``, in memory or, with a
cache directory, in ``<cache>/<split>-<key>/features.npy`` (a plain ``.npy`` read back through
a memory map) next to ``meta.json``. ``key`` hashes the encoder's identity (run checkpoint
sha256 / teacher sha256 / random arch+seed), the view hash and the clip list, so a cache entry
is reused only for exactly the same features. Size: clips x tokens x dim x 2 bytes, e.g. SSv2
train (168,913 clips) with a ViT-B at 16x224 (1,568 tokens x 768) is about 400 GB: cache on a
disk that holds it, or probe a ``limit``-ed subset.

A clip that cannot be decoded is skipped and listed in ``failed``; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from salt_vla.errors import SaltError
from salt_vla.eval.encoders import FrozenEncoder
from salt_vla.files import write_json_atomic

STORE_DTYPE = np.float16
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
FORMAT_VERSION = 1


class FeatureError(SaltError, ValueError):
    """A split that cannot be featurised (unlabeled, empty, every clip failed...)."""


@dataclass
class FeatureSet:
    """Features ``[n, N, D]`` (float16, possibly a read-only memory map) of a split's clips.

    Only clips that decoded are kept: ``features[i]`` is clip ``ids[i]`` of class
    ``labels[i]``; ``failed`` lists the others with the reason.
    """

    features: np.ndarray
    labels: np.ndarray  # int64 [n]
    ids: list[str]
    classes: list[str]
    split: str
    failed: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None  # the .npy file when cached on disk
    reused: bool = False  # True when read back from the cache instead of computed
    seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)


def feature_nbytes(clips: int, encoder: FrozenEncoder) -> int:
    """Bytes the features of ``clips`` clips take (float16)."""
    return clips * encoder.grid.num_tokens * encoder.dim * np.dtype(STORE_DTYPE).itemsize


class _ViewClips(Dataset):
    """Decodes clip ``i`` through the view; errors come back as strings, never raised."""

    def __init__(self, paths: list[Path], ids: list[str], view: Any) -> None:
        self.paths, self.ids, self.view = paths, ids, view

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        from salt_vla.data.video import VideoDecodeError
        from salt_vla.data.view import load_view

        try:
            return i, load_view(self.paths[i], self.view, self.ids[i]), ""
        except (VideoDecodeError, ValueError) as e:
            return i, None, str(e)


def _collate(items: list[tuple[int, np.ndarray | None, str]]) -> tuple[list, Any, list]:
    ok = [(i, f) for i, f, _ in items if f is not None]
    bad = [(i, err) for i, f, err in items if f is None]
    frames = torch.from_numpy(np.stack([f for _, f in ok])) if ok else None
    return [i for i, _ in ok], frames, bad


def _cache_key(encoder: FrozenEncoder, split: str, ids: list[str]) -> str:
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    text = json.dumps({"encoder": encoder.key(), "split": split, "ids": ids_hash,
                       "format": FORMAT_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_cached(entry: Path, classes: list[str], split: str) -> FeatureSet | None:
    meta_path, feat_path = entry / META_FILE, entry / FEATURES_FILE
    if not (meta_path.is_file() and feat_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        feats = np.load(feat_path, mmap_mode="r")
    except (OSError, ValueError):
        return None  # a damaged entry is recomputed, not trusted
    if meta.get("format_version") != FORMAT_VERSION or feats.shape[0] != len(meta["ids"]):
        return None
    return FeatureSet(feats, np.asarray(meta["labels"], dtype=np.int64), list(meta["ids"]),
                      classes, split, list(meta.get("failed", [])), feat_path, reused=True)


def compute_features(
    encoder: FrozenEncoder,
    root: Path | str,
    split: str,
    *,
    batch_size: int = 8,
    workers: int = 0,
    limit: int = 0,
    cache_dir: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Features of every clip of ``split`` under the SSv2-layout ``root`` (see module doc).

    ``limit`` > 0 keeps the first ``limit`` clips of the split file. ``workers`` decoding
    processes (0: decode in this process). ``progress(done, total)`` after each batch.
    """
    from salt_vla.data.ssv2 import load_split

    index = load_split(root, split)
    if not index.labeled:
        raise FeatureError(f"split {split!r} of {root} has no labels; probe on labeled splits "
                           "(train/validation)")
    entries = index.entries[:limit] if limit > 0 else index.entries
    if not entries:
        raise FeatureError(f"split {split!r} of {root} has no clips")
    ids = [e.id for e in entries]
    labels = np.asarray([e.label for e in entries], dtype=np.int64)
    entry_dir = None
    if cache_dir is not None:
        entry_dir = Path(cache_dir) / f"{split}-{_cache_key(encoder, split, ids)}"
        cached = _load_cached(entry_dir, index.classes, split)
        if cached is not None:
            return cached
    t0 = time.perf_counter()
    n, tokens, dim = len(ids), encoder.grid.num_tokens, encoder.dim
    tmp_path = None
    if entry_dir is not None:
        entry_dir.mkdir(parents=True, exist_ok=True)
        (entry_dir / META_FILE).unlink(missing_ok=True)  # invalid until recomputed in full
        tmp_path = entry_dir / f".{FEATURES_FILE}.tmp-{os.getpid()}.npy"
        feats = np.lib.format.open_memmap(tmp_path, "w+", STORE_DTYPE, (n, tokens, dim))
    else:
        feats = np.empty((n, tokens, dim), STORE_DTYPE)
    dataset = _ViewClips([index.video_path(i) for i in ids], ids, encoder.view)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, shuffle=False)
    ok = np.zeros(n, dtype=bool)
    failed: list[dict[str, str]] = []
    done = 0
    for rows, frames, bad in loader:
        if frames is not None:
            out = encoder.features(frames)
            if tuple(out.shape[1:]) != (tokens, dim):
                raise FeatureError(f"encoder {encoder.name} gave features {tuple(out.shape)}, "
                                   f"expected [B, {tokens}, {dim}]")
            feats[rows] = out.cpu().numpy().astype(STORE_DTYPE)
            ok[rows] = True
        failed += [{"id": ids[i], "error": err} for i, err in bad]
        done += len(rows) + len(bad)
        if progress:
            progress(done, n)
    if not ok.any():
        raise FeatureError(f"no clip of split {split!r} could be decoded; first error: "
                           f"{failed[0]['error'] if failed else '?'}")
    keep = np.flatnonzero(ok)
    if isinstance(feats, np.memmap):
        feats.flush()
    if len(keep) < n:
        feats = np.ascontiguousarray(feats[keep])
    result = FeatureSet(feats, labels[keep], [ids[i] for i in keep], index.classes, split,
                        failed, seconds=time.perf_counter() - t0)
    if entry_dir is not None and tmp_path is not None:
        result.path = _commit(entry_dir, tmp_path, result, encoder)
        result.features = np.load(result.path, mmap_mode="r")
    return result


def _commit(entry: Path, tmp_path: Path, fs: FeatureSet, encoder: FrozenEncoder) -> Path:
    """Put a finished entry in place: features first, then meta.json (which marks it valid)."""
    final = entry / FEATURES_FILE
    if not isinstance(fs.features, np.memmap):  # clips failed: write the kept rows only
        compact = tmp_path.with_name(tmp_path.name.replace(".tmp-", ".compact-"))
        np.save(compact, fs.features)
        tmp_path.unlink()
        tmp_path = compact
    os.replace(tmp_path, final)
    meta = {"format_version": FORMAT_VERSION, "encoder": encoder.describe,
            "view": encoder.view.to_dict(), "view_hash": encoder.view.hash(),
            "split": fs.split, "ids": fs.ids, "labels": fs.labels.tolist(), "failed": fs.failed,
            "shape": list(fs.features.shape), "dtype": np.dtype(STORE_DTYPE).name}
    write_json_atomic(entry / META_FILE, meta)
    return final

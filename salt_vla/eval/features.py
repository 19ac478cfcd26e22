"""Token features of a split for the probe: held in RAM, kept on disk, or streamed.

The frozen encoder sees one deterministic view per clip (the encoder's ``ViewSpec``, view
index 0) and its tokens are stored as float16 ``[clips, tokens, dim]``. Three ways to feed
the probe (``mode``), all giving it the same float16 values:

- ``memory``: computed once into RAM. Fastest epochs; needs clips x tokens x dim x 2 bytes,
  e.g. SSv2 train (168,913 clips) with a ViT-B at 16x224 (1,568 tokens x 768) is 379 GiB,
  plus 56 GiB for validation.
- ``disk``: computed once into ``<cache>/<split>-<key>/features.npy`` (a plain ``.npy``,
  written through the one atomic writer) next to ``meta.json``, and read back through a
  memory map, so RAM holds only what the page cache keeps. ``key`` hashes the encoder's
  identity (run checkpoint sha256 / teacher sha256 / random arch+seed), the view hash and the
  clip list, so an entry is reused only for exactly the same features.
- ``stream``: nothing stored; every batch is decoded (in ``workers`` processes) and
  encoded on the fly, every epoch, as V-JEPA's frozen evaluation does. Costs one encoder
  pass over the split per epoch (train) and per evaluation (validation).

:func:`plan_features` picks ``auto``'s mode from the sizes and checks RAM
(``/proc/meminfo`` MemAvailable) and disk (``shutil.disk_usage``) before anything is
allocated; a mode that cannot fit is refused with the numbers and the other options.

A clip that cannot be decoded is skipped and listed in ``failed``; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from salt_vla.errors import SaltError
from salt_vla.eval.encoders import FrozenEncoder
from salt_vla.files import atomic_path, write_json_atomic

STORE_DTYPE = np.float16
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
FORMAT_VERSION = 1
MODES = ("auto", "memory", "disk", "stream")
# memory mode takes at most this share of MemAvailable: the rest is for the decode workers,
# the encoder and probe, and the page cache that keeps the video files warm.
RAM_FRACTION = 0.5
DISK_FRACTION = 0.95  # disk mode leaves 5% of the free space to everyone else


class FeatureError(SaltError, ValueError):
    """A split that cannot be featurised (unlabeled, empty, every clip failed, too big for
    the chosen mode...)."""


@dataclass(frozen=True)
class SplitClips:
    """The labeled clips of a split to featurise: ``ids[i]`` of class ``labels[i]`` at
    ``paths[i]``; ``where`` is the index's layout line (what was read from where)."""

    split: str
    ids: list[str]
    labels: np.ndarray  # int64 [n]
    paths: list[Path]
    classes: list[str]
    where: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def load_clips(root: Path | str, split: str, limit: int = 0) -> SplitClips:
    """The clips of ``split`` under the SSv2 ``root`` (any layout); ``limit`` > 0 keeps the
    first ``limit`` of the split file."""
    from salt_vla.data.ssv2 import load_split

    index = load_split(root, split)
    if not index.labeled:
        raise FeatureError(f"split {split!r} of {root} has no labels; probe on labeled splits "
                           "(train/validation)")
    entries = index.entries[:limit] if limit > 0 else index.entries
    if not entries:
        raise FeatureError(f"split {split!r} of {root} has no clips")
    ids = [e.id for e in entries]
    return SplitClips(split, ids, np.asarray([e.label for e in entries], dtype=np.int64),
                      [index.video_path(i) for i in ids], index.classes, index.describe())


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


def features_bytes(clips: int, tokens: int, dim: int) -> int:
    """Bytes of the float16 features of ``clips`` clips of ``tokens x dim``."""
    return clips * tokens * dim * np.dtype(STORE_DTYPE).itemsize


def feature_nbytes(clips: int, encoder: FrozenEncoder) -> int:
    """Bytes the features of ``clips`` clips take (float16)."""
    return features_bytes(clips, encoder.grid.num_tokens, encoder.dim)


def memory_available() -> int:
    """Bytes of RAM a new allocation can use without swapping: MemAvailable from
    /proc/meminfo (free + reclaimable page cache), else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def disk_free(path: Path | str) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    from salt_vla.cache.estimate import nearest_existing

    return shutil.disk_usage(nearest_existing(Path(path))).free


def leftover_bytes(cache_dir: Path | str) -> int:
    """Disk used by unfinished ``features.npy`` temp files of earlier, killed runs in
    ``cache_dir`` (they can be hundreds of GiB at SSv2 size). Not deleted here: on a shared
    disk another probe may be writing one right now."""
    from salt_vla.files import temp_prefix

    used = 0
    for p in Path(cache_dir).glob(f"*/{temp_prefix(Path(FEATURES_FILE))}*"):
        try:
            used += p.stat().st_blocks * 512  # allocated, not apparent: the file is sparse
        except OSError:
            continue
    return used


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


@dataclass(frozen=True)
class FeaturePlan:
    """How the probe gets its features, and why (:func:`plan_features`)."""

    mode: str  # memory | disk | stream
    need: int  # bytes of all splits' features
    ram: int  # MemAvailable when planned
    disk: int | None  # free bytes at the feature cache (None: no cache given)
    reason: str

    def line(self) -> str:
        return f"features: {self.mode} ({self.reason})"


def _sizes(splits: dict[str, int], tokens: int, dim: int) -> tuple[int, str]:
    need = features_bytes(sum(splits.values()), tokens, dim)
    parts = " + ".join(f"{name} {n:,}" for name, n in splits.items())
    return need, f"({parts} clips) x {tokens:,} tokens x {dim} x 2 B (float16) = {_gib(need)}"


def plan_features(mode: str, splits: dict[str, int], tokens: int, dim: int,
                  cache_dir: Path | str | None = None, cached: bool = False,
                  epochs: int = 0) -> FeaturePlan:
    """Choose (``auto``) or check the features mode for splits of ``splits[name]`` clips of
    ``tokens x dim``, before anything is allocated.

    ``auto``: a finished disk cache for these features (``cached``) is reused; else memory
    when the features fit in :data:`RAM_FRACTION` of MemAvailable and no ``cache_dir`` is
    given; else disk when ``cache_dir`` is given and has room; else stream. An explicit mode
    that cannot fit raises FeatureError with the numbers and the options.
    """
    if mode not in MODES:
        raise FeatureError(f"--features {mode!r}: choose one of {', '.join(MODES)}")
    need, sizes = _sizes(splits, tokens, dim)
    ram = memory_available()
    free = disk_free(cache_dir) if cache_dir is not None else None
    fits_ram = need <= RAM_FRACTION * ram
    fits_disk = cached or (free is not None and need <= DISK_FRACTION * free)
    ram_text = f"MemAvailable {_gib(ram)}, memory mode takes at most {RAM_FRACTION:.0%} of it"
    disk_text = (f"{cache_dir} has {_gib(free)} free" if free is not None
                 else "no --feature-cache")
    leftover = leftover_bytes(cache_dir) if cache_dir is not None else 0
    if leftover:
        disk_text += (f" ({_gib(leftover)} more is held by unfinished features of killed runs, "
                      f"{cache_dir}/*/.{FEATURES_FILE}.tmp-*: delete them if no probe is "
                      f"writing there)")
    options = (f"--features stream (nothing stored: the encoder runs over every clip each "
               f"epoch{f', {epochs} epochs' if epochs else ''}), --feature-cache DIR on a "
               f"disk with {_gib(need / DISK_FRACTION)} free (computed once, read through a "
               f"memory map, reused by later probes), or fewer clips (--limit-train N, "
               f"--limit-val N)")
    if mode == "auto":
        if cached and cache_dir is not None:
            return FeaturePlan("disk", need, ram, free, f"reusing {cache_dir}; {sizes}")
        if fits_ram and cache_dir is None:
            return FeaturePlan("memory", need, ram, free, f"{sizes}; {ram_text}")
        if fits_disk and cache_dir is not None:
            return FeaturePlan("disk", need, ram, free, f"{sizes}; {disk_text}")
        why = "does not fit in RAM" if cache_dir is None else f"does not fit: {disk_text}"
        return FeaturePlan("stream", need, ram, free,
                           f"{sizes} {why} ({ram_text}); streaming: the encoder runs on every "
                           f"clip each epoch. --feature-cache DIR on a disk with "
                           f"{_gib(need / DISK_FRACTION)} free computes them once instead")
    if mode == "memory" and not fits_ram:
        raise FeatureError(f"the probe's features do not fit in RAM: {sizes}; {ram_text}. "
                           f"Options: {options}.")
    if mode == "disk":
        if cache_dir is None:
            raise FeatureError("--features disk needs --feature-cache DIR (where the .npy "
                               "files go)")
        if not fits_disk:
            raise FeatureError(f"the probe's features do not fit on disk: {sizes}; "
                               f"{disk_text}. Options: {options}.")
    where = {"memory": ram_text, "disk": disk_text, "stream": "nothing stored"}[mode]
    return FeaturePlan(mode, need, ram, free, f"as asked; {sizes}; {where}")


class _ViewClips(Dataset):
    """Decodes clip ``i`` through the view; errors come back as strings, never raised."""

    def __init__(self, paths: Sequence[Path], ids: Sequence[str], view: Any) -> None:
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


def _encode(encoder: FrozenEncoder, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float16 features ``[B, N, D]`` on the encoder's device: the one cast
    every mode shares, so memory, disk and stream feed the probe the same values."""
    out = encoder.features(frames)
    tokens, dim = encoder.grid.num_tokens, encoder.dim
    if tuple(out.shape[1:]) != (tokens, dim):
        raise FeatureError(f"encoder {encoder.name} gave features {tuple(out.shape)}, "
                           f"expected [B, {tokens}, {dim}]")
    return out.to(torch.float16)


def _loader(clips: SplitClips, view: Any, batches: Any, workers: int) -> DataLoader:
    return DataLoader(_ViewClips(clips.paths, clips.ids, view), batch_sampler=batches,
                      num_workers=workers, collate_fn=_collate)


def _cache_key(encoder: FrozenEncoder, split: str, ids: list[str]) -> str:
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    text = json.dumps({"encoder": encoder.key(), "split": split, "ids": ids_hash,
                       "format": FORMAT_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_entry(encoder: FrozenEncoder, clips: SplitClips, cache_dir: Path | str) -> Path:
    """The folder of these clips' features in ``cache_dir``."""
    return Path(cache_dir) / f"{clips.split}-{_cache_key(encoder, clips.split, clips.ids)}"


def load_cached(entry: Path, classes: list[str], split: str) -> FeatureSet | None:
    """A finished cache entry (meta.json is written last), or None."""
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


def _compact_rows(arr: np.ndarray, keep: np.ndarray, chunk: int = 64) -> None:
    """Move rows ``keep`` (ascending) to the front of ``arr``, in place, ``chunk`` rows at a
    time: dropping failed clips must not copy the whole array (at SSv2 size that copy is the
    hundreds of GiB this module exists to avoid). Safe because ``keep[i] >= i``: a chunk is
    read before it is written, and later chunks read only rows beyond it."""
    for start in range(0, len(keep), chunk):
        src = keep[start:start + chunk]
        arr[start:start + len(src)] = arr[src]


def _shrink_npy(path: Path, rows: int) -> None:
    """Rewrite the ``.npy`` header of ``path`` for ``rows`` rows (same header length, padded
    with spaces as the format allows) and truncate the data after them."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        data_start = f.tell()
        text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
                     "shape": (rows, *shape[1:])}).encode("latin1")
        size_fmt = "<H" if version == (1, 0) else "<I"
        room = data_start - 8 - struct.calcsize(size_fmt)  # magic (6) + version (2) + length
        if len(text) + 1 > room:  # pragma: no cover - fewer rows never lengthen the header
            raise FeatureError(f"cannot shrink {path}: header would grow")
        f.seek(8)
        f.write(struct.pack(size_fmt, room) + text + b" " * (room - len(text) - 1) + b"\n")
        f.truncate(data_start + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def check_fits(mode: str, need: int, cache_dir: Path | str | None = None) -> None:
    """Refuse (FeatureError) an allocation of ``need`` bytes that the mode cannot hold; the
    guard right before allocating, whoever the caller."""
    if mode == "memory" and need > RAM_FRACTION * memory_available():
        raise FeatureError(f"{_gib(need)} of features do not fit in RAM (MemAvailable "
                           f"{_gib(memory_available())}); use --features stream or "
                           f"--feature-cache DIR")
    if mode == "disk" and cache_dir is not None and need > DISK_FRACTION * disk_free(cache_dir):
        raise FeatureError(f"{_gib(need)} of features do not fit in {cache_dir} "
                           f"({_gib(disk_free(cache_dir))} free); use --features stream or "
                           f"another --feature-cache")


def compute_features(
    encoder: FrozenEncoder,
    root: Path | str | SplitClips,
    split: str = "",
    *,
    batch_size: int = 8,
    workers: int = 0,
    limit: int = 0,
    cache_dir: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Features of every clip of ``split`` under the SSv2 ``root`` (or of the already loaded
    ``SplitClips``), in RAM, or on disk in ``cache_dir`` (see the module doc).

    ``limit`` > 0 keeps the first ``limit`` clips of the split file. ``workers`` decoding
    processes (0: decode in this process). ``progress(done, total)`` after each batch.
    Refuses (FeatureError) before allocating when the features cannot fit.
    """
    clips = root if isinstance(root, SplitClips) else load_clips(root, split, limit)
    split, ids, n = clips.split, clips.ids, len(clips)
    entry_dir = cache_entry(encoder, clips, cache_dir) if cache_dir is not None else None
    if entry_dir is not None:
        cached = load_cached(entry_dir, clips.classes, split)
        if cached is not None:
            return cached
    tokens, dim = encoder.grid.num_tokens, encoder.dim
    check_fits("disk" if entry_dir is not None else "memory", features_bytes(n, tokens, dim),
               cache_dir)
    t0 = time.perf_counter()
    if entry_dir is None:
        feats = _allocate((n, tokens, dim), None)
        ok, failed = _fill(encoder, clips, feats, batch_size, workers, progress)
        keep = np.flatnonzero(ok)
        if len(keep) < n:
            _compact_rows(feats, keep)
            feats = feats[:len(keep)]
        return FeatureSet(feats, clips.labels[keep], [ids[i] for i in keep], clips.classes,
                          split, failed, seconds=time.perf_counter() - t0)
    entry_dir.mkdir(parents=True, exist_ok=True)
    (entry_dir / META_FILE).unlink(missing_ok=True)  # invalid until recomputed in full
    with atomic_path(entry_dir / FEATURES_FILE) as tmp:
        feats = _allocate((n, tokens, dim), tmp)
        ok, failed = _fill(encoder, clips, feats, batch_size, workers, progress)
        keep = np.flatnonzero(ok)
        if len(keep) < n:
            _compact_rows(feats, keep)
        feats.flush()
        del feats  # unmap before the header is rewritten and the file renamed
        if len(keep) < n:
            _shrink_npy(tmp, len(keep))
    result = FeatureSet(np.load(entry_dir / FEATURES_FILE, mmap_mode="r"), clips.labels[keep],
                        [ids[i] for i in keep], clips.classes, split, failed,
                        entry_dir / FEATURES_FILE, seconds=time.perf_counter() - t0)
    _write_meta(entry_dir, result, encoder)
    return result


def _allocate(shape: tuple[int, int, int], path: Path | None) -> np.ndarray:
    """The features array: in RAM, or a new ``.npy`` memory map at ``path``."""
    if path is None:
        return np.empty(shape, STORE_DTYPE)
    return np.lib.format.open_memmap(path, "w+", STORE_DTYPE, shape)


def _fill(encoder: FrozenEncoder, clips: SplitClips, feats: np.ndarray, batch_size: int,
          workers: int, progress: Callable[[int, int], None] | None
          ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Featurise every clip into ``feats`` (row i = clip i); returns (decoded mask, failed)."""
    n = len(clips)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    ok = np.zeros(n, dtype=bool)
    failed: list[dict[str, str]] = []
    done = 0
    for rows, frames, bad in _loader(clips, encoder.view, batches, workers):
        if frames is not None:
            feats[rows] = _encode(encoder, frames).cpu().numpy()
            ok[rows] = True
        failed += [{"id": clips.ids[i], "error": err} for i, err in bad]
        done += len(rows) + len(bad)
        if progress:
            progress(done, n)
    if not ok.any():
        raise FeatureError(f"no clip of split {clips.split!r} could be decoded; first error: "
                           f"{failed[0]['error'] if failed else '?'}")
    return ok, failed


def _write_meta(entry: Path, fs: FeatureSet, encoder: FrozenEncoder) -> None:
    """meta.json, written after features.npy is in place: its presence marks the entry valid."""
    meta = {"format_version": FORMAT_VERSION, "encoder": encoder.describe,
            "view": encoder.view.to_dict(), "view_hash": encoder.view.hash(),
            "split": fs.split, "ids": fs.ids, "labels": fs.labels.tolist(), "failed": fs.failed,
            "shape": list(fs.features.shape), "dtype": np.dtype(STORE_DTYPE).name}
    write_json_atomic(entry / META_FILE, meta)


class StreamedFeatures:
    """The ``stream`` mode: features of a split made batch by batch, on demand, never stored.

    A feature source for :func:`salt_vla.eval.probe.train_probe`: ``shape`` ``[n, N, D]``,
    ``labels`` ``[n]``, and :meth:`batches`, which decodes (``workers`` processes) and encodes
    the clips of each batch and yields ``(features float32 [b, N, D], labels [b])`` in the
    order the array path would. Clips that fail to decode are left out of their batch and
    listed in ``failed`` (``id -> reason``), so the scores count only clips that decoded, as
    the other modes do.
    """

    def __init__(self, encoder: FrozenEncoder, clips: SplitClips, workers: int = 0) -> None:
        self.encoder, self.clips, self.workers = encoder, clips, workers
        self.failed: dict[str, str] = {}
        self.seconds = 0.0  # decoding + encoding, summed over passes

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.clips), self.encoder.grid.num_tokens, self.encoder.dim)

    @property
    def labels(self) -> np.ndarray:
        return self.clips.labels

    def __len__(self) -> int:
        return len(self.clips)

    def iter_features(self, order: np.ndarray, size: int
                      ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows, float16 features [b, N, D] on the encoder's device)`` per batch of
        ``size`` entries of ``order``, each batch's rows ascending (as the array path reads
        them: sequential on a memory map)."""
        batches = [np.sort(order[s:s + size]).tolist() for s in range(0, len(order), size)]
        t0 = time.perf_counter()
        made = 0
        for rows, frames, bad in _loader(self.clips, self.encoder.view, batches, self.workers):
            for i, err in bad:
                self.failed[self.clips.ids[i]] = err
            if frames is not None:
                made += len(rows)
                yield np.asarray(rows), _encode(self.encoder, frames)
        self.seconds += time.perf_counter() - t0
        if made == 0 and len(order):
            first = next(iter(self.failed.values()), "?")
            raise FeatureError(f"no clip of split {self.clips.split!r} could be decoded; "
                               f"first error: {first}")

    def batches(self, order: np.ndarray, size: int, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows, feats in self.iter_features(order, size):
            yield (feats.to(device, non_blocking=True).float(),
                   torch.from_numpy(self.labels[rows]).to(device))

    def failed_list(self) -> list[dict[str, str]]:
        return [{"id": k, "error": v} for k, v in self.failed.items()]


def probe_size_table(archs: dict[str, int] | None = None, tokens: int = 1568) -> list[str]:
    """The README's table: float16 features of every SSv2 train / validation clip (one view
    each), i.e. what ``--features memory`` holds in RAM and ``disk`` writes."""
    from salt_vla.cache.estimate import SSV2_CLIPS

    archs = archs or {"ViT-B": 768, "ViT-L": 1024}
    lines = ["| encoder | train features | validation features | both |", "|---|---|---|---|"]
    for name, dim in archs.items():
        tr, va = (features_bytes(SSV2_CLIPS[s], tokens, dim) for s in ("train", "validation"))
        lines.append(f"| {name} ({dim}) | {_gib(tr)} | {_gib(va)} | {_gib(tr + va)} |")
    return lines

"""Frame shards: the student's input pixels for the cached rows, as webdataset tars of JPEGs;
the JPEG codec, the tar writer and its readers.

Sample of row ``r`` (key ``f"{r:09d}"``): ``<key>.json`` (``{"row", "video_id", "view",
"label"}``) then one ``<key>.<t:03d>.jpg`` per frame. The build encodes each frame with
:func:`encode_jpeg`, decodes it back with :func:`decode_jpeg`, and feeds *those* pixels to the
teacher, so a reader that decodes these files with the same function sees exactly the pixels
the teacher saw. Tars are written deterministically (fixed mtimes, owners, order), so the same
rows give the same bytes. The writer notes where each member landed (the commit record's
member table), so readers need not scan the tar headers.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
# PIL's subsampling code 2 = 4:2:0 (what the default would pick at this quality; pinned so a
# Pillow default change cannot change the bytes).
JPEG_SUBSAMPLING = 2
JPEG_SUBSAMPLING_NAME = "4:2:0"


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """One uint8 ``[H, W, 3]`` RGB frame -> baseline JPEG bytes (no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(
        buf, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, optimize=False
    )
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 ``[H, W, 3]`` RGB, exactly as the build decoded them for the teacher."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def jpeg_round_trip(frames: np.ndarray, quality: int = JPEG_QUALITY
                    ) -> tuple[list[bytes], np.ndarray]:
    """Encode ``[T, H, W, 3]`` frames to JPEGs and decode them back: ``(jpegs, pixels)``."""
    jpegs = [encode_jpeg(f, quality) for f in frames]
    return jpegs, np.stack([decode_jpeg(j) for j in jpegs])


class _HashingWriter:
    """File wrapper that sha256-hashes and counts what tarfile writes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class FramesTarWriter:
    """Streams one frames shard: ``add(key, jpegs, meta)`` in row order, then ``close()``."""

    def __init__(self, f: BinaryIO) -> None:
        self._out = _HashingWriter(f)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def _add(self, name: str, data: bytes) -> int:
        start = self._out.size
        self._tar.addfile(_member(name, len(data)), io.BytesIO(data))
        # The member table's offset rule assumes one header block per member; USTAR_FORMAT
        # guarantees it (it refuses names that would need an extra header). Check anyway: a
        # wrong table would hand the trainer other bytes than the frame.
        padded = (len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
        if self._out.size != start + tarfile.BLOCKSIZE + padded:
            raise RuntimeError(f"tarfile wrote {self._out.size - start} bytes for member "
                               f"{name} of {len(data)} bytes; expected one header block")
        return len(data)

    def add(self, key: str, jpegs: list[bytes], meta: dict[str, Any]) -> list[int]:
        """Append one sample; returns its member-table entry ``[offset, n_0, ..., n_T]``:
        the byte offset of its first header and the data size of each member in tar order
        (``<key>.json``, then the frames). docs/cache-format.md gives the offset rule."""
        entry = [self._out.size]
        entry.append(self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode()))
        for t, jpg in enumerate(jpegs):
            entry.append(self._add(f"{key}.{t:03d}.jpg", jpg))
        self.samples += 1
        return entry

    def close(self) -> tuple[int, str]:
        """Finish the tar; returns ``(size, sha256 hex)``. The caller fsyncs the file."""
        self._tar.close()
        return self._out.size, self._out.sha.hexdigest()


def _split_name(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


def group_sample(key: str, files: dict[str, bytes]) -> dict[str, Any]:
    """Files of one sample (extension -> bytes) -> ``{"row", "frames", "label", "video_id",
    "view"}`` with frames uint8 ``[T, H, W, 3]``."""
    if "json" not in files:
        raise ValueError(f"frames sample {key} has no {key}.json")
    meta = json.loads(files["json"])
    names = sorted(e for e in files if e.endswith(".jpg"))
    if not names:
        raise ValueError(f"frames sample {key} has no frames")
    frames = np.stack([decode_jpeg(files[n]) for n in names])
    return {"row": int(meta["row"]), "frames": frames, "label": int(meta["label"]),
            "video_id": str(meta["video_id"]), "view": int(meta["view"])}


def iter_tar_files(path: Path | str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a frames tar, in file order, without decoding."""
    key: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = _split_name(member.name)
            if key is not None and k != key:
                yield key, files
                files = {}
            key = k
            fobj = tar.extractfile(member)
            assert fobj is not None
            files[ext] = fobj.read()
    if key is not None:
        yield key, files


def iter_frames_shard(path: Path | str) -> Iterator[dict[str, Any]]:
    """Decoded samples of one frames tar, in row order (no webdataset needed)."""
    for key, files in iter_tar_files(path):
        yield group_sample(key, files)


def _decode_wds(sample: dict[str, Any]) -> dict[str, Any]:
    files = {k: v for k, v in sample.items() if not k.startswith("__")}
    return group_sample(sample["__key__"], files)


def frames_pipeline(
    shards: Iterable[Path | str],
    *,
    shuffle_shards: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 0,
    split_by_node: bool = True,
    split_by_worker: bool = True,
) -> Any:
    """A webdataset pipeline over frames tars yielding ``{"row", "frames", "label",
    "video_id", "view"}``.

    Shards are shuffled with ``seed`` and a per-iteration epoch counter (same order on every
    rank, so the node split stays disjoint), then split across ``torch.distributed`` ranks and
    DataLoader workers; ``shuffle_buffer`` > 0 also shuffles samples within that buffer.
    Use it as an IterableDataset (``DataLoader(pipeline, num_workers=...)``).
    """
    import webdataset as wds

    urls = [str(s) for s in shards]
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if shuffle_shards:
        stages.append(wds.detshuffle(bufsize=max(len(urls), 1), initial=max(len(urls), 1),
                                     seed=seed))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages.append(wds.tarfile_to_samples())
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=seed))
    stages.append(wds.map(_decode_wds))
    return wds.DataPipeline(*stages)

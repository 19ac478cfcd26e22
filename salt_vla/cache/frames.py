"""Frame shards: the student's input pixels for the cached rows, as webdataset tars of JPEGs;
the JPEG codec and the tar writer (frames_reader.py reads them).

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

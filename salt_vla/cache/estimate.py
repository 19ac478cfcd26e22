"""What a store costs on disk, and whether its destination can take it, before a build starts.

One arithmetic for every place that states a size: `salt cache build --dry-run`, the first
lines of a real build, the check that refuses a destination that cannot hold the store, and
the README's "real scale" table (:func:`size_table`; a test keeps the README in step).

Latents are exact: a row is ``tokens x dim`` values of the storage dtype
(:data:`LATENT_ROW_BYTES`; ViT-B at 16x224 in float16: 1,568 x 768 x 2 = 2,408,448 B), plus
the zarr shard index, 16 B per row slot and a 4 B checksum per shard (``cache/format.py``).
A new storage dtype is one entry there: e.g. int8 with a float16 scale per token would be
``"int8": lambda tokens, dim: tokens * dim + 2 * tokens`` (1,207,360 B a row at that shape).

Frames are an estimate, since JPEG sizes depend on the content: a measured mean JPEG size
per frame when there is one (``--estimate N`` runs N videos through the real pipeline), else
the rule of thumb :data:`JPEG_BITS_PER_PIXEL`, plus the tar framing, which is exact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LATENT_ROW_BYTES: dict[str, Callable[[int, int], int]] = {
    "float16": lambda tokens, dim: tokens * dim * 2,
    "float32": lambda tokens, dim: tokens * dim * 4,
}
"""Storage dtype -> bytes of one row's latents ``[tokens, dim]``."""

SHARD_INDEX_BYTES_PER_ROW = 16  # zarr sharding index: uint64 (offset, nbytes) per inner chunk
SHARD_INDEX_CRC_BYTES = 4  # crc32c over the index

# Rule of thumb for a 224 px JPEG (quality 90, 4:2:0) of a video frame: measured 2.4 and 3.6
# bits/pixel on two natural photos taken through a 240p VP9 round trip and the 16x224 view
# (BENCHMARKS.md, "cache size estimate"); SSv2's phone footage is softer than either, so 3 is
# meant to over- rather than under-state. `--estimate N` replaces it with a measurement.
JPEG_BITS_PER_PIXEL = 3.0
TAR_BLOCK = 512  # a member: one header block, then its data padded to whole blocks
TAR_RECORD = 10240  # a tar ends with two zero blocks, padded to a whole record
ROW_META_BYTES = 120  # the <key>.json member ({"row", "video_id", "view", "label"})

# The splits of Something-Something-v2 as published (the README table's rows).
SSV2_CLIPS: dict[str, int] = {"train": 168_913, "validation": 24_777, "test": 27_157}


def latent_row_bytes(tokens: int, dim: int, dtype: str) -> int:
    """Bytes of one row's latents (without the shard index)."""
    if dtype not in LATENT_ROW_BYTES:
        raise ValueError(f"no size rule for latents dtype {dtype!r}; known: "
                         f"{', '.join(LATENT_ROW_BYTES)}")
    return LATENT_ROW_BYTES[dtype](tokens, dim)


def _tar_member(nbytes: float) -> float:
    """Bytes a member of ``nbytes`` takes in a tar: header + data padded to blocks (on
    average half a block of padding when the size is an estimate)."""
    return TAR_BLOCK + nbytes + TAR_BLOCK / 2


def rule_jpeg_bytes(size: int) -> float:
    """The rule-of-thumb JPEG size of one ``size x size`` frame."""
    return size * size * JPEG_BITS_PER_PIXEL / 8


@dataclass(frozen=True)
class StoreSize:
    """The bytes a store of ``rows`` rows takes: ``[tokens, dim]`` latents in ``dtype``,
    ``num_frames`` JPEG frames of ``size`` px per row, ``shard_size`` rows per shard.

    ``jpeg_bytes`` is the mean JPEG size of a frame when measured; None uses the rule.
    """

    rows: int
    tokens: int
    dim: int
    dtype: str
    num_frames: int
    size: int
    shard_size: int = 256
    jpeg_bytes: float | None = None

    @property
    def num_shards(self) -> int:
        return -(-self.rows // self.shard_size)

    @property
    def latent_row_bytes(self) -> int:
        return latent_row_bytes(self.tokens, self.dim, self.dtype)

    def latents_bytes(self, shards: int | None = None) -> int:
        """Latents of ``shards`` full shards (default: the whole store), shard indexes
        included (exact for a complete store)."""
        index = self.shard_size * SHARD_INDEX_BYTES_PER_ROW + SHARD_INDEX_CRC_BYTES
        if shards is None:
            return self.rows * self.latent_row_bytes + self.num_shards * index
        return shards * (self.shard_size * self.latent_row_bytes + index)

    @property
    def measured(self) -> bool:
        return self.jpeg_bytes is not None

    @property
    def frame_jpeg_bytes(self) -> float:
        return self.jpeg_bytes if self.jpeg_bytes is not None else rule_jpeg_bytes(self.size)

    @property
    def frames_row_bytes(self) -> float:
        """One row's tar members: its JSON record, then one JPEG per frame."""
        return _tar_member(ROW_META_BYTES) + self.num_frames * _tar_member(self.frame_jpeg_bytes)

    def frames_bytes(self, shards: int | None = None) -> int:
        """Frames of ``shards`` full shards (default: the whole store), an estimate."""
        if shards is None:
            return round(self.rows * self.frames_row_bytes + self.num_shards * TAR_RECORD)
        return round(shards * (self.shard_size * self.frames_row_bytes + TAR_RECORD))

    def total_bytes(self, shards: int | None = None) -> int:
        return self.latents_bytes(shards) + self.frames_bytes(shards)


def format_size(n: float) -> str:
    """``406.8 GB (378.9 GiB)``: decimal for disks as vendors sell them, binary as df -h."""
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e9:
        return f"{n / 1e6:.1f} MB ({n / 2**20:.1f} MiB)"
    if n < 1e12:
        return f"{n / 1e9:.1f} GB ({n / 2**30:.1f} GiB)"
    return f"{n / 1e12:.2f} TB ({n / 2**40:.2f} TiB)"


@dataclass(frozen=True)
class Destination:
    """Where a store is to be written: the nearest folder that exists, whether a file can be
    created there (``problem`` says why not), and the free bytes on its file system."""

    path: Path
    existing: Path
    writable: bool
    free: int
    problem: str = ""


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what mkdir -p would start from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def probe_destination(path: Path | str) -> Destination:
    """Check ``path`` as a build destination without creating it: create (and delete) a
    temporary file in the nearest existing folder, since a read-only mount or a root-owned
    folder shows only when one tries (``os.access`` is wrong on some network mounts)."""
    path = Path(path)
    base = nearest_existing(path)
    problem = ""
    if not base.is_dir():
        problem = f"{base} is a file, not a folder"
    else:
        try:
            fd, name = tempfile.mkstemp(prefix=".salt-write-test-", dir=base)
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            problem = f"{base} is not writable ({e.strerror or e})"
    try:
        free = shutil.disk_usage(base if base.is_dir() else base.parent).free
    except OSError:
        free = 0
    return Destination(path, base, not problem, free, problem)


def size_table(archs: dict[str, int] | None = None, tokens: int = 1568, num_frames: int = 16,
               size: int = 224, dtypes: tuple[str, ...] | None = None) -> list[str]:
    """The README's table: store size of SSv2 train and validation per teacher width, storage
    dtype and view count (16x224: 1,568 tokens), frames by the rule of thumb, as markdown."""
    archs = archs or {"ViT-B": 768, "ViT-L": 1024}
    dtypes = dtypes or tuple(d for d in LATENT_ROW_BYTES if d != "float32")
    lines = ["| teacher | latents | views | latents a row | train latents | train frames | "
             "train total | validation total |", "|---|---|---|---|---|---|---|---|"]
    for name, dim in archs.items():
        for dtype in dtypes:
            for views in (1, 4):
                tr, va = (StoreSize(SSV2_CLIPS[split] * views, tokens, dim, dtype, num_frames,
                                    size) for split in ("train", "validation"))
                lines.append(
                    f"| {name} ({dim}) | {dtype} | {views} | {tr.latent_row_bytes:,} B | "
                    f"{tr.latents_bytes() / 1e9:,.0f} GB | {tr.frames_bytes() / 1e9:,.0f} GB | "
                    f"{tr.total_bytes() / 1e9:,.0f} GB | {va.total_bytes() / 1e9:,.0f} GB |")
    return lines

"""Clips straight from the videos of an SSv2-layout split, through the view layer, for runs
that need no target store (stage-1 teacher training).

A video that cannot be decoded must not kill a days-long run: :class:`VideoClips` records it
in ``RUN_DIR/decode_failures.jsonl`` (and the log) and serves the next decodable clip in row
order instead. The substitute depends only on which files are unreadable, so the sample
stream, and with it resume, stays deterministic. Videos missing from disk are dropped when
the split is opened and recorded the same way.

DataLoader workers each hold a copy of this source; each appends its own failure lines
(one short ``write`` per line, so lines from several workers never interleave).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.errors import SaltError
from salt_vla.trainer.build import spec_grid, view_spec
from salt_vla.trainer.sources import DataSources, VideoFrames

log = logging.getLogger(__name__)

MAX_SKIP = 32  # consecutive unreadable clips tolerated before the data is declared broken


class ClipSourceError(SaltError, RuntimeError):
    """Too many consecutive clips could not be decoded: the data (or the decoder) is broken."""


def record_failure(path: Path | None, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` (no-op when None) with a single ``write``."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_failures(path: Path | str) -> list[dict[str, Any]]:
    """The records of a failures file, one per unreadable video (duplicates from several
    workers or epochs merged, first record kept); empty when there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    seen: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        seen.setdefault(str(rec.get("id")), rec)
    return list(seen.values())


class VideoClips(VideoFrames):
    """Frame source over a split's videos: row ``r`` is view ``r % n_views`` of video
    ``r // n_views`` rendered by ``load_view``; unreadable videos are skipped (see module doc).
    """

    def __init__(
        self, root: Path | str, split: str, spec: Any, failures: Path | None = None,
        backend: str = "auto", max_skip: int = MAX_SKIP,
    ) -> None:
        super().__init__(root, split, spec, backend, allow_missing=True)
        if not self.ids:
            raise ClipSourceError(
                f"split {split!r} of {root} has no videos on disk "
                f"({len(self.index.missing)} listed but missing); check --data and --split"
            )
        self.failures = failures
        self.max_skip = max_skip
        self._bad: set[int] = set()  # videos known unreadable in this process
        for vid in self.index.missing:
            record_failure(failures, {"id": vid, "error": "missing: no video file on disk"})

    def frames(self, row: int) -> np.ndarray:
        """uint8 ``[T, size, size, 3]`` of ``row``, or of the next decodable row."""
        from salt_vla.data.video import VideoDecodeError

        n = len(self)
        errors = []
        for k in range(min(self.max_skip, n - 1) + 1):
            r = (row + k) % n
            video = r // self.spec.n_views
            if video in self._bad:
                continue
            try:
                return super().frames(r)
            except (VideoDecodeError, ValueError, OSError) as e:
                self._bad.add(video)
                errors.append(f"{self.ids[video]}: {e}")
                log.warning("skipping unreadable video %s (row %d): %s", self.ids[video], r, e)
                record_failure(self.failures, {
                    "id": self.ids[video], "path": str(self.index.video_path(self.ids[video])),
                    "row": r, "error": str(e), "pid": os.getpid(),
                })
        raise ClipSourceError(
            f"clips from row {row} on: {self.max_skip + 1} consecutive clips could not be "
            f"decoded (last: {errors[-1] if errors else 'all known bad'}); the data or the "
            f"video decoder is broken. Failures: {self.failures}"
        )


def open_video_clips(
    cfg: Any, data_root: Path | str, split: str, failures: Path | None,
    echo: Callable[[str], None] = print,
) -> DataSources:
    """Sources for a run that reads clips from the videos with ``cfg.view`` and needs no
    targets (``cfg`` has ``view``, ``tubelet``, ``patch``)."""
    spec = view_spec(cfg)
    clips = VideoClips(data_root, split, spec, failures)
    echo(clips.index.describe())  # which SSv2 layout was found, where the videos are
    if clips.index.missing:
        echo(f"warning: {len(clips.index.missing)} video(s) of {split} are missing on disk "
             f"(e.g. {clips.index.missing[:3]}); training on the {len(clips.ids)} present. "
             f"Listed in {failures}")
    return DataSources(
        frames=clips,
        targets=None,
        rows=np.arange(len(clips)),
        num_frames=spec.num_frames,
        img_size=spec.size,
        grid=spec_grid(cfg, spec),
        describe={"targets": "pixels", "data": str(data_root), "split": split,
                  "videos": len(clips.ids), "missing": len(clips.index.missing),
                  "view": cfg.view, "view_hash": spec.hash(),
                  "failures": None if failures is None else str(failures)},
    )

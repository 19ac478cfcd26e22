"""What ``salt data info`` reports about an SSv2-layout dataset (flat or as downloaded).

Counts per split and class, the videos a split lists but the disk lacks, and a decode check
of a sample of videos (or all of them) that lists the corrupt ones with the reason, plus the
frame count, fps and size of what decoded.
"""

from __future__ import annotations

import random
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from salt_vla.data.ssv2 import (
    SPLITS,
    SplitIndex,
    SSv2Error,
    SSv2Layout,
    SSv2MissingVideosWarning,
    find_layout,
    load_labels,
    load_split,
)
from salt_vla.data.video import VideoDecodeError, decode_chosen
from salt_vla.errors import ConfigError
from salt_vla.files import write_text_atomic

DEFAULT_SCAN = 8


@dataclass(frozen=True)
class SplitSummary:
    """One split: videos found, videos missing, and per-class counts (None when unlabeled)."""

    split: str
    path: Path
    videos: int
    in_subdir: int  # how many of them are in a subfolder (the rest are directly in ROOT)
    missing: list[str]
    class_counts: list[int] | None
    by_dir: dict[str, int] = field(default_factory=dict)  # videos per folder ("." = ROOT)


@dataclass(frozen=True)
class VideoCheck:
    """Result of decoding one video's first, middle and last frames."""

    split: str
    id: str
    path: Path
    ok: bool
    reason: str = ""  # why it failed; empty when ok
    num_frames: int = 0
    fps: float = 0.0
    height: int = 0
    width: int = 0
    decoded_shape: tuple[int, ...] = ()  # shape of the decoded probe frames [n, H, W, 3]


@dataclass(frozen=True)
class ScanReport:
    """Decode check of ``len(checks)`` videos out of ``population``."""

    population: int
    checks: list[VideoCheck]
    backend: str
    seed: int

    @property
    def corrupt(self) -> list[VideoCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def good(self) -> list[VideoCheck]:
        return [c for c in self.checks if c.ok]


@dataclass(frozen=True)
class DatasetSummary:
    """Everything ``salt data info`` prints."""

    root: Path
    labels_path: Path
    layout: SSv2Layout
    classes: list[str]
    splits: list[SplitSummary]
    absent: list[str]  # splits whose file is not there
    scan: ScanReport

    @property
    def missing(self) -> dict[str, list[str]]:
        """Missing video ids per split (non-empty only with allow_missing)."""
        return {s.split: s.missing for s in self.splits}


def parse_scan(text: str) -> int | None:
    """``--scan`` value: a count of videos, or None for all (``all`` or ``-1``)."""
    value = text.strip().lower()
    if value in ("all", "-1"):
        return None
    try:
        n = int(value)
    except ValueError:
        n = -2
    if n < 0:
        raise ConfigError(f"--scan takes a number of videos >= 0, or 'all' (or -1); got {text!r}")
    return n


def check_video(path: Path | str, backend: str = "auto") -> VideoCheck:
    """Decode the first, middle and last frame of a video; never raises for a bad file.

    The last frame is the one a truncated or damaged file fails to deliver, so this catches
    what a header probe alone would miss.
    """
    path = Path(path)

    def probe_indices(n: int) -> list[int]:
        return sorted({0, n // 2, n - 1})

    try:
        frames, info = decode_chosen(path, probe_indices, backend)
    except VideoDecodeError as e:
        return VideoCheck("", path.stem, path, False, e.cause)
    except Exception as e:  # a decoder bug must not end a scan of 168K files
        return VideoCheck("", path.stem, path, False, f"{type(e).__name__}: {e}")
    return VideoCheck(
        "",
        path.stem,
        path,
        True,
        num_frames=info.num_frames,
        fps=info.fps,
        height=info.height,
        width=info.width,
        decoded_shape=tuple(frames.shape),
    )


def _check_job(job: tuple[str, str, Path, str]) -> VideoCheck:
    split, vid, path, backend = job
    c = check_video(path, backend)
    return VideoCheck(
        split, vid, path, c.ok, c.reason, c.num_frames, c.fps, c.height, c.width, c.decoded_shape
    )


def scan_videos(
    indexes: Sequence[SplitIndex],
    count: int | None = DEFAULT_SCAN,
    seed: int = 0,
    backend: str = "auto",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Decode-check ``count`` videos drawn at random (by ``seed``) from the splits, or all.

    ``workers`` > 1 checks in that many processes (spawned, so decoders start clean).
    ``progress(done, total)`` is called after each video.
    """
    population = [(ix.split, e.id, ix) for ix in indexes for e in ix.entries]
    if count is None or count >= len(population):
        chosen = population
    else:
        picks = sorted(random.Random(seed).sample(range(len(population)), count))
        chosen = [population[i] for i in picks]
    jobs = [(split, vid, ix.video_path(vid), backend) for split, vid, ix in chosen]
    checks: list[VideoCheck] = []
    if workers > 1 and len(jobs) > 1:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for c in pool.map(_check_job, jobs, chunksize=chunk):
                checks.append(c)
                if progress:
                    progress(len(checks), len(jobs))
    else:
        for job in jobs:
            checks.append(_check_job(job))
            if progress:
                progress(len(checks), len(jobs))
    return ScanReport(population=len(population), checks=checks, backend=backend, seed=seed)


def summarize_dataset(
    root: Path | str,
    splits: Sequence[str] | None = None,
    allow_missing: bool = False,
    scan: int | None = DEFAULT_SCAN,
    seed: int = 0,
    backend: str = "auto",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetSummary:
    """Load the splits of an SSv2-layout ``root`` and decode-check ``scan`` videos (None: all).

    ``splits`` None reads every split whose file exists (at least one must); named splits must
    exist. Raises SSv2Error (from the index loader) for an unreadable dataset.
    """
    if backend not in ("auto", "decord", "pyav"):
        raise ConfigError(f"--backend must be auto, decord or pyav; got {backend!r}")
    root = Path(root)
    layout = find_layout(root)  # a wrong root fails here first, with the clearest message
    load_labels(root, layout)
    if splits is None:
        wanted = [s for s in SPLITS if layout.split_path(s).is_file()]
        if not wanted:
            files = ", ".join(layout.split_path(s).name for s in SPLITS)
            raise SSv2Error(
                f"{root} has {layout.labels_path.name} but none of the split files ({files}) "
                f"next to it in {layout.label_dir}. Point --data at the SSv2 root that holds them."
            )
    else:
        wanted = list(dict.fromkeys(splits))
    absent = [s for s in SPLITS if s not in wanted and not layout.split_path(s).is_file()]

    indexes: list[SplitIndex] = []
    with warnings.catch_warnings():
        # the summary reports missing videos itself
        warnings.simplefilter("ignore", SSv2MissingVideosWarning)
        for split in wanted:
            indexes.append(load_split(root, split, allow_missing=allow_missing))

    summaries = []
    for ix in indexes:
        # an empty split file says nothing about labels; count it as labeled unless it is test
        labeled = ix.labeled and (bool(ix.entries) or ix.split != "test")
        counts = ix.class_counts().tolist() if labeled else None
        summaries.append(SplitSummary(ix.split, ix.path, len(ix), ix.num_in_subdir,
                                      ix.missing, counts, ix.videos_by_dir()))
    report = scan_videos(indexes, scan, seed, backend, workers, progress)
    return DatasetSummary(
        root=root,
        labels_path=layout.labels_path,
        layout=layout,
        classes=indexes[0].classes,
        splits=summaries,
        absent=absent,
        scan=report,
    )


def write_missing(path: Path | str, summary: DatasetSummary) -> int:
    """Write the missing video ids, one per line (split order, then file order); returns count.

    SSv2 ids are unique across splits, so a bare id list serves as an exclusion list. Written
    to a temporary file and renamed, so a reader never sees half a list.
    """
    path = Path(path)
    ids = [vid for s in summary.splits for vid in s.missing]
    write_text_atomic(path, "".join(f"{vid}\n" for vid in ids))
    return len(ids)


def _fps(x: float) -> str:
    return f"{x:g}"


def format_summary(summary: DatasetSummary, show_classes: bool = True) -> list[str]:
    """The report as text lines, for the CLI."""
    lines = [f"layout: {summary.layout.name}",
             f"labels: {summary.labels_path}  ({len(summary.classes)} classes)"]
    for s in summary.splits:
        where = (
            ", ".join(f"{n} in the root" if d == "." else f"{n} in {d}/"
                      for d, n in s.by_dir.items())
            if s.videos
            else "no videos"
        )
        label = "labeled" if s.class_counts is not None else "unlabeled"
        missing = f", {len(s.missing)} missing (excluded)" if s.missing else ", none missing"
        lines.append(f"{s.split}: {s.path}  {s.videos} videos ({where}), {label}{missing}")
        if s.missing:
            shown = ", ".join(s.missing[:10]) + (", ..." if len(s.missing) > 10 else "")
            lines.append(f"  missing ids: {shown}")
    if summary.absent:
        lines.append(f"absent split files: {', '.join(f'{s}.json' for s in summary.absent)}")

    labeled = [s for s in summary.splits if s.class_counts is not None]
    if labeled:
        for s in labeled:
            empty = [i for i, n in enumerate(s.class_counts or []) if n == 0]
            if empty:
                shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
                lines.append(f"{s.split}: {len(empty)} classes have no videos: {shown}")
        if show_classes:
            lines.append("videos per class:")
            widths = [max(len(s.split), 6) for s in labeled]
            head = "  ".join(f"{s.split:>{w}}" for s, w in zip(labeled, widths, strict=True))
            lines.append(f"  {'class':>5}  {head}  name")
            for i, name in enumerate(summary.classes):
                cells = "  ".join(
                    f"{(s.class_counts or [])[i]:>{w}}"
                    for s, w in zip(labeled, widths, strict=True)
                )
                lines.append(f"  {i:>5}  {cells}  {name}")

    scan = summary.scan
    checked = len(scan.checks)
    which = "all" if checked == scan.population else f"a random {checked} (seed {scan.seed}) of"
    lines.append(
        f"decode check: {which} {scan.population} videos, backend {scan.backend}: "
        f"{len(scan.good)} ok, {len(scan.corrupt)} corrupt"
    )
    good = scan.good
    if good:
        first = good[0]
        lines.append(
            f"  sample {first.split}/{first.id}: {first.num_frames} frames at "
            f"{_fps(first.fps)} fps, {first.height}x{first.width}; decoded frames "
            f"[0, middle, last] -> uint8 {list(first.decoded_shape)}"
        )
        frames = [c.num_frames for c in good]
        fps = Counter(_fps(c.fps) for c in good)
        sizes = Counter(f"{c.height}x{c.width}" for c in good)
        lines.append(
            f"  frames per video: min {min(frames)}, median {statistics.median(frames):g}, "
            f"max {max(frames)}; fps: {_top(fps)}; sizes (HxW): {_top(sizes)}"
        )
    for c in scan.corrupt:
        lines.append(f"  corrupt {c.split}/{c.id}: {c.path}: {c.reason}")
    return lines


def _top(counts: Counter[str], n: int = 5) -> str:
    items = counts.most_common(n)
    text = ", ".join(f"{k} ({v})" for k, v in items)
    return text + (f", ... ({len(counts) - n} more)" if len(counts) > n else "")

"""Windows of a long video, decoded as they are needed: bounded memory for full-HD files.

:func:`salt_vla.data.video.decode_frames` returns every requested frame at once, at full
size: right for short SSv2 clips, but a 10-second 1080p video is ~1.9 GB of RGB frames
(BENCHMARKS.md has the measured peak). Sliding-window evaluations (intuitive-physics
surprise) need each frame only while a window that uses it is pending, and only after it has
been cropped and resized to the model's input. :func:`iter_windows` therefore streams:

1. one demux pass without decoding (:func:`scan_video`) counts the frames, as ``video.py``
   does (one packet per displayed frame, never header metadata), and notes each frame's
   presentation timestamp and which frames are keyframes;
2. it decodes in presentation order with PyAV, keeps only frames some window uses, passes
   each through ``transform`` (e.g. crop + resize) as soon as it is decoded, and drops it once
   no pending window needs it;
3. it yields windows in batches as soon as their last frame is decoded;
4. when the next needed frame lies beyond a keyframe (windows with gaps between them), it
   seeks to the last keyframe at or before that frame instead of decoding the gap.

Frame ``i`` means what it means in ``video.py``: the ``i``-th frame in presentation order,
converted to RGB by FFmpeg's swscale (``to_ndarray(format="rgb24")``), so a window equals
``decode_frames(path, window, backend="pyav")`` byte for byte (``tests/test_video_chunks.py``).
After a seek, frames are located by their timestamps; if a file's timestamps do not allow
that, the reader falls back to decoding from the start, which is slower, never different.

Memory held at any time: the transformed frames of the pending windows (at most the
frames spanned by ``batch`` consecutive windows), one decoded full-size frame, and the packet
timestamps (8 bytes a frame).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av  # before decord, as in video.py
import numpy as np

from salt_vla.data.video import VideoDecodeError, _check_file, _describe

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FrameTable:
    """What one demux pass learns about a video without decoding it."""

    num_frames: int
    fps: float  # 0.0 when the container declares no frame rate
    height: int
    width: int
    pts: tuple[int, ...] | None  # presentation timestamp of frame i; None: unusable for seeks
    keyframes: tuple[int, ...]  # frame indices of keyframes, increasing


@dataclass
class ChunkStats:
    """What a read did: for tests and benchmarks (bounded memory is a behaviour)."""

    decoded: int = 0  # frames decoded (including those no window used)
    seeks: int = 0
    fallbacks: int = 0  # seeks whose timestamps did not resolve (decoded from the start)
    peak_buffered: int = 0  # most transformed frames held at once


def _open(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    _check_file(path)
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* and OSError
        raise VideoDecodeError(path, _describe(e)) from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream (is it an audio or data file?)")
    stream = container.streams.video[0]
    return container, stream


def scan_video(path: Path | str) -> FrameTable:
    """Frame count, size, timestamps and keyframes of ``path`` from its packets (no decoding).

    Raises VideoDecodeError for unreadable files.
    """
    path = Path(path)
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        pts: list[int | None] = []
        key_pts: list[int | None] = []
        for packet in container.demux(stream):
            if packet.size <= 0:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
        height, width = stream.codec_context.height, stream.codec_context.width
    except Exception as e:
        raise VideoDecodeError(path, _describe(e)) from e
    finally:
        container.close()
    if not pts:
        raise VideoDecodeError(path, "the video stream has no frames")
    usable = None not in pts and len(set(pts)) == len(pts)
    if usable:
        ordered = sorted(pts)  # presentation order: decode order differs with B-frames
        rank = {p: i for i, p in enumerate(ordered)}
        keyframes = tuple(sorted(rank[p] for p in key_pts))
        table_pts: tuple[int, ...] | None = tuple(int(p) for p in ordered)
    else:
        keyframes, table_pts = (), None
    return FrameTable(len(pts), float(rate) if rate else 0.0, int(height), int(width),
                      table_pts, keyframes)


def iter_windows(
    path: Path | str,
    windows: Sequence[Sequence[int]],
    transform: Transform | None = None,
    batch: int = 8,
    *,
    table: FrameTable | None = None,
    seek: bool = True,
    threads: int = 1,
    stats: ChunkStats | None = None,
) -> Iterator[np.ndarray]:
    """Yield the frames of ``windows`` (equal-length lists of frame indices, any order within
    a window, repeats allowed) in batches: arrays ``[<= batch, T, ...]`` of
    ``transform(frame)`` (uint8 ``[H, W, 3]`` when None).

    Windows come out in the order given; memory stays bounded when they are given in order
    of their first frame (sliding windows are). ``table``: a :func:`scan_video` result to
    reuse. ``seek``: skip undecoded gaps by seeking to keyframes. ``threads``: FFmpeg decoding
    threads (1 is deterministic in time and safe in DataLoader workers; the bytes are the same
    either way). Raises VideoDecodeError for unreadable files and out-of-range indices.
    """
    path = Path(path)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    table = table or scan_video(path)
    wins = [np.asarray(w, dtype=np.int64).reshape(-1) for w in windows]
    if not wins:
        return
    for w in wins:
        bad = w[(w < 0) | (w >= table.num_frames)]
        if bad.size:
            raise VideoDecodeError(path, f"frame index {int(bad[0])} out of range: the video "
                                         f"has {table.num_frames} frames")
    stats = stats if stats is not None else ChunkStats()
    needed = np.unique(np.concatenate(wins))
    # keep_from[j]: the smallest frame any window from j on uses (frames below it can go).
    firsts = np.array([w.min() for w in wins])
    keep_from = np.minimum.accumulate(firsts[::-1])[::-1]
    last_of = np.array([w.max() for w in wins])
    transform = transform or (lambda f: f)
    buffer: dict[int, np.ndarray] = {}
    ready: list[np.ndarray] = []
    nxt = 0  # next window to emit
    frames = _FrameSource(path, table, seek, threads, stats)
    try:
        for want in needed:
            index, frame = frames.get(int(want))
            buffer[index] = transform(frame)
            stats.peak_buffered = max(stats.peak_buffered, len(buffer))
            while nxt < len(wins) and last_of[nxt] <= index:
                ready.append(np.stack([buffer[int(i)] for i in wins[nxt]]))
                nxt += 1
                floor = keep_from[nxt] if nxt < len(wins) else table.num_frames
                for i in [i for i in buffer if i < floor]:
                    del buffer[i]
                if len(ready) == batch:
                    yield np.stack(ready)
                    ready = []
        if ready:
            yield np.stack(ready)
    finally:
        frames.close()


class _FrameSource:
    """Decoded RGB frames by increasing index, seeking over gaps that span a keyframe."""

    def __init__(self, path: Path, table: FrameTable, seek: bool, threads: int,
                 stats: ChunkStats) -> None:
        self.path, self.table, self.stats = path, table, stats
        self.seek = seek and table.pts is not None and len(table.keyframes) > 1
        self.rank = {p: i for i, p in enumerate(table.pts)} if self.seek else {}
        self.threads = threads
        self.container: av.container.InputContainer | None = None
        self.frames: Iterator[tuple[int, av.VideoFrame]] = iter(())
        self.pos = -1  # index of the last frame taken from self.frames
        self._restart(None)

    def _restart(self, keyframe: int | None) -> None:
        """Decode from the start (None) or from the keyframe with frame index ``keyframe``."""
        if self.container is None:
            self.container, stream = _open(self.path)
            stream.thread_count = self.threads
            if self.threads > 1:
                stream.thread_type = "AUTO"
        stream = self.container.streams.video[0]
        if keyframe is None:
            if self.pos >= 0:
                self.container.seek(0, stream=stream, backward=True)
            self.frames, self.pos = self._decode(stream, by_pts=False), -1
        else:
            self.container.seek(self.table.pts[keyframe], stream=stream, backward=True)
            self.stats.seeks += 1
            self.frames, self.pos = self._decode(stream, by_pts=True), keyframe - 1

    def _decode(self, stream: av.VideoStream, by_pts: bool) -> Iterator[tuple[int, av.VideoFrame]]:
        index = -1
        try:
            for packet in self.container.demux(stream):
                for frame in stream.codec_context.decode(packet if packet.size else None):
                    self.stats.decoded += 1
                    index = self._index(frame) if by_pts else index + 1
                    yield index, frame
        except _SeekMiss:
            raise
        except Exception as e:
            raise VideoDecodeError(self.path, _describe(e)) from e

    def _index(self, frame: av.VideoFrame) -> int:
        index = self.rank.get(frame.pts)
        if index is None:
            raise _SeekMiss
        return index

    def get(self, want: int) -> tuple[int, np.ndarray]:
        """Frame ``want`` (> every index asked before) as uint8 ``[H, W, 3]``."""
        if self.seek and want > self.pos + 1:
            k = self.table.keyframes[bisect.bisect_right(self.table.keyframes, want) - 1]
            if k > self.pos + 1:  # a keyframe inside the gap: decoding from it skips work
                self._restart(k)
        while True:
            try:
                index, frame = next(self.frames)
            except StopIteration:
                raise VideoDecodeError(self.path, f"only {self.pos + 1} of "
                                       f"{self.table.num_frames} frames could be decoded") from None
            except _SeekMiss:
                # Timestamps after the seek do not match the packets': decode from the start.
                self.stats.fallbacks += 1
                self.seek = False
                self._restart(None)
                continue
            if index <= self.pos:  # leading frames of an open GOP, or repeats after a seek
                continue
            if index > want:  # frame `want` never came out after the seek: play it safe
                self.stats.fallbacks += 1
                self.seek = False
                self._restart(None)
                continue
            self.pos = index
            if index == want:
                return index, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class _SeekMiss(Exception):
    """A decoded frame's timestamp is not one of the packets' (seek cannot place it)."""

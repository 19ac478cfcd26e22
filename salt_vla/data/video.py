"""Video file I/O: decoding frames by index (decord or PyAV); writing VP9 ``.webm`` and
H.264 ``.mp4``.

Frame ``i`` of a video is the ``i``-th frame in presentation order. Both backends count
frames the same way, from the container's packets (one packet per displayed frame), never
from header metadata: WebM headers carry no frame count and other containers' counts can be
wrong. Both backends convert to RGB through FFmpeg's swscale and return identical bytes on our
VP9 files (``tests/test_video.py`` checks it).

What is not a video is refused with a reason of its own (:class:`VideoDecodeError`'s
``cause``), never decoded into something that looks like one: FFmpeg opens a PNG renamed
``.webm`` as a one-frame stream, and a view would repeat that frame into a clip of identical
frames. So a still image (by its first bytes, or FFmpeg's image demuxer reading it), a
directory, a FIFO or device, and a file that cannot be read each say what they are. A
one-frame stream in a video container (WebM, MP4) is still a video.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import av  # must load before decord: decord's bundled FFmpeg breaks PyAV's VP9 encoder otherwise
import numpy as np

from salt_vla.errors import ConfigError, SaltError

BACKENDS = ("auto", "decord", "pyav")

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = 0x18538067
# First bytes of still-image files (what a renamed photo or thumbnail starts with).
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF",
                b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class VideoDecodeError(SaltError):
    """A video file could not be read; ``path`` names the file and ``cause`` says why."""

    def __init__(self, path: Path | str, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"cannot decode video {self.path}: {cause}")


@dataclass(frozen=True)
class VideoInfo:
    """What a view needs to know about a file before choosing frames."""

    num_frames: int
    fps: float  # 0.0 when the container declares no frame rate
    height: int
    width: int


def write_webm(
    path: Path | str,
    frames: np.ndarray,
    fps: int = 12,
    crf: int = 20,
    keyframe_interval: int | None = None,
) -> None:
    """Write uint8 ``[T, H, W, 3]`` RGB frames as a VP9 ``.webm`` (SSv2's container and codec).

    Single-threaded realtime encoding so the same frames always give the same bytes.
    H and W must be even (yuv420p). ``keyframe_interval`` (default: the encoder's own) forces
    a keyframe every that many frames, so tests can exercise the decoders' seeking.
    """

    def configure(stream: av.VideoStream) -> None:
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        stream.options = {"crf": str(crf), "deadline": "realtime", "cpu-used": "8"}

    _write(path, frames, "webm", "libvpx-vp9", fps, configure)


def write_mp4(
    path: Path | str,
    frames: np.ndarray,
    fps: int = 12,
    crf: int = 20,
    keyframe_interval: int | None = None,
    bframes: int = 0,
) -> None:
    """Write uint8 ``[T, H, W, 3]`` RGB frames as an H.264 ``.mp4`` (libx264, yuv420p), the
    container and codec of benchmarks such as IntPhys 2.

    One thread and no look-ahead (``tune=zerolatency``) so the same frames always give the
    same bytes and frame ``i`` is encoded from frames ``<= i`` only. ``bframes`` > 0 adds
    B-frames (decode order then differs from display order, as in most downloaded mp4s);
    ``keyframe_interval`` forces a keyframe every that many frames (for seeking tests).
    """
    params = f"bframes={int(bframes)}:threads=1" + (
        f":keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"
        if keyframe_interval else "")
    options = {"crf": str(crf), "preset": "veryfast", "x264-params": params}
    if bframes == 0:
        options["tune"] = "zerolatency"

    def configure(stream: av.VideoStream) -> None:
        stream.options = options

    _write(path, frames, "mp4", "libx264", fps, configure)


def _write(path: Path | str, frames: np.ndarray, container_format: str, codec: str, fps: int,
           configure: Callable[[av.VideoStream], None]) -> None:
    """Encode RGB ``frames`` as yuv420p with one encoder thread; ``configure`` sets the
    codec's options on the stream before the first frame."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{codec}/yuv420p needs even sizes, got {h}x{w}")
    with av.open(str(Path(path)), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        configure(stream)
        for i in range(len(frames)):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


# --- decoding -------------------------------------------------------------------------------


def probe_video(path: Path | str, backend: str = "auto") -> VideoInfo:
    """Frame count, fps and frame size of a video file. Raises VideoDecodeError."""
    _, info = decode_chosen(path, lambda num_frames: [], backend)
    return info


def decode_frames(path: Path | str, indices: Sequence[int], backend: str = "auto") -> np.ndarray:
    """Decode frames ``indices`` (any order, repeats allowed) as uint8 ``[len, H, W, 3]`` RGB.

    ``backend``: "decord", "pyav", or "auto" (decord where importable, PyAV when decord is
    missing or fails on the file). Raises VideoDecodeError for unreadable files and for
    indices outside ``[0, num_frames)``.
    """
    frames, _ = decode_chosen(path, lambda num_frames: indices, backend)
    return frames


def decode_chosen(
    path: Path | str,
    choose: Callable[[int], Sequence[int]],
    backend: str = "auto",
) -> tuple[np.ndarray, VideoInfo]:
    """Open the file once, call ``choose(num_frames)`` for the indices, decode only those.

    This is what a view needs (its indices depend on the frame count) without opening the
    file twice. Returns the frames (as ``decode_frames``) and the file's VideoInfo.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    _check_file(path)
    decord = _decord_module() if backend in ("auto", "decord") else None
    if backend == "decord" and decord is None:
        raise ConfigError("video backend 'decord' is not installed; use backend='pyav' or 'auto'")
    if decord is None:
        return _decode(path, choose, _PyAVSource)
    try:
        return _decode(path, choose, _DecordSource)
    except VideoDecodeError as decord_error:
        if backend == "decord":
            raise
        try:
            return _decode(path, choose, _PyAVSource)
        except VideoDecodeError as pyav_error:
            cause = pyav_error.cause
            if decord_error.cause != cause:
                cause = f"{cause} (decord: {decord_error.cause})"
            raise VideoDecodeError(path, cause) from pyav_error


@functools.cache
def _decord_module() -> ModuleType | None:
    # Imported lazily, and only here: see the note on `import av` above.
    try:
        import decord
    except (ImportError, OSError):
        return None
    return decord


def _check_file(path: Path) -> None:
    """Catch the failures FFmpeg reports badly or not at all (or, for a FIFO, by waiting
    forever): missing, not a regular file, unreadable, empty, a still image, truncated WebM."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise VideoDecodeError(path, f"broken symbolic link (its target {os.readlink(path)} "
                                   "does not exist)") from None
        raise VideoDecodeError(path, "file not found (check the data root and the video "
                               "id)") from None
    except OSError as e:  # EACCES on a folder of the path, ELOOP, ...
        raise VideoDecodeError(path, f"cannot look the file up: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoDecodeError(path, "is a directory, not a video file")
    for test, what in _NOT_REGULAR:
        if test(st.st_mode):
            raise VideoDecodeError(path, f"is {what}, not a regular file: a video must be a "
                                   "plain file")
    size = st.st_size
    if size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes); re-download it")
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except PermissionError:
        raise VideoDecodeError(path, "permission denied: this user cannot read the file "
                               "(check its owner and mode, e.g. chmod a+r)") from None
    except OSError as e:  # EIO on a failing disk, ...
        raise VideoDecodeError(path, f"cannot read the file: {e.strerror or e}") from None
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise VideoDecodeError(path, f"is a still image ({kind} data), not a video: a "
                                   "renamed picture? Replace it with the video")
    expected = _webm_declared_size(head)
    # FFmpeg silently returns the frames before the cut, so a truncated clip would otherwise
    # pass as a shorter one.
    if expected is not None and size < expected:
        raise VideoDecodeError(
            path, f"file is truncated ({size} of the {expected} bytes its header declares); "
            "re-download it"
        )


def _webm_declared_size(head: bytes) -> int | None:
    """File size a Matroska/WebM header declares (EBML header + Segment), or None if unknown."""
    if not head.startswith(_EBML_MAGIC):
        return None
    pos = len(_EBML_MAGIC)
    parsed = _ebml_vint(head, pos)
    if parsed is None:
        return None
    header_size, width = parsed
    pos += width + header_size
    if head[pos : pos + 4] != _SEGMENT_ID.to_bytes(4, "big"):
        return None
    parsed = _ebml_vint(head, pos + 4)
    if parsed is None:
        return None
    segment_size, width = parsed
    if segment_size == (1 << (7 * width)) - 1:  # all ones: "unknown size" (live streams)
        return None
    return pos + 4 + width + segment_size


def _ebml_vint(data: bytes, pos: int) -> tuple[int, int] | None:
    """EBML variable-length integer at ``pos``: (value, byte width), or None if cut off."""
    if pos >= len(data) or data[pos] == 0:
        return None
    width = 9 - data[pos].bit_length()
    if pos + width > len(data):
        return None
    value = data[pos] & ((1 << (8 - width)) - 1)
    for byte in data[pos + 1 : pos + width]:
        value = (value << 8) | byte
    return value, width


def _decode(
    path: Path, choose: Callable[[int], Sequence[int]], source_type: type
) -> tuple[np.ndarray, VideoInfo]:
    with source_type(path) as source:
        n = source.num_frames
        if n <= 0:
            raise VideoDecodeError(path, "the video stream has no frames")
        indices = _as_indices(choose(n))
        bad = indices[(indices < 0) | (indices >= n)]
        if bad.size:
            raise VideoDecodeError(
                path, f"frame index {int(bad[0])} out of range: the video has {n} frames"
            )
        unique, inverse = np.unique(indices, return_inverse=True)
        if unique.size:
            frames = source.frames(unique)[inverse.reshape(-1)]
            height, width = frames.shape[1:3]
        else:
            height, width = source.frame_size()
            frames = np.empty((0, height, width, 3), np.uint8)
        return frames, VideoInfo(n, source.fps, int(height), int(width))


def _as_indices(indices: Sequence[int]) -> np.ndarray:
    array = np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"frame indices must be a 1-D sequence of ints, got {array.dtype} "
                        f"{array.shape}")
    return array.astype(np.int64)


class _DecordSource:
    """decord with one thread: its multi-threaded decoder aborts inside DataLoader workers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.reader = _decord_module().VideoReader(str(path), num_threads=1)
            self.num_frames = len(self.reader)
            self.fps = float(self.reader.get_avg_fps())
        except Exception as e:  # decord raises RuntimeError or its own DECORDError
            raise VideoDecodeError(path, _describe(e)) from e

    def frames(self, sorted_unique: np.ndarray) -> np.ndarray:
        try:
            return self.reader.get_batch(sorted_unique.tolist()).asnumpy()
        except Exception as e:
            raise VideoDecodeError(self.path, _describe(e)) from e

    def frame_size(self) -> tuple[int, int]:
        return tuple(self.frames(np.zeros(1, np.int64)).shape[1:3])

    def __enter__(self) -> _DecordSource:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.reader


class _PyAVSource:
    """PyAV, single-threaded: demux once (counting packets), then decode up to the last index.

    Sequential decoding from the first frame: SSv2 clips are a few seconds with few keyframes,
    so seeking would save little, and it is how frame ``i`` keeps meaning the same frame as
    decord's (packet rank) even for odd timestamps.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.container = av.open(str(path))
        except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError
            raise VideoDecodeError(path, _describe(e)) from e
        try:
            if not self.container.streams.video:
                raise VideoDecodeError(path, "no video stream (is it an audio or data file?)")
            fmt = self.container.format.name
            if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg's still-image demuxers
                raise VideoDecodeError(path, f"is a still image (FFmpeg reads it as {fmt}), "
                                       "not a video: a renamed picture? Replace it")
            self.stream = self.container.streams.video[0]
            self.stream.thread_count = 1
            rate = self.stream.average_rate or self.stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.packets = [p for p in self.container.demux(self.stream) if p.size > 0]
            self.num_frames = len(self.packets)
        except VideoDecodeError:
            self.container.close()
            raise
        except Exception as e:
            self.container.close()
            raise VideoDecodeError(path, _describe(e)) from e

    def frames(self, sorted_unique: np.ndarray) -> np.ndarray:
        wanted = set(sorted_unique.tolist())
        last = int(sorted_unique[-1])
        out: list[np.ndarray] = []
        index = 0
        try:
            for packet in [*self.packets, None]:  # None flushes the decoder's delayed frames
                for frame in self.stream.codec_context.decode(packet):
                    if index in wanted:
                        out.append(frame.to_ndarray(format="rgb24"))
                    index += 1
                if index > last:
                    break
            if index <= last:
                raise VideoDecodeError(
                    self.path, f"only {index} of {self.num_frames} frames could be decoded"
                )
            return np.stack(out)
        except VideoDecodeError:
            raise
        except Exception as e:
            raise VideoDecodeError(self.path, _describe(e)) from e

    def frame_size(self) -> tuple[int, int]:
        return self.stream.codec_context.height, self.stream.codec_context.width

    def __enter__(self) -> _PyAVSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()


def _describe(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    # decord prefixes its messages with "[hh:mm:ss] /source/file.cc:123: "; drop that noise
    message = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0]) if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__

"""Video file I/O: decoding frames by index (decord or PyAV) and writing VP9 ``.webm``."""

from __future__ import annotations

from pathlib import Path

import av  # must load before decord: decord's bundled FFmpeg breaks PyAV's VP9 encoder otherwise
import numpy as np


def write_webm(path: Path | str, frames: np.ndarray, fps: int = 12, crf: int = 20) -> None:
    """Write uint8 ``[T, H, W, 3]`` RGB frames as a VP9 ``.webm`` (SSv2's container and codec).

    Single-threaded realtime encoding so the same frames always give the same bytes.
    H and W must be even (yuv420p).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"VP9/yuv420p needs even sizes, got {h}x{w}")
    path = Path(path)
    with av.open(str(path), mode="w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": str(crf), "deadline": "realtime", "cpu-used": "8"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

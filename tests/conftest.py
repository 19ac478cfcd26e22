"""Shared pytest fixtures: small data made by the tests themselves, once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Two cores shared with the decoder processes: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- video/view fixtures ---


@dataclass(frozen=True)
class SampleVideo:
    path: Path
    num_frames: int
    height: int
    width: int
    fps: int


def _moving_square(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A textured square sliding over a gradient: every frame differs, left differs from right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // width, y * 255 // height, (x + y) % 64 * 2], -1)
    texture = rng.integers(0, 256, (height // 3, height // 3, 3))
    frames = np.repeat(background[None], num_frames, 0).astype(np.uint8)
    side = texture.shape[0]
    for t in range(num_frames):
        top = (t * 2) % (height - side)
        left = (t * 3) % (width - side)
        frames[t, top : top + side, left : left + side] = texture
    return frames


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SampleVideo]:
    """Tiny VP9 .webm clips at 12 fps, made once per session, by name:
    "clip20" (20 frames, 48x64, a keyframe every 6 frames so decoders must seek),
    "short5" (5 frames, 32x40), "tall12" (12 frames, 64x40, portrait)."""
    from salt_vla.data.video import write_webm

    out = tmp_path_factory.mktemp("sample_videos")
    specs = {"clip20": (20, 48, 64, 6), "short5": (5, 32, 40, None), "tall12": (12, 64, 40, None)}
    videos = {}
    for seed, (name, (t, h, w, keyframes)) in enumerate(specs.items()):
        path = out / f"{name}.webm"
        write_webm(path, _moving_square(t, h, w, seed), fps=12, keyframe_interval=keyframes)
        videos[name] = SampleVideo(path, t, h, w, 12)
    return videos

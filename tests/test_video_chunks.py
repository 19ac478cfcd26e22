"""The chunked window reader equals a full decode, frame for frame, on short VP9 and H.264
(with B-frames) videos: sliding windows, windows with gaps (seeking to keyframes), repeated
last frames, a per-frame transform, and the fallback when timestamps cannot place a frame.
It holds only the pending windows' frames (a behaviour, not a timing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salt_vla.data import video_chunks
from salt_vla.data.video import VideoDecodeError, decode_frames, probe_video, write_mp4, write_webm
from salt_vla.data.video_chunks import ChunkStats, iter_windows, scan_video

FRAMES = 40


def _frames(seed: int = 0) -> np.ndarray:
    """Smoothly drifting noise: every frame differs, so a wrong index shows."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 6, size=(FRAMES, 32, 48, 3))
    return (np.cumsum(steps, axis=0) % 256).astype(np.uint8)


@pytest.fixture(scope="module", params=["webm", "mp4-bframes"])
def video(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chunks")
    if request.param == "webm":
        path = d / "clip.webm"
        write_webm(path, _frames(), keyframe_interval=8)
    else:
        path = d / "clip.mp4"
        write_mp4(path, _frames(), keyframe_interval=8, bframes=2)
    return path


def _read(path: Path, windows: list[list[int]], **kw: object) -> tuple[np.ndarray, ChunkStats]:
    stats = ChunkStats()
    batches = list(iter_windows(path, windows, stats=stats, **kw))
    assert all(len(b) <= kw.get("batch", 8) for b in batches)
    return np.concatenate(batches), stats


def test_scan_counts_frames_and_finds_keyframes(video: Path) -> None:
    table = scan_video(video)
    assert table.num_frames == probe_video(video).num_frames == FRAMES
    assert (table.height, table.width) == (32, 48)
    assert table.keyframes[:5] == (0, 8, 16, 24, 32)
    assert table.pts is not None and list(table.pts) == sorted(table.pts)


@pytest.mark.parametrize("windows", [
    [list(range(s, s + 8)) for s in range(0, FRAMES - 7)],  # sliding, stride 1
    [[s, s + 2, s + 4, s + 6] for s in range(0, FRAMES - 6, 11)],  # strided, gaps
    [[37, 38, 39, 39, 39, 39]],  # past the end the last frame repeats
    [[9, 10], [17, 18], [33, 34]],  # each window right after a keyframe
])
def test_chunked_windows_equal_full_decode(video: Path, windows: list[list[int]]) -> None:
    full = decode_frames(video, range(FRAMES), backend="pyav")
    got, stats = _read(video, windows, batch=3)
    np.testing.assert_array_equal(got, np.stack([full[w] for w in windows]))
    assert stats.fallbacks == 0
    same, _ = _read(video, windows, batch=3, seek=False)
    np.testing.assert_array_equal(same, got)


def test_gaps_are_skipped_by_seeking(video: Path) -> None:
    _, stats = _read(video, [[9, 10], [17, 18], [33, 34]])
    assert stats.seeks == 3 and stats.decoded < FRAMES // 2, stats
    _, plain = _read(video, [[9, 10], [17, 18], [33, 34]], seek=False)
    assert plain.seeks == 0 and plain.decoded >= 35


def test_only_pending_windows_are_held(video: Path) -> None:
    windows = [list(range(s, s + 8)) for s in range(0, FRAMES - 7)]
    _, stats = _read(video, windows, batch=4)
    assert stats.peak_buffered == 8  # one window's frames, whatever the batch size


def test_transform_is_applied_once_per_frame(video: Path) -> None:
    full = decode_frames(video, range(FRAMES), backend="pyav")
    calls = []

    def half(frame: np.ndarray) -> np.ndarray:
        calls.append(1)
        return frame[::2, ::2, :1]

    windows = [list(range(s, s + 4)) for s in range(0, 12, 2)]
    got, _ = _read(video, windows, transform=half)
    np.testing.assert_array_equal(got, np.stack([full[w][:, ::2, ::2, :1] for w in windows]))
    assert len(calls) == 14  # frames 0..13, each decoded and transformed once


def test_unplaceable_timestamps_fall_back_to_decoding_from_the_start(
    video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def miss(self: object, frame: object) -> int:
        raise video_chunks._SeekMiss

    monkeypatch.setattr(video_chunks._FrameSource, "_index", miss)
    full = decode_frames(video, range(FRAMES), backend="pyav")
    windows = [[9, 10], [33, 34]]
    got, stats = _read(video, windows)
    np.testing.assert_array_equal(got, np.stack([full[w] for w in windows]))
    assert stats.fallbacks == 1


def test_bad_input_names_the_file(tmp_path: Path, video: Path) -> None:
    with pytest.raises(VideoDecodeError, match="out of range: the video has 40 frames"):
        list(iter_windows(video, [[0, 40]]))
    with pytest.raises(VideoDecodeError, match="file not found"):
        scan_video(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        scan_video(tmp_path / "junk.mp4")
    assert list(iter_windows(video, [])) == []


def test_write_mp4_decodes_alike_and_encodes_frames_from_the_past_only(tmp_path: Path) -> None:
    a, b = _frames(1), _frames(1)
    b[20:] = 255 - b[20:]  # the clips part at frame 20
    write_mp4(tmp_path / "a.mp4", a)
    write_mp4(tmp_path / "b.mp4", b)
    da = decode_frames(tmp_path / "a.mp4", range(FRAMES), backend="pyav")
    db = decode_frames(tmp_path / "b.mp4", range(FRAMES), backend="pyav")
    np.testing.assert_array_equal(da[:20], db[:20])  # no look-ahead: equal before they part
    assert not np.array_equal(da[20], db[20])
    np.testing.assert_array_equal(da, decode_frames(tmp_path / "a.mp4", range(FRAMES)))
    assert np.abs(da.astype(int) - a).mean() < 8  # lossy, but the same pictures

"""Decoding: determinism, decord/PyAV agreement, and one clear error for every bad file."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from salt_vla.data import video
from salt_vla.data.video import VideoDecodeError, decode_chosen, decode_frames, probe_video

BACKENDS = ["decord", "pyav", "auto"]


@pytest.fixture(scope="module")
def bad_files(sample_videos, tmp_path_factory) -> dict[str, Path]:
    """One file per failure the decoders must report, keyed by the cause."""
    out = tmp_path_factory.mktemp("bad_videos")
    good = sample_videos["clip20"].path.read_bytes()
    files = {
        "empty": b"",
        "text": b"this is a text file, not a video\n" * 8,
        "truncated-header": good[:40],
        "truncated-10%": good[: len(good) // 10],
        "truncated-95%": good[: len(good) * 95 // 100],
        "truncated-last-byte": good[:-1],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = out / f"{name}.webm"
        paths[name].write_bytes(data)
    # A valid media file with no video stream: audio renamed to .webm.
    paths["audio-only"] = out / "audio-only.webm"
    with wave.open(str(paths["audio-only"]), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    paths["missing"] = out / "missing.webm"
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_reports_true_frame_count_fps_and_size(sample_videos, backend):
    for name, v in sample_videos.items():
        info = probe_video(v.path, backend)
        assert (info.num_frames, info.fps, info.height, info.width) == (
            v.num_frames, v.fps, v.height, v.width
        ), f"{backend} probe of {name}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_is_deterministic(sample_videos, backend):
    path = sample_videos["clip20"].path
    indices = [0, 7, 13, 19]
    first = decode_frames(path, indices, backend)
    assert first.dtype == np.uint8 and first.shape == (4, 48, 64, 3)
    assert first.tobytes() == decode_frames(path, indices, backend).tobytes()


def test_decord_and_pyav_agree_exactly(sample_videos):
    for name, v in sample_videos.items():
        all_frames = list(range(v.num_frames))
        a = decode_frames(v.path, all_frames, "decord")
        b = decode_frames(v.path, all_frames, "pyav")
        diff = np.abs(a.astype(int) - b.astype(int)).max()
        assert diff == 0, f"{name}: decord and PyAV differ by up to {diff}"


def test_sparse_unsorted_repeated_indices_match_full_decode(sample_videos):
    # clip20 has a keyframe every 6 frames: decord must seek, PyAV decodes forward.
    path = sample_videos["clip20"].path
    full = decode_frames(path, list(range(20)), "pyav")
    indices = [19, 3, 12, 12, 0, 7, 18]
    for backend in BACKENDS:
        got = decode_frames(path, indices, backend)
        assert np.array_equal(got, full[indices]), f"{backend} frames {indices}"
    assert np.array_equal(decode_frames(path, np.array([5, 2]), "decord"), full[[5, 2]])


def test_frames_differ_over_time(sample_videos):
    frames = decode_frames(sample_videos["clip20"].path, [0, 1], "pyav")
    assert not np.array_equal(frames[0], frames[1]), "decoder returned the same frame twice"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, cause",
    [
        ("empty", "empty"),
        ("text", ""),
        ("truncated-header", "truncated"),
        ("truncated-10%", "truncated"),
        ("truncated-95%", "truncated"),
        ("truncated-last-byte", "truncated"),
        ("audio-only", ""),
        ("missing", "not found"),
    ],
)
def test_bad_files_raise_video_decode_error_naming_the_file(bad_files, backend, name, cause):
    path = bad_files[name]
    for call in (lambda: probe_video(path, backend), lambda: decode_frames(path, [0], backend)):
        with pytest.raises(VideoDecodeError) as info:
            call()
        assert info.value.path == path
        assert str(path) in str(info.value)
        assert info.value.cause and cause in info.value.cause


@pytest.fixture(scope="module")
def not_videos(tmp_path_factory) -> dict[str, Path]:
    """Things at a video's path that are not videos, keyed by what they are (a one-frame
    WebM is a video: ``decord_rejects`` below)."""
    import os

    from PIL import Image

    out = tmp_path_factory.mktemp("not_videos")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    paths = {}
    for name, fmt in (("png", "PNG"), ("jpeg", "JPEG"), ("ppm", "PPM")):
        paths[name] = out / f"{name}.webm"  # a picture renamed .webm
        with open(paths[name], "wb") as f:
            img.save(f, format=fmt)
    paths["directory"] = out / "directory.webm"
    paths["directory"].mkdir()
    paths["fifo"] = out / "fifo.webm"
    os.mkfifo(paths["fifo"])  # opening it for reading would wait forever
    paths["broken-link"] = out / "broken-link.webm"
    paths["broken-link"].symlink_to(out / "gone.webm")
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, cause",
    [
        ("png", "is a still image (PNG data), not a video"),
        ("jpeg", "is a still image (JPEG data), not a video"),
        ("ppm", "is a still image (FFmpeg reads it as ppm_pipe)"),
        ("directory", "is a directory, not a video file"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("broken-link", "broken symbolic link"),
    ],
)
def test_what_is_not_a_video_is_refused_with_its_own_reason(not_videos, backend, name, cause):
    """A PNG renamed .webm used to become 8 identical grey frames; a directory or FIFO was
    "file not found"."""
    if backend == "decord" and name == "ppm":
        pytest.skip("decord alone refuses it with its own words (no frame count)")
    with pytest.raises(VideoDecodeError) as info:
        decode_frames(not_videos[name], [0], backend)
    assert cause in info.value.cause and str(not_videos[name]) in str(info.value)
    assert "not found" not in info.value.cause


def test_an_unreadable_file_says_permission_denied(sample_videos, monkeypatch):
    path = sample_videos["clip20"].path

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root reads any file: simulate a chmod 000
    with pytest.raises(VideoDecodeError) as info:
        probe_video(path)
    assert "permission denied" in info.value.cause and "chmod" in info.value.cause


def test_audio_only_file_says_there_is_no_video_stream(bad_files):
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe_video(bad_files["audio-only"], "pyav")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", [20, 100, -1])
def test_out_of_range_index_raises(sample_videos, backend, index):
    path = sample_videos["clip20"].path
    with pytest.raises(VideoDecodeError, match=f"index {index} out of range.*20 frames") as info:
        decode_frames(path, [0, index], backend)
    assert info.value.path == path


def test_non_integer_indices_are_a_type_error(sample_videos):
    with pytest.raises(TypeError, match="ints"):
        decode_frames(sample_videos["clip20"].path, [0.5, 1.0], "pyav")


def test_unknown_backend_is_rejected(sample_videos):
    with pytest.raises(ValueError, match="decord, pyav"):
        decode_frames(sample_videos["clip20"].path, [0], "opencv")


def test_decode_chosen_sees_the_frame_count(sample_videos):
    seen = []

    def last_two(n: int) -> list[int]:
        seen.append(n)
        return [n - 2, n - 1]

    frames, info = decode_chosen(sample_videos["short5"].path, last_two, "auto")
    assert seen == [5] and info.num_frames == 5
    assert np.array_equal(frames, decode_frames(sample_videos["short5"].path, [3, 4], "pyav"))


def test_auto_uses_pyav_when_decord_is_missing(sample_videos, monkeypatch):
    path = sample_videos["clip20"].path
    expected = decode_frames(path, [1, 8], "pyav")
    monkeypatch.setattr(video, "_decord_module", lambda: None)
    assert np.array_equal(decode_frames(path, [1, 8], "auto"), expected)
    with pytest.raises(ValueError, match="not installed"):
        decode_frames(path, [1], "decord")


def test_auto_falls_back_to_pyav_when_decord_fails_on_a_file(sample_videos, monkeypatch):
    path = sample_videos["clip20"].path
    expected = decode_frames(path, [1, 8], "pyav")

    def broken(self, sorted_unique):
        raise VideoDecodeError(self.path, "simulated decord failure")

    monkeypatch.setattr(video._DecordSource, "frames", broken)
    assert np.array_equal(decode_frames(path, [1, 8], "auto"), expected)
    with pytest.raises(VideoDecodeError, match="simulated"):
        decode_frames(path, [1, 8], "decord")


def test_write_webm_keyframe_interval_is_honoured(sample_videos):
    import av

    with av.open(str(sample_videos["clip20"].path)) as container:
        stream = container.streams.video[0]
        keyframes = [i for i, p in enumerate(container.demux(stream)) if p.size and p.is_keyframe]
    assert keyframes == [0, 6, 12, 18]


@pytest.fixture(scope="module")
def decord_rejects(tmp_path_factory) -> dict[str, Path]:
    """Valid clips that decord 0.6 refuses (measured): a single-frame clip ("broken metadata")
    and some small widths such as 48 ("DECORDArrayCopyFromTo: The size must exactly match")."""
    out = tmp_path_factory.mktemp("decord_rejects")
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    paths = {"one-frame": out / "one-frame.webm", "width-48": out / "width-48.webm"}
    video.write_webm(paths["one-frame"], frames[:1])
    video.write_webm(paths["width-48"], frames)
    return paths


@pytest.mark.parametrize("name, num_frames", [("one-frame", 1), ("width-48", 3)])
def test_auto_decodes_valid_files_decord_rejects(decord_rejects, name, num_frames):
    path = decord_rejects[name]
    expected = decode_frames(path, list(range(num_frames)), "pyav")
    assert expected.shape == (num_frames, 64, 48, 3)
    assert probe_video(path, "auto").num_frames == num_frames
    assert np.array_equal(decode_frames(path, list(range(num_frames)), "auto"), expected)

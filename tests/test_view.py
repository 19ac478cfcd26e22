"""Views: stable hashes, exact sampling rules, same pixels for the same (seed, id, view)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from salt_vla.data.video import decode_frames
from salt_vla.data.view import (
    VIEW_PRESETS,
    ViewSpec,
    load_view,
    plan_view,
    render_view,
    view_preset,
)

TINY = VIEW_PRESETS["tiny-8x64"]
TINY_MV = VIEW_PRESETS["tiny-8x64-mv2"]


# --- spec: hash, serialisation, validation ---------------------------------------------------


def test_default_spec_hash_is_golden():
    # Changing this literal invalidates every cache built so far: bump VIEW_VERSION instead
    # of editing it unless the change is intended.
    assert ViewSpec().hash() == "b68983fc0366b011"
    assert VIEW_PRESETS["ssv2-16x224"].hash() == "b68983fc0366b011"


def test_hash_and_plan_are_the_same_in_another_process():
    code = (
        "from salt_vla.data.view import VIEW_PRESETS, plan_view\n"
        "s = VIEW_PRESETS['ssv2-16x224-mv4']\n"
        "print(s.hash(), plan_view(s, 'vid-7', 3, 50, 240, 320))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    spec = VIEW_PRESETS["ssv2-16x224-mv4"]
    assert out == f"{spec.hash()} {plan_view(spec, 'vid-7', 3, 50, 240, 320)}"


CHANGED_FIELDS = {
    "num_frames": 8,
    "sampling": "stride",
    "frame_step": 2,
    "size": 112,
    "resize": 256,
    "n_views": 2,
    "temporal_jitter": 0.5,
    "crop_scale": (0.5, 1.0),
    "hflip": True,
    "seed": 1,
}


def test_hash_changes_when_any_field_changes():
    assert set(CHANGED_FIELDS) == {f.name for f in dataclasses.fields(ViewSpec)}, (
        "a ViewSpec field is missing from CHANGED_FIELDS"
    )
    base = ViewSpec()
    hashes = {"(default)": base.hash()}
    for name, value in CHANGED_FIELDS.items():
        hashes[name] = dataclasses.replace(base, **{name: value}).hash()
    same = [n for n, h in hashes.items() if n != "(default)" and h == hashes["(default)"]]
    assert not same, f"hash ignores field(s) {same}"
    assert len(set(hashes.values())) == len(hashes)


def test_number_types_do_not_change_the_hash():
    spec = ViewSpec(temporal_jitter=0, crop_scale=[1, 1])
    assert spec == ViewSpec() and spec.hash() == ViewSpec().hash()
    assert isinstance(spec.crop_scale, tuple) and isinstance(spec.temporal_jitter, float)


@pytest.mark.parametrize("name", sorted(VIEW_PRESETS))
def test_to_dict_from_dict_round_trip_through_json(name):
    spec = VIEW_PRESETS[name]
    again = ViewSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.hash() == spec.hash()


def test_from_dict_fills_missing_keys_with_defaults():
    assert ViewSpec.from_dict({"size": 64}) == ViewSpec(size=64)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown ViewSpec field.*colour.*known fields: num_"):
        ViewSpec.from_dict({**ViewSpec().to_dict(), "colour": "red"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 0}, "num_frames must be >= 1"),
        ({"num_frames": 8.0}, "num_frames must be an int"),
        ({"size": True}, "size must be an int"),
        ({"frame_step": 0}, "frame_step must be >= 1"),
        ({"n_views": 0}, "n_views must be >= 1"),
        ({"sampling": "random"}, "sampling must be one of segment, stride"),
        ({"resize": 200}, r"resize must be None or an int >= size \(224\)"),
        ({"temporal_jitter": 1.5}, r"temporal_jitter must be in \[0, 1\]"),
        ({"temporal_jitter": float("nan")}, "temporal_jitter must be finite"),
        ({"crop_scale": (0.8, 0.5)}, "crop_scale needs 0 < lo <= hi <= 1"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale needs 0 < lo <= hi <= 1"),
        ({"crop_scale": 0.5}, r"crop_scale must be a pair"),
        ({"hflip": 1}, "hflip must be a bool"),
    ],
)
def test_invalid_specs_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewSpec(**kwargs)


def test_presets():
    ssv2 = view_preset("ssv2-16x224")
    assert (ssv2.num_frames, ssv2.sampling, ssv2.size, ssv2.n_views) == (16, "segment", 224, 1)
    tiny = view_preset("tiny-8x64")
    assert (tiny.num_frames, tiny.size) == (8, 64)
    with pytest.raises(ValueError, match="unknown view preset 'nope'.*ssv2-16x224.*tiny-8x64"):
        view_preset("nope")


# --- temporal sampling rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, n, expected",
    [
        (8, 32, (2, 6, 10, 14, 18, 22, 26, 30)),  # segment centres
        (4, 4, (0, 1, 2, 3)),
        (4, 10, (1, 3, 6, 8)),  # floor((i + 0.5) * 10 / 4)
        (8, 3, (0, 0, 0, 1, 1, 2, 2, 2)),  # short clip: frames repeat in time order
        (4, 1, (0, 0, 0, 0)),
    ],
)
def test_segment_sampling_takes_segment_centres(num_frames, n, expected):
    spec = ViewSpec(num_frames=num_frames, size=32)
    assert plan_view(spec, "v", 0, n, 32, 32).indices == expected


@pytest.mark.parametrize(
    "n, expected",
    [
        (100, (36, 40, 44, 48, 52, 56, 60, 64)),  # free = 71, start = floor(0.5 * 72)
        (29, (0, 4, 8, 12, 16, 20, 24, 28)),  # exactly one window
        (30, (1, 5, 9, 13, 17, 21, 25, 29)),
        (20, (0, 4, 8, 12, 16, 19, 19, 19)),  # short clip: repeat the last frame
        (1, (0,) * 8),
    ],
)
def test_stride_sampling_takes_the_centred_window(n, expected):
    spec = ViewSpec(num_frames=8, sampling="stride", frame_step=4, size=32)
    assert plan_view(spec, "v", 0, n, 32, 32).indices == expected


def test_segment_jitter_stays_inside_each_segment_and_varies():
    spec = ViewSpec(num_frames=8, size=32, temporal_jitter=1.0, n_views=4)
    n, seen = 50, set()
    for vid in range(20):
        for view in range(4):
            indices = plan_view(spec, str(vid), view, n, 32, 32).indices
            for i, idx in enumerate(indices):
                assert i * n // 8 <= idx < -(-(i + 1) * n // 8), f"frame {i} left its segment"
            seen.add(indices)
    assert len(seen) > 70, "temporal jitter barely changes the frames"


def test_stride_jitter_covers_all_starts():
    spec = ViewSpec(num_frames=4, sampling="stride", frame_step=2, size=32, temporal_jitter=1.0)
    starts = {plan_view(spec, f"v{i}", 0, 12, 32, 32).indices[0] for i in range(200)}
    assert starts == set(range(6))  # span 7 of 12 frames: starts 0..5


def test_view_index_must_be_below_n_views():
    with pytest.raises(ValueError, match="view_index 2 out of range.*n_views=2"):
        plan_view(TINY_MV, "v", 2, 20, 48, 64)


# --- spatial plan -----------------------------------------------------------------------------


def test_default_box_is_the_centred_short_side_square():
    assert plan_view(TINY, "v", 0, 8, 240, 427).box == (93.5, 0.0, 333.5, 240.0)
    assert plan_view(TINY, "v", 0, 8, 64, 40).box == (0.0, 12.0, 40.0, 52.0)
    # resize 256 for size 224: the centre crop covers 224/256 of the short side
    spec = ViewSpec(size=224, resize=256)
    assert plan_view(spec, "v", 0, 8, 256, 256).box == (16.0, 16.0, 240.0, 240.0)


def test_multi_view_plan_is_golden():
    # Pins the sha256-derived per-view randomness: it must not depend on numpy or Python.
    plan = plan_view(VIEW_PRESETS["ssv2-16x224-mv4"], "12345", 1, 48, 240, 427)
    assert plan.indices == (0, 3, 6, 10, 12, 17, 18, 21, 24, 28, 30, 34, 37, 41, 44, 45)
    assert plan.box == pytest.approx(
        (36.86127913122474, 78.67668750849313, 186.21116706736078, 228.02657544462917), abs=1e-9
    )
    assert plan.flip is False


def test_random_crops_stay_inside_the_frame_and_respect_the_scale():
    spec = ViewSpec(num_frames=2, size=32, n_views=8, crop_scale=(0.25, 0.5))
    for view in range(8):
        left, top, right, bottom = plan_view(spec, "v", view, 4, 48, 64).box
        assert 0 <= left and 0 <= top and right <= 64 and bottom <= 48
        assert right - left == pytest.approx(bottom - top)
        assert 0.25 - 1e-9 <= ((right - left) / 48) ** 2 <= 0.5 + 1e-9


def test_hflip_flips_about_half_the_views():
    spec = ViewSpec(num_frames=2, size=32, hflip=True)
    flips = [plan_view(spec, f"v{i}", 0, 4, 48, 64).flip for i in range(40)]
    assert 5 < sum(flips) < 35
    assert not any(plan_view(TINY, f"v{i}", 0, 4, 48, 64).flip for i in range(40))


# --- rendering and loading --------------------------------------------------------------------


def test_render_view_shape_flip_and_determinism(sample_videos):
    v = sample_videos["clip20"]
    plan = plan_view(TINY, "clip20", 0, v.num_frames, v.height, v.width)
    frames = decode_frames(v.path, plan.indices, "pyav")
    out = render_view(frames, plan, TINY)
    assert out.dtype == np.uint8 and out.shape == (8, 64, 64, 3)
    assert out.tobytes() == render_view(frames, plan, TINY).tobytes()
    flipped = render_view(frames, dataclasses.replace(plan, flip=True), TINY)
    assert np.array_equal(flipped, out[:, :, ::-1])
    with pytest.raises(ValueError, match="expected uint8 frames of shape"):
        render_view(frames[:3], plan, TINY)


@pytest.mark.parametrize("name", ["clip20", "short5", "tall12"])
def test_load_view_is_decode_plus_render(sample_videos, name):
    v = sample_videos[name]
    plan = plan_view(TINY, name, 0, v.num_frames, v.height, v.width)
    expected = render_view(decode_frames(v.path, plan.indices, "pyav"), plan, TINY)
    assert np.array_equal(load_view(v.path, TINY, name), expected)


def test_load_view_same_pixels_from_both_backends(sample_videos):
    path = sample_videos["clip20"].path
    for view in range(2):
        a = load_view(path, TINY_MV, "clip20", view, backend="decord")
        b = load_view(path, TINY_MV, "clip20", view, backend="pyav")
        assert np.array_equal(a, b), f"view {view}: decord and PyAV pixels differ"


def test_multi_view_is_deterministic_and_views_differ(sample_videos):
    path = sample_videos["clip20"].path
    view0 = load_view(path, TINY_MV, "clip20", 0)
    assert view0.tobytes() == load_view(path, TINY_MV, "clip20", 0).tobytes()
    assert not np.array_equal(view0, load_view(path, TINY_MV, "clip20", 1)), "views 0 and 1 match"
    other_id = load_view(path, TINY_MV, "another-id", 0)
    assert not np.array_equal(view0, other_id), "the video id does not change the view"
    reseeded = load_view(path, dataclasses.replace(TINY_MV, seed=7), "clip20", 0)
    assert not np.array_equal(view0, reseeded), "the seed does not change the view"


def test_short_clip_repeats_frames_instead_of_failing(sample_videos):
    v = sample_videos["short5"]  # 5 frames
    spec = ViewSpec(num_frames=8, sampling="stride", frame_step=2, size=32)
    assert plan_view(spec, "short5", 0, 5, v.height, v.width).indices == (0, 2, 4, 4, 4, 4, 4, 4)
    out = load_view(v.path, spec, "short5")
    assert out.shape == (8, 32, 32, 3)
    assert all(np.array_equal(out[2], out[i]) for i in range(3, 8))
    assert not np.array_equal(out[0], out[2])
    segment = load_view(v.path, ViewSpec(num_frames=16, size=32), "short5")
    assert segment.shape == (16, 32, 32, 3)

"""Deterministic views: the exact pixels a model sees for (video, view index), described by data.

A ``ViewSpec`` is the whole recipe from file to uint8 ``[T, size, size, 3]`` frames. Every
random choice of a view (temporal offset, crop scale and position, flip) is a pure function of
``(spec.seed, video_id, view_index)``: uniforms come from SHA-256 of a canonical string, not
from Python's ``hash()`` (salted per process) nor numpy's Generator (whose method streams
numpy may change between versions), so a cache built on one machine is reproduced anywhere.

Rules, exactly (``n`` source frames, ``T = num_frames``, jitter ``j`` in [0, 1], ``r`` a
per-view uniform in [0, 1), ``u = 0.5 + j * (r - 0.5)``):

* ``segment`` (TSN-style, the usual for SSv2): split ``[0, n)`` into ``T`` equal segments
  and take frame ``floor((i + u_i) * n / T)`` from segment ``i``, with its own ``r_i`` per
  segment. ``j = 0`` gives the segment centres ``floor((i + 0.5) * n / T)``; ``j = 1`` a
  uniformly random frame of each segment. When ``n < T`` segments are shorter than a frame,
  so frames repeat in time order (e.g. n=3, T=8 -> 0 0 0 1 1 2 2 2).
* ``stride`` (V-JEPA-style): a window of ``span = (T - 1) * frame_step + 1`` frames starting
  at ``min(free, floor(u * (free + 1)))`` with ``free = max(0, n - span)``: centred when
  ``j = 0``, uniform over all starts when ``j = 1``. Frame ``i`` is
  ``min(start + i * frame_step, n - 1)``: a clip shorter than the window repeats its last frame.
* Space: the default is "resize the short side to ``resize`` (None: to ``size``), centre-crop
  ``size`` x ``size``", i.e. a centred square box of side ``short * size / resize`` source
  pixels. With ``crop_scale != (1, 1)`` each view draws an area scale ``s`` from the range and
  a box of side ``sqrt(s)`` times that, placed uniformly anywhere in the frame
  (RandomResizedCrop-style, square). The box is resampled to ``size`` x ``size`` in one step
  by Pillow's bilinear filter (which antialiases when shrinking): same bytes on every run.
* ``hflip``: each view is mirrored left-right with probability 1/2. SSv2 has
  direction-dependent classes ("... from left to right"), so leave it off for SSv2 labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from salt_vla.data.video import decode_chosen
from salt_vla.errors import ConfigError

# Bump when the meaning of any field or the rendering changes: it is part of every view hash,
# so caches built by the old code are refused instead of silently mismatching.
VIEW_VERSION = 1

SAMPLINGS = ("segment", "stride")


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"ViewSpec.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"ViewSpec.{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ViewSpec:
    """Everything that turns a video file into the pixels a model sees. See the module doc."""

    num_frames: int = 16
    sampling: str = "segment"  # "segment" | "stride"
    frame_step: int = 4  # stride only (ignored by "segment", but still part of the hash)
    size: int = 224  # output frames are size x size
    resize: int | None = None  # short side before the centre crop; None means `size`
    n_views: int = 1
    temporal_jitter: float = 0.0  # 0: deterministic centres, 1: full per-view randomness
    crop_scale: tuple[float, float] = (1.0, 1.0)  # area scale range; (1, 1): centre crop
    hflip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_step", "size", "n_views", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"ViewSpec.{name} must be an int, got {value!r}")
        for name in ("num_frames", "frame_step", "size", "n_views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ViewSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(
                f"ViewSpec.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"
            )
        if self.resize is not None and (
            not isinstance(self.resize, int) or isinstance(self.resize, bool)
            or self.resize < self.size
        ):
            raise ConfigError(
                f"ViewSpec.resize must be None or an int >= size ({self.size}), got {self.resize!r}"
            )
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"ViewSpec.hflip must be a bool, got {self.hflip!r}")
        jitter = _as_float("temporal_jitter", self.temporal_jitter)
        if not 0.0 <= jitter <= 1.0:
            raise ConfigError(f"ViewSpec.temporal_jitter must be in [0, 1], got {jitter}")
        if not isinstance(self.crop_scale, (tuple, list)) or len(self.crop_scale) != 2:
            raise ConfigError(
                f"ViewSpec.crop_scale must be a pair (lo, hi), got {self.crop_scale!r}"
            )
        lo, hi = (_as_float("crop_scale", v) for v in self.crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"ViewSpec.crop_scale needs 0 < lo <= hi <= 1, got ({lo}, {hi})")
        # Canonical types, so that 1 and 1.0 (or a JSON list) give the same spec and hash.
        object.__setattr__(self, "temporal_jitter", jitter)
        object.__setattr__(self, "crop_scale", (lo, hi))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``crop_scale`` as a list)."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewSpec:
        """Inverse of ``to_dict``. Missing keys take defaults; unknown keys are an error."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown ViewSpec field(s) {', '.join(unknown)}; known fields: {', '.join(known)}"
                " (was this view written by a newer salt-vla?)"
            )
        values = dict(d)
        if "crop_scale" in values and isinstance(values["crop_scale"], list):
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViewSpec:
        """Preset ``name`` with the given fields replaced; ``None`` values keep the preset's
        (so command-line flags that were not given pass through). ``crop_scale`` may be the
        text ``"LO,HI"``."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown view field(s) {', '.join(unknown)}; known fields: "
                              f"{', '.join(sorted(known))}")
        if isinstance(changes.get("crop_scale"), str):
            text = changes["crop_scale"]
            try:
                lo, hi = (float(x) for x in text.split(","))
            except ValueError:
                raise ConfigError(f"crop scale {text!r}: expected LO,HI, e.g. 0.3,1") from None
            changes["crop_scale"] = (lo, hi)
        return dataclasses.replace(view_preset(name), **changes)

    def hash(self) -> str:
        """Stable 16-hex-digit id of the pixels this spec produces (any process or machine).

        SHA-256 of canonical JSON: sorted keys, no spaces, the view version, and floats in
        Python's shortest round-trip repr (identical on every IEEE-754 platform).
        """
        canonical = json.dumps(
            {"view_version": VIEW_VERSION, **self.to_dict()},
            sort_keys=True, separators=(",", ":"), allow_nan=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


VIEW_PRESETS: dict[str, ViewSpec] = {
    # SSv2 evaluation-style: 16 segment centres, short side 224, centre crop.
    "ssv2-16x224": ViewSpec(),
    # Four augmented views per clip for multi-view caches (V-JEPA's crop scale range; no flip).
    "ssv2-16x224-mv4": ViewSpec(n_views=4, temporal_jitter=1.0, crop_scale=(0.3, 1.0)),
    # V-JEPA-style: 16 frames, every 4th frame, centred window.
    "vjepa-16x224-s4": ViewSpec(sampling="stride", frame_step=4),
    # Tests and the demo.
    "tiny-8x64": ViewSpec(num_frames=8, size=64),
    "tiny-8x64-mv2": ViewSpec(
        num_frames=8, size=64, n_views=2, temporal_jitter=1.0, crop_scale=(0.5, 1.0)
    ),
}


def view_preset(name: str) -> ViewSpec:
    """The ViewSpec called ``name`` in VIEW_PRESETS."""
    if name not in VIEW_PRESETS:
        raise ConfigError(f"unknown view preset {name!r}; choose one of: {', '.join(VIEW_PRESETS)}")
    return VIEW_PRESETS[name]


@dataclass(frozen=True)
class ViewPlan:
    """One view of one video: which source frames, which box of them, mirrored or not."""

    indices: tuple[int, ...]  # source frame per output frame, in output order
    box: tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels
    flip: bool
    source_size: tuple[int, int]  # (height, width) of the source frames


def plan_view(
    spec: ViewSpec, video_id: str, view_index: int, num_source_frames: int, height: int,
    width: int,
) -> ViewPlan:
    """The frame indices, crop box and flip of view ``view_index`` of ``video_id``."""
    if height < 1 or width < 1:
        raise ConfigError(f"video {video_id!r}: bad frame size {height}x{width}")
    indices = _frame_indices(spec, video_id, view_index, num_source_frames)
    draw = _ViewRandom(spec.seed, video_id, view_index)
    short = min(height, width)
    base = short * spec.size / (spec.resize or spec.size)
    if spec.crop_scale == (1.0, 1.0):
        side = base
        left, top = (width - side) / 2, (height - side) / 2
    else:
        lo, hi = spec.crop_scale
        side = base * math.sqrt(lo + (hi - lo) * draw("scale"))
        left, top = draw("left") * (width - side), draw("top") * (height - side)
    flip = spec.hflip and draw("flip") < 0.5
    return ViewPlan(indices, (left, top, left + side, top + side), flip, (height, width))


def render_view(frames: np.ndarray, plan: ViewPlan, spec: ViewSpec) -> np.ndarray:
    """Crop, resize and flip ``frames`` (uint8 ``[T, H, W, 3]``: source frame
    ``plan.indices[i]`` at position ``i``) into uint8 ``[T, size, size, 3]``."""
    frames = np.asarray(frames)
    expected = (len(plan.indices), *plan.source_size, 3)
    if frames.dtype != np.uint8 or frames.shape != expected:
        raise ConfigError(f"expected uint8 frames of shape {expected} for this plan, "
                         f"got {frames.dtype} {frames.shape}")
    size = (spec.size, spec.size)
    out = np.stack([
        np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR, box=plan.box))
        for f in frames
    ])
    return np.ascontiguousarray(out[:, :, ::-1]) if plan.flip else out


def load_view(
    path: Path | str, spec: ViewSpec, video_id: str, view_index: int = 0, backend: str = "auto"
) -> np.ndarray:
    """View ``view_index`` of the video at ``path`` as uint8 ``[T, size, size, 3]``.

    Opens the file once and decodes only the distinct frames the view uses.
    Raises VideoDecodeError (from salt_vla.data.video) for unreadable files.
    """
    frames, info = decode_chosen(
        path, lambda n: _frame_indices(spec, video_id, view_index, n), backend
    )
    plan = plan_view(spec, video_id, view_index, info.num_frames, info.height, info.width)
    return render_view(frames, plan, spec)


def _frame_indices(
    spec: ViewSpec, video_id: str, view_index: int, num_source_frames: int
) -> tuple[int, ...]:
    if not 0 <= view_index < spec.n_views:
        raise ConfigError(f"view_index {view_index} out of range for a spec with "
                         f"n_views={spec.n_views}")
    n, t, jitter = num_source_frames, spec.num_frames, spec.temporal_jitter
    if n < 1:
        raise ConfigError(f"video {video_id!r} has no frames ({n})")
    draw = _ViewRandom(spec.seed, video_id, view_index)
    if spec.sampling == "segment":
        offsets = [0.5 + jitter * (draw("time", i) - 0.5) for i in range(t)]
        return tuple(min(n - 1, math.floor((i + u) * n / t)) for i, u in enumerate(offsets))
    span = (t - 1) * spec.frame_step + 1
    free = max(0, n - span)
    start = min(free, math.floor((0.5 + jitter * (draw("time") - 0.5)) * (free + 1)))
    return tuple(min(start + i * spec.frame_step, n - 1) for i in range(t))


class _ViewRandom:
    """Uniforms in [0, 1) that depend only on (seed, video id, view index, name, k)."""

    def __init__(self, seed: int, video_id: str, view_index: int) -> None:
        self.key = (seed, str(video_id), view_index)

    def __call__(self, name: str, k: int = 0) -> float:
        text = json.dumps(["salt-vla/view", *self.key, name, k], separators=(",", ":"))
        word = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
        return (word >> 11) / float(1 << 53)  # 53 bits: exactly representable, never 1.0


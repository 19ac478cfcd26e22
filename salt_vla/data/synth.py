"""Synthetic Something-Something-v2-style datasets whose classes are visible only in motion.

Textured objects over textured backgrounds perform template actions ("Moving [something] from
left to right", "[Something] appearing", ...), with random sizes, speeds, start positions,
moving distractors and a little camera shake and sensor noise. The output is the exact SSv2
layout (``train.json``, ``validation.json``, ``test.json``, ``labels.json``, VP9
``videos/<id>.webm``), so every other stage reads it as it reads the real dataset.

Why no single frame reveals the class: classes come in time-reversal pairs. Right-to-left is
left-to-right played backwards, disappearing is appearing played backwards, and so on. Both
classes of a pair draw their scene from the same distribution and differ only in the direction
of time, so the set of frames of a clip is the same for either class; only their order tells
them apart. Camera effects are stationary in time (no fade-in, drift or noise ramp) so that
the order of frames carries nothing but the action.

Determinism: everything in video ``index`` comes from generators seeded with
``(seed, index)``; videos can be made in any order, by any number of processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.data.video import write_webm
from salt_vla.errors import SaltError, nonfinite_fields
from salt_vla.files import atomic_path, write_json_atomic, write_text_atomic

GENERATOR = "salt_vla.data.synth"
FORMAT_VERSION = 1
SPLITS: tuple[str, str, str] = ("train", "validation", "test")
MANIFEST = "synth.json"
TEST_ANSWERS = "test-answers.csv"

# Stream tags keep the plan's and each video's random streams apart.
_PLAN_STREAM = 0x504C414E
_SCENE_STREAM = 0x5343454E
_CAMERA_STREAM = 0x43414D45
_LIGHT_STREAM = 0x4C494748  # lighting / colour nuisance: its own stream, so configs without
# it draw exactly what they drew before it existed


class SynthError(SaltError, ValueError):
    """Bad synthetic-dataset configuration or output directory; the message says the fix."""


@dataclass(frozen=True)
class Action:
    """One class: an SSv2-style template, the motion that shows it, and whether time runs back."""

    template: str
    motion: str
    reverse: bool


# Ordered so that the first K classes are always complete time-reversal pairs for even K.
ACTIONS: tuple[Action, ...] = (
    Action("Moving [something] from left to right", "slide_x", False),
    Action("Moving [something] from right to left", "slide_x", True),
    Action("Moving [something] up", "slide_y", True),
    Action("Moving [something] down", "slide_y", False),
    Action("Moving [something] towards the camera", "zoom", False),
    Action("Moving [something] away from the camera", "zoom", True),
    Action("Rotating [something] clockwise", "spin", False),
    Action("Rotating [something] counterclockwise", "spin", True),
    Action("[Something] appearing", "appear", False),
    Action("[Something] disappearing", "appear", True),
    Action("Sliding [something] until it stops", "slide_stop", False),
    Action("Starting to slide [something] from rest", "slide_stop", True),
    Action("Moving [something] and [something] closer to each other", "converge", False),
    Action("Moving [something] and [something] away from each other", "converge", True),
)
TEMPLATES: tuple[str, ...] = tuple(a.template for a in ACTIONS)

_PLACEHOLDER = re.compile(r"\[(something|Something)\]")


def class_name(template: str) -> str:
    """SSv2's class name of a template: the template with ``[`` and ``]`` removed."""
    return template.replace("[", "").replace("]", "")


def fill_template(template: str, placeholders: Sequence[str]) -> str:
    """The template with each ``[something]`` replaced, in order, by a placeholder."""
    names = iter(placeholders)

    def sub(match: re.Match[str]) -> str:
        name = next(names)
        return name[:1].upper() + name[1:] if match.group(1) == "Something" else name

    return _PLACEHOLDER.sub(sub, template)


OPTIONAL_KEYS = ("lighting", "colour_jitter")  # serialised only when set (SynthConfig.to_dict)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic dataset; saved as ``synth.json`` next to it.

    ``splits`` are relative weights of train/validation/test. ``noise`` is the std of per-pixel
    sensor noise in 0-255 units, ``jitter`` the camera-shake amplitude in pixels, ``flicker``
    the std of a per-frame brightness gain; set all three to 0 for clean frames.
    ``background`` scales the contrast of the background texture (1: full value-noise
    texture, 0: one flat colour per video); it changes how much of a clip's variance is static
    scenery rather than motion, never what a single frame says about the class.
    ``lighting``: std of a smooth multiplicative light field (coarse value noise over the
    frame) drawn afresh for every frame; ``colour_jitter``: std of a per-frame gain per
    colour channel. Both are unpredictable frame to frame, independent of the class and
    identically distributed at every time step (stationary), so they hide nothing about the
    direction of time and reveal nothing in a single frame; a model of pixels must carry
    them, a model of what persists between frames may drop them (issue 13, (a)).
    """

    videos: int = 200
    classes: int = 6
    frames: int = 32
    height: int = 96
    width: int = 96
    fps: int = 12
    seed: int = 0
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
    distractors: tuple[int, int] = (1, 2)
    noise: float = 3.0
    jitter: float = 1.0
    flicker: float = 0.02
    background: float = 1.0
    crf: int = 20
    lighting: float = 0.0
    colour_jitter: float = 0.0

    def __post_init__(self) -> None:
        # Frozen: normalise sequences (e.g. lists from JSON) through object.__setattr__.
        object.__setattr__(self, "splits", tuple(float(f) for f in self.splits))
        object.__setattr__(self, "distractors", tuple(int(d) for d in self.distractors))
        if bad := nonfinite_fields(self):  # NaN passes every range check below
            raise SynthError(f"{', '.join(bad)}: must be a finite number")
        n = len(ACTIONS)
        if self.classes < 1 or self.classes > n:
            raise SynthError(
                f"classes={self.classes}: choose 1..{n}; the templates, in order, are: "
                + "; ".join(f"{i}: {t}" for i, t in enumerate(TEMPLATES))
            )
        if self.videos < 1:
            raise SynthError(f"videos={self.videos}: need at least 1 video")
        if self.frames < 2:
            raise SynthError(f"frames={self.frames}: motion needs at least 2 frames")
        for name, v in (("height", self.height), ("width", self.width)):
            if v < 16 or v % 2:
                raise SynthError(f"{name}={v}: must be an even number >= 16 (VP9 yuv420p)")
        if self.fps < 1:
            raise SynthError(f"fps={self.fps}: must be >= 1")
        if self.seed < 0:
            raise SynthError(f"seed={self.seed}: must be >= 0")
        if len(self.splits) != 3 or min(self.splits) < 0 or sum(self.splits) <= 0:
            raise SynthError(
                f"splits={self.splits}: need 3 non-negative train/validation/test weights "
                "with a positive sum, e.g. 0.7/0.15/0.15"
            )
        lo_hi = self.distractors
        if len(lo_hi) != 2 or lo_hi[0] < 0 or lo_hi[1] < lo_hi[0]:
            raise SynthError(f"distractors={lo_hi}: need (min, max) with 0 <= min <= max")
        if self.noise < 0 or self.jitter < 0 or self.flicker < 0:
            raise SynthError("noise, jitter and flicker must be >= 0")
        if not 0.0 <= self.lighting <= 0.5 or not 0.0 <= self.colour_jitter <= 0.5:
            raise SynthError(f"lighting={self.lighting}, colour_jitter={self.colour_jitter}: "
                             "each is a gain std in [0, 0.5]")
        if not 0.0 <= self.background <= 1.0:
            raise SynthError(f"background={self.background}: texture contrast is 0..1")
        if not 0 <= self.crf <= 63:
            raise SynthError(f"crf={self.crf}: VP9 crf is 0..63")

    @property
    def actions(self) -> tuple[Action, ...]:
        """The chosen classes, by class index."""
        return ACTIONS[: self.classes]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``SynthConfig.from_dict`` inverts it. Keys added after the first
        datasets were written (``OPTIONAL_KEYS``) appear only when they are not 0, so the
        manifest of an existing dataset still equals its config's dict and is reused."""
        d = asdict(self)
        d["splits"] = list(self.splits)
        d["distractors"] = list(self.distractors)
        for key in OPTIONAL_KEYS:
            if d[key] == 0.0:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynthConfig:
        """Config from ``to_dict`` output (e.g. the ``config`` of a ``synth.json``)."""
        return cls(**d)



def parse_size(text: str) -> tuple[int, int]:
    """``"96x128"`` -> ``(96, 128)`` (height, width); one number means a square."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2:
        raise SynthError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 96x96")
    return nums[0], nums[1]


def parse_splits(text: str) -> tuple[float, float, float]:
    """``"0.7/0.15/0.15"`` (or commas) -> train/validation/test weights."""
    parts = re.split(r"[/,:]", text.replace(" ", ""))
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 3:
        raise SynthError(
            f"splits {text!r}: expected three train/validation/test weights, e.g. 0.7/0.15/0.15"
        )
    return nums  # type: ignore[return-value]


def parse_range(option: str, text: str) -> tuple[int, int]:
    """``"1-2"`` -> ``(1, 2)``; ``"3"`` -> ``(3, 3)``; ``option`` names the flag in errors."""
    parts = text.replace(" ", "").split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if 1 <= len(parts) <= 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None:
        raise SynthError(f"{option} {text!r}: expected MIN-MAX, e.g. 1-2, or one number")
    return lo, hi


# --- plan: which video gets which split, class and id --------------------------------------


@dataclass(frozen=True)
class PlannedVideo:
    """One video of the plan; its pixels are a function of (config, index, class_index)."""

    index: int
    id: str
    split: str
    class_index: int


def split_counts(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``weights`` with largest remainders (ties go to earlier splits)."""
    total = float(sum(weights))
    raw = [n * w / total for w in weights]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_totals(cfg: SynthConfig) -> dict[str, int]:
    """Videos per split, as :func:`plan_dataset` assigns them (per class, then summed)."""
    k, n = cfg.classes, cfg.videos
    totals = dict.fromkeys(SPLITS, 0)
    for c in range(k):
        per_class = n // k + (1 if c < n % k else 0)
        for split, count in zip(SPLITS, split_counts(per_class, cfg.splits), strict=True):
            totals[split] += count
    return totals


def check_splits_filled(cfg: SynthConfig) -> None:
    """Refuse a size that leaves a split with a positive weight empty (each class is split on
    its own, so a few videos per class give the small splits none), naming the smallest
    ``videos`` that fills every split, or the weights that make it intended."""
    empty = [s for s, c in split_totals(cfg).items() if c == 0 and cfg.splits[SPLITS.index(s)]]
    if not empty:
        return
    def filled(n: int) -> bool:
        totals = split_totals(replace(cfg, videos=n))
        return all(totals[s] or not w for s, w in zip(SPLITS, cfg.splits, strict=True))

    need = cfg.videos + 1
    while not filled(need):  # ends: enough videos per class give every weighted split one
        need += 1
    zero = "/".join("0" if s in empty else f"{w:g}" for s, w in zip(SPLITS, cfg.splits,
                                                                    strict=True))
    raise SynthError(
        f"--videos {cfg.videos} over {cfg.classes} classes at splits "
        f"{'/'.join(f'{w:g}' for w in cfg.splits)} leaves {' and '.join(empty)} empty (every "
        f"class is split on its own: at most {-(-cfg.videos // cfg.classes)} video(s) per "
        f"class); use "
        f"--videos {need} or more, or --splits {zero} if you want no {' or '.join(empty)}")


def plan_dataset(cfg: SynthConfig) -> list[PlannedVideo]:
    """Assign every video a split, class and numeric id.

    Classes get N // K videos each (the first N % K one more), and each class is split by the
    same rule, so splits are exactly balanced whenever K divides N. Ids are ``"1"..."N"``,
    shuffled over splits and classes like SSv2's.
    """
    k, n = cfg.classes, cfg.videos
    slots: list[tuple[str, int]] = []
    for c in range(k):
        per_class = n // k + (1 if c < n % k else 0)
        for split, count in zip(SPLITS, split_counts(per_class, cfg.splits), strict=True):
            slots += [(split, c)] * count
    perm = np.random.default_rng([_PLAN_STREAM, cfg.seed]).permutation(len(slots))
    return [
        PlannedVideo(index=j, id=str(j + 1), split=slots[p][0], class_index=slots[p][1])
        for j, p in enumerate(perm)
    ]


# --- appearance ------------------------------------------------------------------------------

_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.85, 0.12, 0.10)),
    ("green", (0.15, 0.65, 0.20)),
    ("blue", (0.12, 0.25, 0.85)),
    ("yellow", (0.95, 0.85, 0.10)),
    ("orange", (0.95, 0.50, 0.08)),
    ("purple", (0.55, 0.15, 0.70)),
    ("pink", (0.95, 0.45, 0.70)),
    ("cyan", (0.10, 0.80, 0.85)),
    ("white", (0.95, 0.95, 0.95)),
    ("black", (0.08, 0.08, 0.08)),
    ("brown", (0.50, 0.30, 0.12)),
)
_SHAPES = ("disc", "square", "bar", "triangle", "cross", "ring", "oval", "diamond")
_TEXTURES = ("striped", "checkered", "spotted", "dotted", "marbled")


def _shape_sd(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (object units, > 0 inside) of a shape of radius ~0.9."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "disc":
        return 0.85 - np.hypot(u, v)
    if shape == "square":
        return 0.68 - np.maximum(au, av_)
    if shape == "bar":
        return np.minimum(0.9 - au, 0.42 - av_)
    if shape == "triangle":
        d = np.full(u.shape, -np.inf, dtype=np.float32)
        for k in range(3):
            a = -np.pi / 2 + k * 2 * np.pi / 3
            d = np.maximum(d, u * np.cos(a) + v * np.sin(a))
        return 0.45 - d
    if shape == "cross":
        return np.maximum(np.minimum(0.9 - au, 0.3 - av_), np.minimum(0.3 - au, 0.9 - av_))
    if shape == "ring":
        r = np.hypot(u, v)
        return np.minimum(0.88 - r, r - 0.42)
    if shape == "oval":
        return 0.5 * (1.0 - np.hypot(u / 0.9, v / 0.55))
    if shape == "diamond":
        return (0.92 - au - av_) / np.sqrt(2.0)
    raise ValueError(shape)


def _smooth_grid(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Value noise: ``grid`` sampled at float coordinates with smoothstep interpolation."""
    gh, gw = grid.shape[:2]
    y = np.clip(y, 0, gh - 1.001)
    x = np.clip(x, 0, gw - 1.001)
    y0 = y.astype(np.int64)
    x0 = x.astype(np.int64)
    wy = y - y0
    wx = x - x0
    wy = wy * wy * (3 - 2 * wy)
    wx = wx * wx * (3 - 2 * wx)
    top = grid[y0, x0] * (1 - wx) + grid[y0, x0 + 1] * wx
    bottom = grid[y0 + 1, x0] * (1 - wx) + grid[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


@dataclass
class _Look:
    """Static appearance of an object: shape, texture and colours, and its SSv2-style name."""

    name: str
    shape: str
    texture: str
    c1: np.ndarray
    c2: np.ndarray
    freq: float
    angle: float
    phase: float
    grid: np.ndarray

    def pattern(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Texture weight in [0, 1] at object coordinates (it moves and turns with the object)."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        s = u * ca + v * sa
        t = -u * sa + v * ca
        f = self.freq
        if self.texture == "striped":
            return 0.5 + 0.5 * np.tanh(3 * np.sin(f * s + self.phase))
        if self.texture == "checkered":
            return 0.5 + 0.5 * np.tanh(3 * np.sin(f * s) * np.sin(f * t + self.phase))
        if self.texture == "dotted":
            return 0.5 + 0.5 * np.tanh(6 * (np.sin(f * s) * np.sin(f * t) - 0.5))
        g = self.grid.shape[0] - 1
        n = _smooth_grid(self.grid, (v + 1) * 0.5 * g, (u + 1) * 0.5 * g)
        if self.texture == "spotted":
            return 0.5 + 0.5 * np.tanh(8 * (n - 0.55))
        return n  # marbled


def _random_look(rng: np.random.Generator) -> _Look:
    ci = int(rng.integers(len(_COLOURS)))
    colour_name, base = _COLOURS[ci]
    c1 = np.clip(np.asarray(base) + rng.uniform(-0.06, 0.06, 3), 0, 1)
    mode = int(rng.integers(3))
    if mode == 0:  # darker shade of the same colour
        c2 = c1 * rng.uniform(0.25, 0.5)
    elif mode == 1:  # lighter shade
        c2 = c1 + (1 - c1) * rng.uniform(0.5, 0.8)
    else:  # a second colour
        c2 = np.asarray(_COLOURS[int(rng.integers(len(_COLOURS)))][1]) * rng.uniform(0.6, 1.0)
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    article = "an" if colour_name[0] in "aeiou" else "a"
    return _Look(
        name=f"{article} {colour_name} {texture} {shape}",
        shape=shape,
        texture=texture,
        c1=c1.astype(np.float32),
        c2=np.clip(c2, 0, 1).astype(np.float32),
        freq=float(rng.uniform(5.0, 10.0)),
        angle=float(rng.uniform(0, 2 * np.pi)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        grid=rng.random((6, 6)).astype(np.float32),
    )


def _background(
    rng: np.random.Generator, hc: int, wc: int, contrast: float = 1.0
) -> np.ndarray:
    """A static textured background [hc, wc, 3] in [0, 1]: value noise at 3 scales + grating,
    its contrast scaled by ``contrast`` (after every random draw, so the scene's other draws
    do not depend on it)."""
    yy, xx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    n = np.zeros((hc, wc), np.float32)
    for cells, weight in ((3, 0.55), (8, 0.3), (max(hc, wc) // 5, 0.15)):
        grid = rng.random((cells + 2, cells + 2)).astype(np.float32)
        n += weight * _smooth_grid(grid, yy / hc * cells, xx / wc * cells)
    if rng.random() < 0.5:
        a = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.3) * max(hc, wc)
        wave = np.sin((xx * np.cos(a) + yy * np.sin(a)) * (2 * np.pi / period))
        n = 0.7 * n + 0.3 * (0.5 + 0.5 * wave)
    n = (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
    ca = rng.uniform(0.15, 0.8, 3).astype(np.float32)
    cb = np.clip(ca + rng.uniform(-0.35, 0.35, 3), 0.05, 0.95).astype(np.float32)
    return ca + (cb - ca) * (np.float32(contrast) * n[..., None])


# --- motion ----------------------------------------------------------------------------------


@dataclass
class _Sprite:
    """An object and its state per frame (frame-pixel coordinates, radius in px, angle in rad)."""

    look: _Look
    cy: np.ndarray
    cx: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    alpha: np.ndarray


def _ramp(tau: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return np.clip((tau - t0) / max(t1 - t0, 1e-6), 0.0, 1.0)


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (a bounce off the walls; symmetric in time)."""
    span = max(hi - lo, 1e-6)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y < span, y, 2 * span - y)


def _full(tau: np.ndarray, value: float) -> np.ndarray:
    return np.full(tau.shape, value, dtype=np.float64)


def _main_sprites(
    motion: str, rng: np.random.Generator, tau: np.ndarray, h: int, w: int
) -> list[_Sprite]:
    """The acting object(s) for ``motion`` played forward over normalised times ``tau``.

    All random draws happen before ``tau`` is used, so the same generator state gives the same
    scene whichever order ``tau`` runs in: a reversed class is its partner's frames reversed.
    """
    s = min(h, w)
    # The action occupies a random central part of the clip.
    t0, t1 = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
    wobble = rng.uniform(-0.5, 0.5)  # slow incidental rotation over the clip
    theta0 = rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(-0.06, 0.06, 2) * s  # small incidental drift (y, x)
    look = _random_look(rng)

    def size() -> float:  # one log-uniform size law, so object size hints little at the class
        return float(np.exp(rng.uniform(np.log(0.11), np.log(0.22)))) * s

    def still(r: float) -> tuple[np.ndarray, np.ndarray]:
        cy = rng.uniform(r, h - r) + drift[0] * (tau - 0.5)
        cx = rng.uniform(r, w - r) + drift[1] * (tau - 0.5)
        return cy, cx

    ones = _full(tau, 1.0)
    if motion in ("slide_x", "slide_y"):
        r = size()
        along, across = (w, h) if motion == "slide_x" else (h, w)
        d = rng.uniform(0.35, 0.55) * along
        a0 = rng.uniform(0.6 * r, along - 0.6 * r - d)
        b = rng.uniform(r, across - r)
        pos = a0 + d * _ramp(tau, t0, t1)
        other = b + drift[0] * (tau - 0.5)
        cy, cx = (other, pos) if motion == "slide_x" else (pos, other)
        return [_Sprite(look, cy, cx, r * ones, theta0 + wobble * tau, ones)]
    if motion == "zoom":
        r0 = rng.uniform(0.07, 0.1) * s
        ratio = rng.uniform(2.0, 2.8)
        cy = rng.uniform(0.3, 0.7) * h + drift[0] * (tau - 0.5)
        cx = rng.uniform(0.3, 0.7) * w + drift[1] * (tau - 0.5)
        radius = r0 * ratio ** _ramp(tau, t0, t1)
        return [_Sprite(look, cy, cx, radius, theta0 + wobble * tau, ones)]
    if motion == "spin":
        r = size()
        turn = rng.uniform(2.0, 3.6)  # rad; increasing angle is clockwise on screen (y down)
        cy, cx = still(r)
        return [_Sprite(look, cy, cx, r * ones, theta0 + turn * _ramp(tau, t0, t1), ones)]
    if motion == "appear":
        r = size()
        t_on = rng.uniform(0.3, 0.55)
        fade = rng.uniform(0.03, 0.15)
        cy, cx = still(r)
        alpha = _ramp(tau, t_on, t_on + fade)
        return [_Sprite(look, cy, cx, r * ones, theta0 + wobble * tau, alpha)]
    if motion == "slide_stop":
        r = size()
        length = rng.uniform(0.35, 0.5) * s
        t_stop = rng.uniform(0.45, 0.65)
        m = 0.6 * r
        for _ in range(64):  # a path that stays in frame; shorten it if none is found
            ang = rng.uniform(0, 2 * np.pi)
            end = np.array([rng.uniform(m, h - m), rng.uniform(m, w - m)])
            start = end - length * np.array([np.sin(ang), np.cos(ang)])
            if m <= start[0] <= h - m and m <= start[1] <= w - m:
                break
            length *= 0.97
        prog = 1 - (1 - _ramp(tau, 0.0, t_stop)) ** 2  # decelerates to a stop
        cy = start[0] + (end[0] - start[0]) * prog
        cx = start[1] + (end[1] - start[1]) * prog
        return [_Sprite(look, cy, cx, r * ones, theta0 + wobble * tau, ones)]
    if motion == "converge":
        look2 = _random_look(rng)
        r1, r2 = rng.uniform(0.1, 0.14, 2) * s
        far = rng.uniform(0.55, 0.7) * s
        near = r1 + r2 + rng.uniform(0.03, 0.08) * s  # never touching: corners reach ~r
        m = 0.6 * max(r1, r2)
        for _ in range(64):
            ang = rng.uniform(0, 2 * np.pi)
            unit = np.array([np.sin(ang), np.cos(ang)])
            mid = np.array([rng.uniform(m, h - m), rng.uniform(m, w - m)])
            ends = (mid - unit * far / 2, mid + unit * far / 2)
            if all(m <= e[0] <= h - m and m <= e[1] <= w - m for e in ends):
                break
            far = max(near + 0.05 * s, far * 0.97)
        wobble2 = rng.uniform(-0.5, 0.5)
        theta2 = rng.uniform(0, 2 * np.pi)
        sep = far + (near - far) * _ramp(tau, t0, t1)
        sprites = []
        pair = ((-1, look, r1, theta0, wobble), (1, look2, r2, theta2, wobble2))
        for sign, lk, r, th0, wb in pair:
            cy = mid[0] + sign * unit[0] * sep / 2
            cx = mid[1] + sign * unit[1] * sep / 2
            sprites.append(_Sprite(lk, cy, cx, r * ones, th0 + wb * tau, ones))
        return sprites
    raise ValueError(f"unknown motion {motion!r}")


def _distractors(
    rng: np.random.Generator, count: int, tau: np.ndarray, h: int, w: int
) -> list[_Sprite]:
    """Smaller objects drifting and spinning in random directions, bouncing off the edges."""
    s = min(h, w)
    out = []
    for _ in range(count):
        look = _random_look(rng)
        r = rng.uniform(0.05, 0.09) * s
        p0 = np.array([rng.uniform(r, h - r), rng.uniform(r, w - r)])
        ang = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.0, 0.4) * s
        spin = rng.uniform(-1.5, 1.5)
        theta0 = rng.uniform(0, 2 * np.pi)
        cy = _fold(p0[0] + speed * np.sin(ang) * tau, r, h - r)
        cx = _fold(p0[1] + speed * np.cos(ang) * tau, r, w - r)
        out.append(_Sprite(look, cy, cx, _full(tau, r), theta0 + spin * tau, _full(tau, 1.0)))
    return out


# --- rendering -------------------------------------------------------------------------------


def _draw(
    canvas: np.ndarray, look: _Look, cy: float, cx: float, r: float, theta: float, alpha: float
) -> None:
    """Composite one object onto ``canvas`` in place, anti-aliased via its signed distance."""
    if alpha <= 0 or r < 0.5:
        return
    hc, wc = canvas.shape[:2]
    ext = 1.3 * r + 1
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, hc)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, wc)
    if y0 >= y1 or x0 >= x1:
        return
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / r
    a = np.clip(_shape_sd(look.shape, u, v) * r + 0.5, 0.0, 1.0) * alpha
    if not a.any():
        return
    p = look.pattern(u, v)[..., None]
    shade = (1.0 - 0.15 * np.minimum(u * u + v * v, 1.0))[..., None]
    colour = (look.c1 + (look.c2 - look.c1) * (0.75 * p)) * shade
    region = canvas[y0:y1, x0:x1]
    region += a[..., None] * (colour - region)


def _video_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed, index])


@dataclass
class _Scene:
    """A video's content before the camera: static background and objects in draw order."""

    background: np.ndarray  # [h + 2*margin, w + 2*margin, 3] float32 in [0, 1]
    margin: int
    sprites: list[_Sprite]  # distractors first (they stay behind), the acting objects last
    num_main: int


def _scene(cfg: SynthConfig, index: int, class_index: int) -> _Scene:
    if not 0 <= class_index < cfg.classes:
        raise SynthError(f"class_index={class_index}: config has {cfg.classes} classes")
    action = ACTIONS[class_index]
    t, h, w = cfg.frames, cfg.height, cfg.width
    tau = np.linspace(0.0, 1.0, t)
    if action.reverse:
        tau = tau[::-1]
    rng = _video_rng(cfg.seed, index, _SCENE_STREAM)
    # The canvas has a margin so camera shake can crop inside it.
    m = int(math.ceil(cfg.jitter))
    bg = _background(rng, h + 2 * m, w + 2 * m, cfg.background)
    mains = _main_sprites(action.motion, rng, tau, h, w)
    n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    sprites = _distractors(rng, n_dis, tau, h, w) + mains
    return _Scene(bg, m, sprites, len(mains))


def light_fields(cfg: SynthConfig, index: int) -> np.ndarray | None:
    """Per-frame multiplicative gains ``[T, H, W, 3]`` float32 of the lighting and colour
    nuisance of video ``index`` (None when both are 0).

    A function of (seed, index) only, never of the class, with every frame drawn
    independently from the same law: frame ``i`` of a clip and of its time-reversed partner
    get the same gains, and no time step differs in distribution from another.
    """
    if cfg.lighting <= 0 and cfg.colour_jitter <= 0:
        return None
    t, h, w = cfg.frames, cfg.height, cfg.width
    rng = _video_rng(cfg.seed, index, _LIGHT_STREAM)
    out = np.ones((t, h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cells = 2  # a 3x3 grid of knots: light varies smoothly over the frame
    for i in range(t):
        if cfg.lighting > 0:
            grid = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
            field = _smooth_grid(grid, yy / h * cells, xx / w * cells)
            out[i] *= np.clip(1.0 + cfg.lighting * field, 0.3, 1.7)[..., None]
        if cfg.colour_jitter > 0:
            c = rng.standard_normal(3).astype(np.float32)
            out[i] *= np.clip(1.0 + cfg.colour_jitter * c, 0.3, 1.7)
    return out


def render_video(cfg: SynthConfig, index: int, class_index: int) -> tuple[np.ndarray, list[str]]:
    """Render video ``index`` of class ``class_index``: uint8 ``[T, H, W, 3]`` and placeholders.

    A pure function of its arguments. The scene depends on (seed, index) and the class's motion,
    not on its direction, so the two classes of a pair render the same frames in reverse order
    (exactly so when camera noise, jitter and flicker are 0).
    """
    scene = _scene(cfg, index, class_index)
    t, h, w = cfg.frames, cfg.height, cfg.width
    bg, m, sprites = scene.background, scene.margin, scene.sprites
    mains = sprites[len(sprites) - scene.num_main :]

    cam = _video_rng(cfg.seed, index, _CAMERA_STREAM)
    # Shake: a random-phase sinusoid plus white noise, both stationary in time, so reversing a
    # clip does not change their statistics (no cue to the direction of time).
    out_tau = np.linspace(0.0, 1.0, t)
    shake = []
    for _ in range(2):
        f, ph = cam.uniform(0.5, 2.0), cam.uniform(0, 2 * np.pi)
        j = cfg.jitter * (0.6 * np.sin(2 * np.pi * f * out_tau + ph) + 0.4 * cam.standard_normal(t))
        shake.append(np.clip(np.round(j), -m, m).astype(int))
    gain = 255.0 * (1.0 + np.clip(cfg.flicker * cam.standard_normal(t), -0.1, 0.1))
    light = light_fields(cfg, index)

    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        canvas = bg.copy()
        for sp in sprites:
            _draw(
                canvas,
                sp.look,
                float(sp.cy[i]) + m,
                float(sp.cx[i]) + m,
                float(sp.r[i]),
                float(sp.theta[i]),
                float(sp.alpha[i]),
            )
        oy, ox = m + shake[0][i], m + shake[1][i]
        img = canvas[oy : oy + h, ox : ox + w] * np.float32(gain[i])
        if light is not None:
            img *= light[i]
        if cfg.noise > 0:
            img += cam.standard_normal((h, w, 3), dtype=np.float32) * np.float32(cfg.noise)
        img += 0.5
        frames[i] = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return frames, [sp.look.name for sp in mains]


# --- dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_dataset`` wrote."""

    root: Path
    counts: dict[str, int]
    class_names: list[str]
    seconds: float
    workers: int


def _previous_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("generator") == GENERATOR else None


def _check_out(out: Path, force: bool) -> dict[str, Any] | None:
    """Refuse to write into a directory holding anything but a previous synth output."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a directory; choose another output path")
    if not out.exists() or not any(out.iterdir()):
        return None
    previous = _previous_manifest(out)
    if previous is None and not force:
        raise SynthError(
            f"{out} is not empty and is not a previous `salt data synth` output (no {MANIFEST} "
            "from it); refusing to write there. Choose a new or empty directory, or pass "
            "--force to write into it anyway: files with the generated names are overwritten, "
            "nothing else is deleted."
        )
    return previous


def _make_one(job: tuple[SynthConfig, int, int, str]) -> tuple[int, list[str]]:
    """Pool worker: render one video and write it (to a temp name first, then rename)."""
    cfg, index, class_index, path = job
    try:
        frames, placeholders = render_video(cfg, index, class_index)
        with atomic_path(path) as tmp:
            write_webm(tmp, frames, fps=cfg.fps, crf=cfg.crf)
    except Exception as e:  # name the video: a bare encoder error says nothing about which
        raise SynthError(f"synthetic video {index + 1} ({path}) failed: {e!r}") from None
    return index, placeholders


def default_workers() -> int:
    """Processes used when none are asked for: up to 2 (the target machine's core count)."""
    return max(1, min(2, os.cpu_count() or 1))


def generate_dataset(
    out: Path | str,
    cfg: SynthConfig,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write a synthetic dataset in the exact SSv2 layout under ``out``.

    Writes ``videos/<id>.webm`` (VP9), ``train.json``/``validation.json`` (id, label, template,
    placeholders), ``test.json`` (ids only), ``labels.json`` (class name -> index string),
    ``test-answers.csv`` (``id;class name``, like SSv2's released test answers) and
    ``synth.json`` (this config, seed and counts). ``out`` must be new, empty or a previous
    synth output (whose stale videos are removed); otherwise ``force=True`` is required, and
    even then only files with generated names are overwritten. ``workers`` > 1 renders in a
    process pool (spawned fresh, so a parent that imported decord cannot break VP9 encoding).
    ``progress(done, total)`` is called after each video.
    """
    out = Path(out)
    previous = _check_out(out, force)
    plan = plan_dataset(cfg)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "config": cfg.to_dict(),
        "templates": list(TEMPLATES[: cfg.classes]),
        "ids": {"first": 1, "last": len(plan)},
    }
    write_json_atomic(out / MANIFEST, manifest)

    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, len(plan))
    jobs = [(cfg, p.index, p.class_index, str(videos_dir / f"{p.id}.webm")) for p in plan]
    placeholders: dict[int, list[str]] = {}
    if workers == 1:
        results = map(_make_one, jobs)
        for done, (index, names) in enumerate(results, 1):
            placeholders[index] = names
            if progress:
                progress(done, len(jobs))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            chunk = max(1, min(8, len(jobs) // (4 * workers)))
            for done, (index, names) in enumerate(pool.imap_unordered(_make_one, jobs, chunk), 1):
                placeholders[index] = names
                if progress:
                    progress(done, len(jobs))

    entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    answers = []
    for p in plan:
        template = ACTIONS[p.class_index].template
        if p.split == "test":
            entries["test"].append({"id": p.id})
            answers.append(f"{p.id};{class_name(template)}")
            continue
        names = placeholders[p.index]
        entries[p.split].append(
            {
                "id": p.id,
                "label": fill_template(template, names),
                "template": template,
                "placeholders": names,
            }
        )
    for split in SPLITS:
        write_json_atomic(out / f"{split}.json", entries[split])
    labels = {class_name(t): str(i) for i, t in enumerate(TEMPLATES[: cfg.classes])}
    write_json_atomic(out / "labels.json", labels)
    write_text_atomic(out / TEST_ANSWERS, "".join(a + "\n" for a in answers))

    if previous is not None:  # videos of an earlier, larger synth run that no entry names now
        last = int(previous.get("ids", {}).get("last", 0))
        for i in range(len(plan) + 1, last + 1):
            for stale in (videos_dir / f"{i}.webm", videos_dir / f"{i}.webm.tmp"):
                if stale.is_file():
                    stale.unlink()

    seconds = time.perf_counter() - started
    counts = {s: len(entries[s]) for s in SPLITS}
    per_class = {
        s: [sum(1 for p in plan if p.split == s and p.class_index == c) for c in range(cfg.classes)]
        for s in SPLITS
    }
    manifest.update(complete=True, counts=counts, class_counts=per_class, seconds=round(seconds, 2))
    write_json_atomic(out / MANIFEST, manifest)
    return SynthSummary(
        root=out,
        counts=counts,
        class_names=list(labels),
        seconds=seconds,
        workers=workers,
    )

"""Matched possible/impossible video pairs for the intuitive-physics surprise test.

Each pair is one scene rendered twice. A ball flies across a static textured background on a
gentle arc while a distractor drifts behind it; at the *event frame* the two versions part:

============  =====================================  ==========================================
kind          possible                               impossible
============  =====================================  ==========================================
vanish        the ball flies on                      the ball is gone from the event frame on
teleport      the ball flies on                      the ball jumps by ~1/3 of the frame and
                                                     flies on from there
wall          the ball bounces off a wall in its     the ball passes through the wall (drawn
              path (elastic, horizontal reflection)  over it: solid bodies interpenetrate)
colour        the ball keeps its colour              the ball changes colour mid-flight
============  =====================================  ==========================================

Every frame before the event frame is byte-identical in the two rendered versions (the frame
at the event already differs), there is no sensor noise, and everything about pair ``i`` comes
from a generator seeded with ``(seed, i)``. Kinds cycle in the order given.

Layout written by :func:`generate_intphys` (``salt data synth --intphys OUT``)::

    OUT/pairs.json                  {"generator", "format_version", "complete", "config",
                                     "frames", "fps", "height", "width",
                                     "pairs": [{"id", "kind", "possible", "impossible",
                                                "event_frame"}, ...]}
    OUT/videos/<id>-possible.webm   VP9, ``frames`` frames at ``fps``
    OUT/videos/<id>-impossible.webm

``possible``/``impossible`` are paths relative to OUT; ``event_frame`` is the 0-based index
of the first frame where the two videos differ.

The same pairs in IntPhys 2's layout (:func:`generate_intphys2`, ``salt data synth --intphys
--layout intphys2 OUT``; a fixture for the reader, no substitute for the benchmark)::

    OUT/synth-intphys2.json         the generator's config ("complete": true once done)
    OUT/<split>/metadata.csv        IntPhys 2's exact header, four rows per scene
    OUT/<split>/Videos/<name>.mp4   H.264, ``frames`` frames at ``fps``

Scene ``s`` is two pairs of one kind (pairs ``2s`` and ``2s + 1`` rendered with that kind):
set-up 1 gives ``1_Possible``/``1_Impossible``, set-up 2 ``2_Possible``/``2_Impossible``.
Its ``condition`` follows the kind (vanish: permanence, teleport: continuity, wall:
solidity, colour: immutability); ``Difficulty`` and ``Camera`` cycle through IntPhys 2's
values as labels only (the synthetic camera never moves); ``occluder`` is ``Wall`` for wall
scenes, else ``None``; the rows of a scene come in a seeded random order, as in the release.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.errors import SaltError
from salt_vla.eval.intphys_data import HEADER, METADATA_FILE, TYPES, VALUES
from salt_vla.files import atomic_path, write_json_atomic, write_text_atomic

GENERATOR = "salt_vla.eval.intphys_synth"
FORMAT_VERSION = 1
PAIRS_FILE = "pairs.json"
VIDEOS_DIR = "videos"
KINDS: tuple[str, ...] = ("vanish", "teleport", "wall", "colour")
LAYOUTS = ("pairs", "intphys2")
INTPHYS2_MANIFEST = "synth-intphys2.json"
CONDITION_OF_KIND = {"vanish": "permanence", "teleport": "continuity", "wall": "solidity",
                     "colour": "immutability"}

_PAIR_STREAM = 0x1A7F5


class IntPhysSynthError(SaltError, ValueError):
    """Bad intuitive-physics synth config or output directory; the message says the fix."""


@dataclass(frozen=True)
class IntPhysSynthConfig:
    """What determines a set of pairs; saved in ``pairs.json``."""

    pairs: int = 100
    frames: int = 32
    height: int = 96
    width: int = 96
    fps: int = 12
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    crf: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.pairs < 1:
            raise IntPhysSynthError(f"pairs={self.pairs}: need at least 1 pair")
        if self.frames < 8:
            raise IntPhysSynthError(f"frames={self.frames}: need at least 8 frames so the event "
                                    "has frames before and after it")
        for name, v in (("height", self.height), ("width", self.width)):
            if v < 32 or v % 2:
                raise IntPhysSynthError(f"{name}={v}: must be an even number >= 32 (VP9)")
        if self.fps < 1 or self.seed < 0 or not 0 <= self.crf <= 63:
            raise IntPhysSynthError("fps must be >= 1, seed >= 0 and crf in 0..63")
        unknown = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or unknown:
            raise IntPhysSynthError(f"kinds {list(self.kinds)}: choose from {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


@dataclass(frozen=True)
class RenderedPair:
    """Both versions of one scene, uint8 ``[T, H, W, 3]`` each."""

    possible: np.ndarray
    impossible: np.ndarray
    kind: str
    event_frame: int


def pair_id(index: int) -> str:
    return f"{index:06d}"


def _colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    h = rng.uniform() if hue is None else hue % 1.0
    return np.asarray(colorsys.hsv_to_rgb(h, rng.uniform(0.7, 0.95), rng.uniform(0.8, 1.0)),
                      dtype=np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted vertical gradient with a few soft static blobs: structure that never moves."""
    top, bottom = (np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.35),
                                                  rng.uniform(0.3, 0.6)), np.float32)
                   for _ in range(2))
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top + (bottom - top) * t, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(0.08, 0.2) * min(h, w)
        a = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None] * 0.5
        img += a * (_colour(rng) * 0.6 - img)
    return img


def _disc(canvas: np.ndarray, cy: float, cx: float, r: float, colour: np.ndarray) -> None:
    """Anti-aliased shaded ball composited onto ``canvas`` in place."""
    h, w = canvas.shape[:2]
    y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), h)
    x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), w)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    d = np.sqrt(dy * dy + dx * dx)
    alpha = np.clip(r - d + 0.5, 0.0, 1.0)[..., None]
    # Light from the upper left: the ball reads as a 3-D object, not a flat blob.
    light = 1.0 - 0.35 * np.clip((dx + dy) / (2 * r) + 0.5, 0.0, 1.0)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += alpha * (colour * light - region)


def _wall(canvas: np.ndarray, x_left: float, x_right: float, colour: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    xs = np.arange(w, dtype=np.float32) + 0.5
    cover = np.clip(np.minimum(xs - x_left, x_right - xs) + 0.5, 0.0, 1.0)[None, :, None]
    bricks = 0.85 + 0.15 * ((np.arange(h)[:, None, None] // 6) % 2)  # mortar lines: a texture
    canvas += cover * (colour * bricks - canvas)


def _event_frame(rng: np.random.Generator, t: int) -> int:
    return int(rng.integers(round(0.4 * (t - 1)), round(0.6 * (t - 1)) + 1))


def render_pair(cfg: IntPhysSynthConfig, index: int) -> RenderedPair:
    """Render pair ``index``: a pure function of ``(cfg, index)`` (see the module doc)."""
    rng = np.random.default_rng([_PAIR_STREAM, cfg.seed, index])
    kind = cfg.kinds[index % len(cfg.kinds)]
    t, h, w = cfg.frames, cfg.height, cfg.width
    bg = _background(rng, h, w)
    r = rng.uniform(0.09, 0.13) * min(h, w)
    ball = _colour(rng)
    # Horizontal flight over 50-70% of the width, on a parabolic arc (a thrown ball).
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    # At the smallest sizes a wide flight would not fit beside the ball: shorten it (only
    # then, so every draw and every larger frame stays as it was).
    travel = min(rng.uniform(0.5, 0.7) * w, w - 2 * (r + 1))
    start = rng.uniform(r + 1, max(r + 1, w - r - 1 - travel))
    x = np.linspace(0.0, travel, t) + start
    if sign < 0:
        x = (w - x)
    vx = sign * travel / (t - 1)
    u = np.linspace(0.0, 1.0, t)
    apex, height = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25) * h
    arc = height * ((u - apex) / max(apex, 1 - apex)) ** 2
    y = arc + rng.uniform(r + 1, h - r - 1 - arc.max())
    event = _event_frame(rng, t)
    # A distractor drifting behind the ball, the same in both versions.
    dis_r = rng.uniform(0.05, 0.08) * min(h, w)
    dis_colour = _colour(rng) * 0.8
    dy0, dx0 = rng.uniform(dis_r, h - dis_r), rng.uniform(dis_r, w - dis_r)
    dvy, dvx = rng.uniform(-0.3, 0.3, size=2) * min(h, w) / t
    dis_y = np.clip(dy0 + dvy * np.arange(t), dis_r, h - dis_r)
    dis_x = np.clip(dx0 + dvx * np.arange(t), dis_r, w - dis_r)

    pos_x, imp_x = x.copy(), x.copy()
    pos_y, imp_y = y.copy(), y.copy()
    imp_ball = [ball] * t
    imp_visible = [True] * t
    wall = None
    if kind == "vanish":
        imp_visible = [i < event for i in range(t)]
    elif kind == "teleport":
        imp_x, imp_y = _teleport(rng, x, y, event, r, h, w)
    elif kind == "colour":
        other = _colour(rng, hue=colorsys.rgb_to_hsv(*ball)[0] + rng.uniform(0.33, 0.67))
        imp_ball = [ball if i < event else other for i in range(t)]
    elif kind == "wall":
        # The leading edge reaches the wall's face half a frame before the event frame, so
        # frames < event never touch it and frame `event` is the first to differ.
        face = x[0] + vx * (event - 0.5) + sign * r
        thick = max(3.0, 0.06 * w)
        wall = (face, face + thick) if sign > 0 else (face - thick, face)
        contact = face - sign * r  # ball centre at contact
        after = np.arange(t) >= event
        pos_x = np.where(after, 2 * contact - x, x)
    wall_colour = np.asarray([0.55, 0.42, 0.35], np.float32)

    def draw(xs: np.ndarray, ys: np.ndarray, colours: list, visible: list) -> np.ndarray:
        out = np.empty((t, h, w, 3), np.uint8)
        for i in range(t):
            canvas = bg.copy()
            _disc(canvas, float(dis_y[i]), float(dis_x[i]), dis_r, dis_colour)
            if wall is not None:
                _wall(canvas, wall[0], wall[1], wall_colour)
            if visible[i]:
                _disc(canvas, float(ys[i]), float(xs[i]), r, colours[i])
            out[i] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out

    possible = draw(pos_x, pos_y, [ball] * t, [True] * t)
    impossible = draw(imp_x, imp_y, imp_ball, imp_visible)
    return RenderedPair(possible, impossible, kind, event)


def _teleport(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, event: int, r: float,
              h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions jumped by ~1/3 of the frame from ``event`` on, staying inside the frame."""
    jumps = [(0.0, 0.35 * h), (0.0, -0.35 * h), (0.35 * w, 0.0), (-0.35 * w, 0.0)]
    order = rng.permutation(len(jumps))
    after = np.arange(len(x)) >= event
    for k in order:
        dx, dy = jumps[k]
        nx, ny = x + dx * after, y + dy * after
        if (nx.min() >= r and nx.max() <= w - r and ny.min() >= r and ny.max() <= h - r):
            return nx, ny
    dx, dy = jumps[order[0]]  # no jump fits entirely: take one and keep the ball on screen
    return np.clip(x + dx * after, r, w - r), np.clip(y + dy * after, r, h - r)


# --- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntPhysSynthSummary:
    root: Path
    pairs: int
    by_kind: dict[str, int]  # pairs per kind
    seconds: float
    workers: int
    scenes: int = 0  # IntPhys 2 layout: scenes of two pairs each


def _encode(path: Path, frames: np.ndarray, cfg: IntPhysSynthConfig, what: str) -> None:
    from salt_vla.data.video import write_mp4, write_webm

    writer = write_mp4 if path.suffix == ".mp4" else write_webm
    try:
        with atomic_path(path) as tmp:
            writer(tmp, frames, fps=cfg.fps, crf=cfg.crf)
    except Exception as e:  # name the file: a bare encoder error says nothing about which
        raise IntPhysSynthError(f"{what} ({path}) failed to encode: {e!r}") from None


def _write_one(job: tuple[IntPhysSynthConfig, int, str]) -> dict[str, Any]:
    cfg, index, videos = job
    pair = render_pair(cfg, index)
    pid = pair_id(index)
    entry = {"id": pid, "kind": pair.kind, "event_frame": pair.event_frame}
    for which, frames in (("possible", pair.possible), ("impossible", pair.impossible)):
        path = Path(videos) / f"{pid}-{which}.webm"
        _encode(path, frames, cfg, f"pair {pid}")
        entry[which] = f"{VIDEOS_DIR}/{path.name}"
    return entry


def _check_out(out: Path, force: bool, manifest: str = PAIRS_FILE) -> None:
    if out.exists() and not out.is_dir():
        raise IntPhysSynthError(f"{out} exists and is not a directory; choose another path")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / manifest).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != GENERATOR and not force:
        raise IntPhysSynthError(
            f"{out} is not empty and is not a previous `salt data synth --intphys` output (no "
            f"{manifest} from it); refusing to write there. Choose a new or empty directory, "
            "or pass --force: files with the generated names are overwritten, nothing else is "
            "deleted."
        )


def _run_jobs(fn: Callable[[Any], Any], jobs: list[Any], workers: int,
              progress: Callable[[int, int], None] | None) -> tuple[list[Any], int]:
    """``fn`` over ``jobs`` in order, in a spawned pool when ``workers`` > 1."""
    workers = max(1, min(int(workers), len(jobs)))
    results: list[Any] = []

    def collect(it: Iterable[Any]) -> None:
        for done, res in enumerate(it, 1):
            results.append(res)
            if progress:
                progress(done, len(jobs))

    if workers == 1:
        collect(map(fn, jobs))
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            collect(pool.imap(fn, jobs))
    return results, workers


def generate_intphys(
    out: Path | str,
    cfg: IntPhysSynthConfig,
    *,
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IntPhysSynthSummary:
    """Render and write ``cfg.pairs`` pairs under ``out`` in the layout of the module doc.

    ``pairs.json`` is written last (``"complete": true``), so a directory with a complete
    ``pairs.json`` holds every video it lists. ``workers`` > 1 encodes in a spawned process
    pool. ``progress(done, total)`` after each pair.
    """
    out = Path(out)
    _check_out(out, force)
    videos = out / VIDEOS_DIR
    videos.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(cfg, i, str(videos)) for i in range(cfg.pairs)]
    entries, workers = _run_jobs(_write_one, jobs, workers, progress)
    manifest = {
        "generator": GENERATOR, "format_version": FORMAT_VERSION, "complete": True,
        "config": cfg.to_dict(), "frames": cfg.frames, "fps": cfg.fps, "height": cfg.height,
        "width": cfg.width, "pairs": entries,
    }
    write_json_atomic(out / PAIRS_FILE, manifest)
    by_kind = {k: sum(e["kind"] == k for e in entries) for k in cfg.kinds}
    return IntPhysSynthSummary(out, len(entries), by_kind, time.perf_counter() - t0, workers)


# --- the IntPhys 2 layout -------------------------------------------------------------------


def intphys2_name(cfg: IntPhysSynthConfig, scene: int, type_: str) -> str:
    """A 64-hex-digit video name, as IntPhys 2's are, determined by seed, scene and type."""
    return hashlib.sha256(f"{GENERATOR}:{cfg.seed}:{scene}:{type_}".encode()).hexdigest()


def intphys2_rows(cfg: IntPhysSynthConfig, scene: int) -> list[dict[str, str]]:
    """The four metadata rows of scene ``scene`` (module doc), in the seeded row order."""
    kind = cfg.kinds[scene % len(cfg.kinds)]
    rows = [{
        "SceneIndex": str(scene), "name": intphys2_name(cfg, scene, t),
        "file_name": f"Videos/{intphys2_name(cfg, scene, t)}.mp4",
        "game_name": f"SynthBall{kind.capitalize()}", "condition": CONDITION_OF_KIND[kind],
        "env": "SynthLevel_0", "type": t, "occluder": "Wall" if kind == "wall" else "None",
        "Difficulty": VALUES["Difficulty"][scene % 3],
        "Camera": VALUES["Camera"][(scene // 2) % 2],
    } for t in TYPES]
    order = np.random.default_rng([_PAIR_STREAM, cfg.seed, scene, 2]).permutation(len(rows))
    return [rows[i] for i in order]


def _write_scene(job: tuple[IntPhysSynthConfig, int, str]) -> list[dict[str, str]]:
    cfg, scene, split_dir = job
    rows = intphys2_rows(cfg, scene)
    kind_cfg = replace(cfg, kinds=(cfg.kinds[scene % len(cfg.kinds)],))
    rendered = {n: render_pair(kind_cfg, 2 * scene + i) for i, n in enumerate(("1", "2"))}
    for row in rows:
        setup, outcome = row["type"].split("_")
        frames = getattr(rendered[setup], outcome.lower())
        _encode(Path(split_dir) / row["file_name"], frames, cfg, f"scene {scene} {row['type']}")
    return rows


def generate_intphys2(
    out: Path | str,
    cfg: IntPhysSynthConfig,
    *,
    split: str = "Main",
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IntPhysSynthSummary:
    """Write ``cfg.pairs // 2`` scenes in IntPhys 2's layout under ``out`` (module doc).

    ``metadata.csv`` is written after every video it names, then the manifest is marked
    complete. ``progress(done, total)`` after each scene. The summary counts scenes.
    """
    out = Path(out)
    scenes = cfg.pairs // 2
    if scenes < 1:
        raise IntPhysSynthError(f"pairs={cfg.pairs}: the IntPhys 2 layout needs 2 pairs a "
                                "scene (--videos 4 or more)")
    _check_out(out, force, INTPHYS2_MANIFEST)
    split_dir = out / split
    (split_dir / "Videos").mkdir(parents=True, exist_ok=True)
    manifest = {"generator": GENERATOR, "layout": "intphys2", "format_version": FORMAT_VERSION,
                "complete": False, "split": split, "scenes": scenes, "config": cfg.to_dict()}
    write_json_atomic(out / INTPHYS2_MANIFEST, manifest)
    t0 = time.perf_counter()
    jobs = [(cfg, s, str(split_dir)) for s in range(scenes)]
    per_scene, workers = _run_jobs(_write_scene, jobs, workers, progress)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HEADER, lineterminator="\n")
    writer.writeheader()
    for rows in per_scene:
        writer.writerows(rows)
    write_text_atomic(split_dir / METADATA_FILE, text.getvalue())
    write_json_atomic(out / INTPHYS2_MANIFEST, {**manifest, "complete": True})
    kinds = [cfg.kinds[sc % len(cfg.kinds)] for sc in range(scenes)]
    by_kind = {k: 2 * kinds.count(k) for k in cfg.kinds if k in kinds}
    return IntPhysSynthSummary(out, 2 * scenes, by_kind, time.perf_counter() - t0, workers,
                               scenes)

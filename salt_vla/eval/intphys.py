"""Intuitive-physics "surprise": does the predictor find impossible videos harder to predict?

As in V-JEPA's intuitive-physics study and IntPhys 2's prediction-model evaluation
(violation of expectation): slide windows of the model's clip length over a video; in each
window the student encodes the first C tubelet time steps (the context) and the predictor
predicts the target-encoder tokens of every later time step; the prediction error is the
surprise. Scores (pairwise relative accuracy, quadruplet accuracy) are
:mod:`salt_vla.eval.intphys_scores`'s; what is scored (pairs, quadruplets, the two layouts on
disk) is :mod:`salt_vla.eval.intphys_data`'s.

Units and definitions, exactly:

* A window is ``T`` frames (the run's clip length) taken ``frame_step`` source frames apart,
  starting every ``stride`` source frames, the last window flush with the video's end (a
  video shorter than one window repeats its last frame). ``frame_step`` defaults to the
  run's temporal density: its view's ``frame_step`` for stride sampling, else
  ``max(1, video frames // T)`` (what segment sampling of a video this long gives).
  ``stride`` defaults to one source frame.
* Context ``C`` is in tubelet time steps (token-grid rows), ``1 <= C < t``; it covers the
  window's first ``C * tubelet`` frames, i.e. ``C * tubelet * frame_step`` source frames.
* ``e[w, k]``: for window ``w`` and predicted time step ``k`` (``C <= k < t``), the error
  between predicted and target tokens, averaged over the step's ``h * w`` tokens and channels:
  mean absolute error (``l1``, V-JEPA's choice) or mean squared error (``l2``).
* Surprise of a video: ``mean`` = the average of all ``e[w, k]`` (equal to the mean over
  windows of each window's mean error); ``max`` = the largest ``e[w, k]`` (max over time).

Videos are read by :func:`salt_vla.data.video_chunks.iter_windows`: only the frames the
windows use are decoded, each is cropped and resized to the run's view as soon as it is
decoded, and it is dropped once no pending window needs it, so a long full-HD video never
sits in memory at full size (BENCHMARKS.md).

Targets: the run's frozen teacher, i.e. the same targets the predictor was trained on. In
SALT the target encoder is the static teacher (V-JEPA's is the student's EMA, so it uses that
for surprise); the predictor has never been asked to predict the student's own features, so
errors against those would measure a mismatch of spaces, not surprise. The teacher is rebuilt
from the source its cache recorded and must have the recorded sha256.

The chance control (``random_init``): the run's architecture (student and predictor) at
random initialisation, against the same teacher, on the same videos: what the scores are
worth without any training.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.data.video_chunks import iter_windows, scan_video
from salt_vla.data.view import ViewPlan, plan_view, render_view
from salt_vla.errors import SaltError
from salt_vla.eval.intphys_data import Benchmark, SceneFilter, Video, load_benchmark
from salt_vla.eval.intphys_scores import (
    best_contexts,
    format_scores,
    reported_context,
    score_contexts,
    surprise_scores,
)
from salt_vla.models.pixels import frames_to_input

ERRORS = ("l1", "l2")
FORMAT_VERSION = 2  # 1: pairs only, no per-video series


class IntPhysError(SaltError, ValueError):
    """Bad context, setting or model; the message says the fix."""


# --- windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurpriseConfig:
    """How surprise is measured (see the module doc for units)."""

    contexts: tuple[int, ...]
    frame_step: int = 0  # 0: the run's temporal density
    stride: int = 1
    error: str = "l1"
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "contexts", tuple(int(c) for c in self.contexts))
        if not self.contexts:
            raise IntPhysError("give at least one context length")
        if self.frame_step < 0 or self.stride < 1 or self.batch_size < 1:
            raise IntPhysError("frame_step must be >= 0 (0: auto), stride and batch_size >= 1")
        if self.error not in ERRORS:
            raise IntPhysError(f"error {self.error!r}: choose one of {', '.join(ERRORS)}")


def default_contexts(t: int) -> tuple[int, ...]:
    """A quarter, half and three quarters of the ``t`` time steps (e.g. 2, 4, 6 for 8)."""
    return tuple(sorted({c for c in (t // 4, t // 2, (3 * t) // 4) if 1 <= c < t})) or (1,)


def check_contexts(contexts: Sequence[int], t: int) -> None:
    bad = [c for c in contexts if not 1 <= c < t]
    if bad:
        raise IntPhysError(f"context {bad} out of range: the model's clip has {t} tubelet time "
                           f"steps, so contexts must be in 1..{t - 1}")


def window_starts(num_frames: int, span: int, stride: int) -> list[int]:
    """Starts of windows ``span`` frames long every ``stride`` frames; the last one ends at the
    video's last frame. A video shorter than ``span`` has one window at 0."""
    last = num_frames - span
    if last <= 0:
        return [0]
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_indices(start: int, num_frames: int, length: int, step: int) -> list[int]:
    """Source frames of one window (the last frame repeats past the video's end)."""
    return [min(start + i * step, num_frames - 1) for i in range(length)]


def auto_frame_step(view: Any, video_frames: int) -> int:
    """The run's temporal density on a video of ``video_frames`` frames (module doc)."""
    if view.sampling == "stride":
        return view.frame_step
    return max(1, video_frames // view.num_frames)


# --- the model -------------------------------------------------------------------------------


class SurpriseModel:
    """A run's student + predictor with its frozen teacher, producing ``e[w, k]``."""

    def __init__(self, student: Any, predictor: Any, teacher: Any, error: str = "l1") -> None:
        if student.grid != teacher.grid:
            raise IntPhysError(f"student grid {student.grid} and teacher grid {teacher.grid} "
                               "differ; this teacher is not the run's")
        self.student, self.predictor, self.teacher = student, predictor, teacher
        self.grid = student.grid
        self.error = error
        self.device = next(student.parameters()).device

    def step_errors(
        self, frames: torch.Tensor, contexts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """uint8 clips ``[B, T, H, W, 3]`` -> per context C, errors ``[B, t - C]`` (float64)."""
        g = self.grid
        x = frames_to_input(frames.to(self.device))
        targets = self.teacher.targets(x)  # [B, N, D] float32, no grad
        b = x.shape[0]
        on_cuda = self.device.type == "cuda"
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda
                    else contextlib.nullcontext())
        out: dict[int, np.ndarray] = {}
        for c in contexts:
            split = c * g.per_frame  # time-major: the first C steps are the first C*h*w tokens
            ctx = torch.arange(split, device=self.device).expand(b, -1)
            tgt = torch.arange(split, g.num_tokens, device=self.device).expand(b, -1)
            with torch.no_grad(), autocast:
                pred = self.predictor(self.student(x, ctx), ctx, tgt)
            diff = pred.float() - targets[:, split:]
            err = diff.abs() if self.error == "l1" else diff.square()
            per_step = err.reshape(b, g.t - c, g.per_frame * err.shape[-1]).mean(-1)
            out[c] = per_step.double().cpu().numpy()
        return out


# --- one video -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoErrors:
    """``errors[C]``: ``e[w, k]`` as ``[windows, t - C]`` float64; where the windows were."""

    errors: dict[int, np.ndarray]
    starts: list[int]  # first source frame of each window
    frame_step: int
    frames: int  # frames in the file
    fps: float


def view_transform(view: Any, video_id: str, height: int, width: int
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """Frame ``[height, width, 3]`` -> ``[S, S, 3]``: the view's resize and centre crop
    (its spatial part, without random crops or flips), exactly as :func:`render_view`."""
    spatial = replace(view, crop_scale=(1.0, 1.0), hflip=False, n_views=1)
    box = plan_view(spatial, video_id, 0, 1, height, width).box
    plan = ViewPlan((0,), box, False, (height, width))
    return lambda frame: render_view(frame[None], plan, spatial)[0]


def video_errors(model: SurpriseModel, path: Path, view: Any, cfg: SurpriseConfig,
                 num_frames: int) -> VideoErrors:
    """Errors ``e[w, k]`` of the video at ``path`` (module doc), decoded window by window."""
    table = scan_video(path)
    step = cfg.frame_step or auto_frame_step(view, table.num_frames)
    span = (num_frames - 1) * step + 1
    starts = window_starts(table.num_frames, span, cfg.stride)
    windows = [window_indices(s, table.num_frames, num_frames, step) for s in starts]
    transform = view_transform(view, path.stem, table.height, table.width)
    parts: dict[int, list[np.ndarray]] = {c: [] for c in cfg.contexts}
    for clips in iter_windows(path, windows, transform, cfg.batch_size, table=table):
        for c, e in model.step_errors(torch.from_numpy(clips), cfg.contexts).items():
            parts[c].append(e)
    return VideoErrors({c: np.concatenate(v) for c, v in parts.items()}, starts, step,
                       table.num_frames, table.fps)


def compact(errors: np.ndarray) -> list[list[float]]:
    """``e[w, k]`` as nested lists of 7-significant-digit floats (what the record stores;
    scores are computed from these, so a stored record rescored gives the same numbers)."""
    return [[float(f"{x:.7g}") for x in row] for row in np.asarray(errors).tolist()]


def score_videos(
    model: SurpriseModel, bench: Benchmark, view: Any, cfg: SurpriseConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per video of ``bench``: where it is, its windows, and per context its
    error series ``e[w, k]`` with their mean and max (the surprise)."""
    check_contexts(cfg.contexts, model.grid.t)
    num_frames = model.grid.t * model.student.cfg.tubelet
    out = []
    for done, video in enumerate(bench.videos, 1):
        res = video_errors(model, video.path, view, cfg, num_frames)
        surprise = {}
        for c, e in res.errors.items():
            series = compact(e)
            surprise[str(c)] = {**surprise_scores(np.asarray(series)), "errors": series}
        out.append({**_video_fields(video, bench.root), "frames": res.frames, "fps": res.fps,
                    "frame_step": res.frame_step, "window_starts": res.starts,
                    "surprise": surprise})
        if progress:
            progress(done, len(bench.videos))
    return out


def _video_fields(video: Video, root: Path) -> dict[str, Any]:
    try:
        path = str(video.path.relative_to(root))
    except ValueError:
        path = str(video.path)
    return {"id": video.id, "path": path, "scene": video.scene, "type": video.type,
            "outcome": video.outcome, "tags": video.tags}


# --- the model -------------------------------------------------------------------------------


def load_surprise_model(
    run_dir: Path | str, teacher: str | None = None, device: str | torch.device = "cpu",
    error: str = "l1", random_init: int | None = None,
) -> tuple[SurpriseModel, Any, Any]:
    """The run's student, predictor and teacher as a :class:`SurpriseModel`, plus the
    ``TrainedRun`` and its ``TeacherSource`` (``teacher`` overrides the recorded source).

    ``random_init`` (a seed): the run's student and predictor architectures at random
    initialisation instead of its weights (the chance control), with the same teacher.
    """
    from salt_vla.eval.trained_run import check_teacher, load_run, run_teacher_source
    from salt_vla.models.predictor import Predictor
    from salt_vla.models.student import Student
    from salt_vla.models.teacher import load_teacher

    run = load_run(run_dir, device)
    student, predictor = run.student, run.predictor
    if random_init is not None:
        # A private generator: the control's weights depend on the seed only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_init)
            student, predictor = Student(student.cfg), Predictor(predictor.cfg)
        for module in (student, predictor):
            module.to(device).eval().requires_grad_(False)
    source = run_teacher_source(run, teacher)
    try:
        net = load_teacher(source.source, source.spec, device=device)
    except (ValueError, OSError) as e:
        raise IntPhysError(f"cannot load the run's teacher {source.source} (per "
                           f"{source.where}): {e}; pass --teacher PATH if it moved") from e
    check_teacher(net, source)
    return SurpriseModel(student, predictor, net, error), run, source


# --- the workflow: `salt eval intphys` and the demo ------------------------------------------


def run_intphys(run_dir: Path | str, data: Path | str, contexts: Sequence[int] | None = None,
                *, format: str = "auto", split: str = "Main",
                filters: SceneFilter | None = None, report_context: int | None = None,
                frame_step: int = 0, stride: int = 1, error: str = "l1",
                teacher: str | None = None, random_init: int | None = None,
                batch_size: int = 8, limit: int = 0, device: str = "auto",
                out: Path | str | None = None,
                echo: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    """Score every video under ``data`` with the run's student, predictor and teacher (or,
    with ``random_init``, the random-init control); write the result record to ``out``
    (default ``RUN_DIR/intphys.json``, the control's ``RUN_DIR/intphys-control.json``) and
    return ``(record, path)``.

    ``format``: ``pairs`` (``data/pairs.json``), ``intphys2`` (``data/<split>/metadata.csv``)
    or ``auto``; ``filters`` select IntPhys 2 scenes; ``limit`` keeps the first N scenes
    (pairs). ``contexts`` None: :func:`default_contexts` of the run's grid;
    ``report_context`` None: the middle one (:func:`reported_context`).
    """
    from salt_vla.distributed import pick_device
    from salt_vla.files import write_text_atomic
    from salt_vla.runs.rundir import INTPHYS_CONTROL_NAME, INTPHYS_NAME

    t0 = time.perf_counter()
    dev = pick_device(device)
    bench = load_benchmark(data, format, split, filters).first_scenes(limit)
    model, trained, source = load_surprise_model(run_dir, teacher, dev, error, random_init)
    cfg = SurpriseConfig(contexts=tuple(contexts) if contexts else default_contexts(model.grid.t),
                         frame_step=frame_step, stride=stride, error=error,
                         batch_size=batch_size)
    check_contexts(cfg.contexts, model.grid.t)
    reported, rule = reported_context(cfg.contexts, report_context)
    default_name = INTPHYS_NAME if random_init is None else INTPHYS_CONTROL_NAME
    path = Path(out or trained.run_dir / default_name).expanduser()
    weights = ({"kind": "trained"} if random_init is None else
               {"kind": "random-init", "seed": random_init,
                "note": "the run's architecture at random init, same teacher: the chance "
                        "control"})
    _echo_setup(echo, trained, source, model, cfg, bench, weights, dev, path)
    every = max(1, len(bench.videos) // 10)

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            echo(f"  {done}/{total} videos scored")

    videos = score_videos(model, bench, trained.view, cfg, progress)
    surprise = {v["id"]: v["surprise"] for v in videos}
    pairs = [{"id": p.id, "scene": p.scene, "possible": p.possible,
              "impossible": p.impossible, "tags": p.tags} for p in bench.pairs]
    quads = [{"scene": q.scene, "possible": list(q.possible), "impossible": list(q.impossible),
              "tags": q.tags} for q in bench.quadruplets]
    scores = score_contexts(surprise, pairs, quads, cfg.contexts, bench.groups)
    for line in format_scores(scores, bench.groups, reported, rule):
        echo(line)
    single = sum(len(v["window_starts"]) == 1 for v in videos)
    if single:
        echo(f"note: {single} of {len(videos)} videos gave one window only (frame step x clip "
             "frames covers them); a smaller --frame-step gives more windows over time")
    record = {
        "format_version": FORMAT_VERSION,
        "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "step": trained.step, "weights": weights,
        "data": {**bench.describe(), "groups": list(bench.groups)},
        "teacher": {"source": source.source, "arch": source.spec.arch,
                    "sha256": model.teacher.sha256, "recorded_by": source.where},
        "config": {"contexts": list(cfg.contexts), "frame_step": frame_step, "stride": stride,
                   "error": error, "units": "contexts in tubelet time steps; frame_step and "
                   "stride in source frames (frame_step 0: the run's temporal density)"},
        "grid": list(model.grid.as_tuple()), "tubelet": trained.config.tubelet,
        "reported": {"context": reported, "rule": rule},
        "scores": scores,
        "best_context_optimistic": best_contexts(scores, bench.groups),
        "device": str(dev), "wall_seconds": time.perf_counter() - t0,
        "pairs": pairs, "quadruplets": quads, "videos": videos,
    }
    write_text_atomic(path, record_text(record))
    echo(f"wrote {path}")
    return record, path


def _echo_setup(echo: Callable[[str], None], trained: Any, source: Any, model: SurpriseModel,
                cfg: SurpriseConfig, bench: Benchmark, weights: dict[str, Any],
                dev: torch.device, path: Path) -> None:
    g = model.grid
    what = ("trained weights" if weights["kind"] == "trained" else
            f"RANDOM-INIT control (seed {weights['seed']}): the run's architecture, untrained")
    echo(f"model: {trained.checkpoint} step {trained.step}, {what}; grid {g.as_tuple()} "
         f"(t x h x w), view {trained.config.view}")
    echo(f"teacher: {source.source} ({source.spec.arch}, per {source.where})")
    echo(f"contexts (time steps): {', '.join(map(str, cfg.contexts))}; error {cfg.error}; "
         f"frame step {cfg.frame_step or 'auto'}; stride {cfg.stride}; device {dev}")
    split = f", split {bench.split}" if bench.split else ""
    filters = f", filters {bench.filters}" if bench.filters else ""
    counts = (f"{len(bench.scenes)} scenes, {len(bench.videos)} videos, {len(bench.pairs)} "
              f"pairs, {len(bench.quadruplets)} quadruplets" if bench.format == "intphys2" else
              f"{len(bench.pairs)} pairs, {len(bench.videos)} videos")
    echo(f"data: {bench.source} ({bench.format}{split}{filters}): {counts}")
    if bench.filtered_out:
        echo(f"  {bench.filtered_out} complete scenes left out by the filters")
    if bench.problems:
        echo(f"  NOT SCORED: {len(bench.problems)} scene(s) with missing or bad rows/files "
             "(listed in the result under data.not_scored):")
        for p in bench.problems[:20]:
            echo(f"    scene {p.scene}: {p.reason}")
        if len(bench.problems) > 20:
            echo(f"    ... and {len(bench.problems) - 20} more")
    echo(f"results: {path}")


def record_text(record: dict[str, Any]) -> str:
    """The record as JSON: indented, except one line per video (its error series are long)."""
    rest = {k: v for k, v in record.items() if k != "videos"}
    head = json.dumps(rest, indent=1)[:-2]  # without the closing "\n}"
    videos = ",\n  ".join(json.dumps(v, separators=(",", ":")) for v in record["videos"])
    return f'{head},\n "videos": [\n  {videos}\n ]\n}}\n'

"""Intuitive-physics "surprise": does the predictor find impossible videos harder to predict?

As in V-JEPA's intuitive-physics study (violation of expectation): slide windows of the model's
clip length over a video; in each window the student encodes the first C tubelet time steps
(the context) and the predictor predicts the target-encoder tokens of every later time step;
the prediction error is the surprise. A pair is scored correct when the impossible video is
more surprising than its possible twin; the relative accuracy is the fraction of such pairs
(strictly more: a tie counts as wrong and is reported).

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

Targets: the run's frozen teacher, i.e. the same targets the predictor was trained on. In
SALT the target encoder is the static teacher (V-JEPA's is the student's EMA, so it uses that
for surprise); the predictor has never been asked to predict the student's own features, so
errors against those would measure a mismatch of spaces, not surprise. The teacher is rebuilt
from the source its cache recorded and must have the recorded sha256.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.errors import SaltError
from salt_vla.models.pixels import frames_to_input

ERRORS = ("l1", "l2")
PAIRS_FILE = "pairs.json"


class IntPhysError(SaltError, ValueError):
    """Bad pairs file, context or setting; the message says the fix."""


# --- scoring (pure) --------------------------------------------------------------------------


def surprise_scores(errors: np.ndarray) -> dict[str, float]:
    """``{"mean", "max"}`` surprise of one video from its ``e[w, k]`` errors (any shape)."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        raise IntPhysError("no prediction errors to score (no window predicted any step)")
    return {"mean": float(e.mean()), "max": float(e.max())}


def pair_accuracy(possible: Sequence[float], impossible: Sequence[float]) -> dict[str, Any]:
    """Relative accuracy: the fraction of pairs whose impossible video is strictly more
    surprising; ties (equal surprise) count as wrong and are counted."""
    p = np.asarray(possible, dtype=np.float64)
    q = np.asarray(impossible, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise IntPhysError(f"need two equal-length 1-D score lists, got {p.shape} and {q.shape}")
    n = len(p)
    correct = int((q > p).sum())
    return {"accuracy": correct / n if n else float("nan"), "correct": correct,
            "ties": int((q == p).sum()), "pairs": n}


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


def video_errors(
    model: SurpriseModel, frames: np.ndarray, cfg: SurpriseConfig, num_frames: int,
    frame_step: int,
) -> dict[int, np.ndarray]:
    """Errors ``e[w, k]`` (per context: ``[windows, t - C]``) of one video's frames
    ``[L, S, S, 3]`` (already at the model's size)."""
    span = (num_frames - 1) * frame_step + 1
    clips = np.stack([
        frames[window_indices(s, len(frames), num_frames, frame_step)]
        for s in window_starts(len(frames), span, cfg.stride)
    ])
    parts: dict[int, list[np.ndarray]] = {c: [] for c in cfg.contexts}
    for i in range(0, len(clips), cfg.batch_size):
        errs = model.step_errors(torch.from_numpy(clips[i:i + cfg.batch_size]), cfg.contexts)
        for c, e in errs.items():
            parts[c].append(e)
    return {c: np.concatenate(v) for c, v in parts.items()}


# --- pairs on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairEntry:
    """One matched pair of ``pairs.json`` (paths resolved against the dataset root)."""

    id: str
    kind: str
    possible: Path
    impossible: Path
    event_frame: int | None


def load_pairs(root: Path | str) -> list[PairEntry]:
    """Read ``ROOT/pairs.json`` (layout: ``salt_vla/eval/intphys_synth.py``, docs/intphys.md)."""
    root = Path(root)
    path = root / PAIRS_FILE
    if not path.is_file():
        raise IntPhysError(
            f"no {PAIRS_FILE} in {root}: make a synthetic set with `salt data synth --intphys "
            f"{root}`, or convert a benchmark to that layout (docs/intphys.md)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntPhysError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise IntPhysError(f"{path}: expected an object with a 'pairs' list")
    if data.get("complete") is False:
        raise IntPhysError(f"{path} is marked incomplete; re-run the generator")
    pairs = []
    for i, p in enumerate(data["pairs"]):
        try:
            entry = PairEntry(str(p["id"]), str(p.get("kind", "")), root / p["possible"],
                              root / p["impossible"], p.get("event_frame"))
        except (KeyError, TypeError):
            raise IntPhysError(f"{path}: pair {i} needs 'id', 'possible' and 'impossible' "
                               f"(paths relative to {root}); got {p!r}") from None
        for f in (entry.possible, entry.impossible):
            if not f.is_file():
                raise IntPhysError(f"{path}: pair {entry.id} lists {f}, which does not exist")
        pairs.append(entry)
    if not pairs:
        raise IntPhysError(f"{path} lists no pairs")
    return pairs


def load_video(path: Path, view: Any) -> np.ndarray:
    """Every frame of ``path`` at the view's size and centre crop: uint8 ``[L, S, S, 3]``."""
    from salt_vla.data.video import decode_frames, probe_video
    from salt_vla.data.view import ViewPlan, plan_view, render_view

    info = probe_video(path)
    frames = decode_frames(path, range(info.num_frames))
    # Spatial part of the view only, without random crops or flips: every frame in order.
    spatial = replace(view, crop_scale=(1.0, 1.0), hflip=False, n_views=1)
    box = plan_view(spatial, path.stem, 0, info.num_frames, info.height, info.width).box
    plan = ViewPlan(tuple(range(info.num_frames)), box, False, (info.height, info.width))
    return render_view(frames, plan, spatial)


def evaluate_pairs(
    model: SurpriseModel,
    pairs: Sequence[PairEntry],
    view: Any,
    cfg: SurpriseConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Surprise of every pair's two videos and the relative accuracies (module doc).

    Returns ``{"contexts": {C: {"mean": acc, "max": acc, "by_kind": {...}}}, "pairs": [...]}``
    where each accuracy is :func:`pair_accuracy`'s dict.
    """
    check_contexts(cfg.contexts, model.grid.t)
    num_frames = model.grid.t * model.student.cfg.tubelet
    records = []
    for done, pair in enumerate(pairs, 1):
        rec: dict[str, Any] = {"id": pair.id, "kind": pair.kind, "event_frame": pair.event_frame}
        for which in ("possible", "impossible"):
            frames = load_video(getattr(pair, which), view)
            step = cfg.frame_step or auto_frame_step(view, len(frames))
            errs = video_errors(model, frames, cfg, num_frames, step)
            rec[which] = {str(c): surprise_scores(e) for c, e in errs.items()}
            rec[f"{which}_windows"] = len(next(iter(errs.values())))
            rec["frame_step"] = step
        records.append(rec)
        if progress:
            progress(done, len(pairs))
    return {"contexts": summarise(records, cfg.contexts), "pairs": records}


def summarise(records: Sequence[dict[str, Any]], contexts: Sequence[int]) -> dict[str, Any]:
    """Relative accuracies per context, per variant (mean/max), overall and per kind."""
    out: dict[str, Any] = {}
    kinds = sorted({r["kind"] for r in records})
    for c in contexts:
        key = str(c)
        entry: dict[str, Any] = {}
        for variant in ("mean", "max"):
            pos = [r["possible"][key][variant] for r in records]
            imp = [r["impossible"][key][variant] for r in records]
            entry[variant] = pair_accuracy(pos, imp)
        entry["by_kind"] = {
            k: {v: pair_accuracy([r["possible"][key][v] for r in records if r["kind"] == k],
                                 [r["impossible"][key][v] for r in records if r["kind"] == k])
                for v in ("mean", "max")}
            for k in kinds
        }
        out[key] = entry
    return out


def load_surprise_model(
    run_dir: Path | str, teacher: str | None = None, device: str | torch.device = "cpu",
    error: str = "l1",
) -> tuple[SurpriseModel, Any, Any]:
    """The run's student, predictor and teacher as a :class:`SurpriseModel`, plus the
    ``TrainedRun`` and its ``TeacherSource`` (``teacher`` overrides the recorded source)."""
    from salt_vla.eval.trained_run import check_teacher, load_run, run_teacher_source
    from salt_vla.models.teacher import load_teacher

    run = load_run(run_dir, device)
    source = run_teacher_source(run, teacher)
    try:
        net = load_teacher(source.source, source.spec, device=device)
    except (ValueError, OSError) as e:
        raise IntPhysError(f"cannot load the run's teacher {source.source} (per "
                           f"{source.where}): {e}; pass --teacher PATH if it moved") from e
    check_teacher(net, source)
    return SurpriseModel(run.student, run.predictor, net, error), run, source


# --- the workflow: `salt eval intphys` and the demo ------------------------------------------


def run_intphys(run_dir: Path | str, data: Path | str, contexts: Sequence[int] | None = None,
                *, frame_step: int = 0, stride: int = 1, error: str = "l1",
                teacher: str | None = None, batch_size: int = 8, limit: int = 0,
                device: str = "auto", out: Path | str | None = None,
                echo: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    """Score every pair under ``data`` (its ``pairs.json``) with the run's student, predictor
    and teacher; write the result record to ``out`` (default ``RUN_DIR/intphys.json``) and
    return ``(record, path)``. ``contexts`` None: :func:`default_contexts` of the run's grid."""
    import time

    from salt_vla.distributed import pick_device
    from salt_vla.files import write_json_atomic
    from salt_vla.runs.rundir import INTPHYS_NAME

    t0 = time.perf_counter()
    dev = pick_device(device)
    pairs = load_pairs(data)
    if limit > 0:
        pairs = pairs[:limit]
    model, trained, source = load_surprise_model(run_dir, teacher, dev, error)
    cfg = SurpriseConfig(contexts=tuple(contexts) if contexts else default_contexts(model.grid.t),
                         frame_step=frame_step, stride=stride, error=error,
                         batch_size=batch_size)
    path = Path(out or trained.run_dir / INTPHYS_NAME).expanduser()
    g = model.grid
    echo(f"model: {trained.checkpoint} step {trained.step}, grid {g.as_tuple()} (t x h x w), "
         f"view {trained.config.view}")
    echo(f"teacher: {source.source} ({source.spec.arch}, per {source.where})")
    echo(f"contexts (time steps): {', '.join(map(str, cfg.contexts))}; error {error}; "
         f"frame step {frame_step or 'auto'}; stride {stride}; device {dev}")
    echo(f"pairs: {len(pairs)}; results: {path}")
    step = max(1, len(pairs) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            echo(f"  {done}/{total} pairs scored")

    res = evaluate_pairs(model, pairs, trained.view, cfg, progress)
    for line in format_accuracies(res):
        echo(line)
    record = {
        "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "step": trained.step, "data": str(Path(data).expanduser().resolve()),
        "teacher": {"source": source.source, "arch": source.spec.arch,
                    "sha256": model.teacher.sha256, "recorded_by": source.where},
        "config": {"contexts": list(cfg.contexts), "frame_step": frame_step, "stride": stride,
                   "error": error, "units": "contexts in tubelet time steps"},
        "grid": list(g.as_tuple()), "tubelet": trained.config.tubelet,
        **res,
        "device": str(dev), "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(path, record)
    echo(f"wrote {path}")
    return record, path


def format_accuracies(res: dict[str, Any]) -> list[str]:
    """The relative-accuracy table of :func:`evaluate_pairs`'s result: one row per context,
    mean/max surprise, overall and per kind of violation."""
    kinds = sorted({p["kind"] for p in res["pairs"]})
    lines = ["relative accuracy (impossible more surprising), mean / max surprise:",
             "  C  " + "  ".join(f"{'all':>11}" if k is None else f"{k:>11}"
                                 for k in [None, *kinds])]
    for c, r in res["contexts"].items():
        cells = [f"{100 * r['mean']['accuracy']:4.0f}/{100 * r['max']['accuracy']:4.0f}%"]
        cells += [f"{100 * r['by_kind'][k]['mean']['accuracy']:4.0f}/"
                  f"{100 * r['by_kind'][k]['max']['accuracy']:4.0f}%" for k in kinds]
        lines.append(f"  {c:>2} " + "  ".join(f"{x:>11}" for x in cells))
    return lines

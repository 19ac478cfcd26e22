"""A trained run, loaded for evaluation: its config, student, predictor and teacher source.

``salt train`` writes ``RUN_DIR/config.json`` (``{"config": TrainConfig dict, "data": {...},
...}``) and ``RUN_DIR/ckpt.pt`` (``student``, ``predictor``, ``config``, ``step``, ...; see
``salt_vla/trainer/checkpoint.py``). The checkpoint's own ``config`` is authoritative for the
networks (it is what the weights were trained with); ``config.json`` adds where the targets
came from, which is how we find the frozen teacher again: for cached targets its ``data.cache``
names the store, whose ``cache.json`` records ``teacher_source`` (checkpoint path or
``random:ARCH:SEED``) and the teacher's arch, layer, target norm and sha256.

This module only reads those files; it owns none of their formats: the run directory's are
:mod:`salt_vla.runs.rundir`'s, the store's :mod:`salt_vla.cache.format`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salt_vla.cache.format import MANIFEST
from salt_vla.models.predictor import Predictor
from salt_vla.models.student import Student
from salt_vla.models.teacher import TeacherSpec
from salt_vla.runs.rundir import CONFIG_NAME, RunDirError, read_run_config, resolve_run_path


class RunError(RunDirError):
    """A run directory or checkpoint that cannot be evaluated; the message says the fix."""


@dataclass
class TrainedRun:
    """A run's networks (eval mode, frozen, on ``device``) and what describes them."""

    run_dir: Path
    checkpoint: Path
    config: Any  # salt_vla.trainer.experiments.TrainConfig
    run_meta: dict[str, Any]  # config.json minus "config" ({} when the file is absent)
    step: int
    student: Student
    predictor: Predictor
    view: Any  # salt_vla.data.view.ViewSpec
    describe: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object")
    return data


def load_run(path: Path | str, device: str | torch.device = "cpu") -> TrainedRun:
    """Load the student and predictor of a run directory or training checkpoint, frozen."""
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.build import predictor_config, student_config, view_spec
    from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
    from salt_vla.trainer.experiments import TrainConfig

    target = resolve_run_path(path, ("run", "checkpoint"))
    run_dir, ckpt = target.run_dir, target.file
    try:
        state = load_checkpoint(ckpt)
        cfg = TrainConfig.from_dict(state["config"])
        view = view_spec(cfg)
        s_cfg = student_config(cfg, view.num_frames, view.size)
        p_cfg = predictor_config(cfg, s_cfg)
    except (CheckpointError, ConfigError, KeyError) as e:
        raise RunError(f"cannot use checkpoint {ckpt}: {e}") from e
    run_meta = read_run_config(run_dir)[1]
    student, predictor = Student(s_cfg), Predictor(p_cfg)
    for name, module in (("student", student), ("predictor", predictor)):
        try:
            module.load_state_dict(state[name], strict=True)
        except (KeyError, RuntimeError) as e:
            raise RunError(
                f"checkpoint {ckpt}: its {name} weights do not fit its config: {e}"
            ) from e
    for module in (student, predictor):
        module.to(device).eval().requires_grad_(False)
    step = int(state.get("step", 0))
    describe = {
        "kind": "run",
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "step": step,
        "exp": cfg.name,
        "student": cfg.student,
        "dim": s_cfg.dims[0],
        "view": cfg.view,
    }
    return TrainedRun(run_dir, ckpt, cfg, run_meta, step, student, predictor, view, describe)


@dataclass(frozen=True)
class TeacherSource:
    """Where a run's frozen teacher comes from and how to rebuild exactly its targets."""

    source: str  # checkpoint path or "random:ARCH:SEED"
    spec: TeacherSpec
    sha256: str  # what the run recorded ("" when it recorded none)
    where: str  # which file said so


def run_teacher_source(run: TrainedRun, override: str | None = None) -> TeacherSource:
    """The teacher whose latents the run's predictor learned to predict.

    Cached targets: from the store named in ``config.json`` (``data.cache``): its
    ``cache.json`` has ``teacher_source`` and the teacher spec. Online targets: the config's
    ``teacher``. ``override`` replaces the source path (e.g. the checkpoint moved); the
    loaded teacher must still have the recorded sha256 (checked by :func:`check_teacher`).
    """
    cfg = run.config
    view = run.view
    if cfg.targets == "online":
        spec = TeacherSpec(
            arch=cfg.teacher_arch, num_frames=view.num_frames, img_size=view.size,
            tubelet=cfg.tubelet, patch=cfg.patch, layer=cfg.teacher_layer,
            target_norm=cfg.target_norm,
        )
        return TeacherSource(override or cfg.teacher, spec, "", f"{run.checkpoint} config")
    data = run.run_meta.get("data", {})
    recorded = data.get("teacher") or {}
    cache = data.get("cache")
    manifest: dict[str, Any] = {}
    where = str(run.run_dir / CONFIG_NAME)
    if cache and (Path(cache) / MANIFEST).is_file():
        manifest = _read_json(Path(cache) / MANIFEST)
        recorded = manifest.get("teacher", recorded)
        where = str(Path(cache) / MANIFEST)
    source = override or manifest.get("teacher_source")
    if not source and str(recorded.get("sha256", "")).startswith("random:"):
        source = recorded["sha256"]  # a random teacher is named completely by its sha field
    if not source:
        raise RunError(
            f"cannot find the teacher of run {run.run_dir}: config.json names the cache "
            f"{cache!r}, which {'has no teacher_source' if manifest else 'is not there'}. "
            "Name the teacher checkpoint yourself: `salt eval probe --encoder teacher:PATH "
            "--teacher-arch ARCH`, `salt eval intphys --teacher PATH`"
        )
    if not recorded:
        # Nothing recorded (e.g. a run fed from memory): the config's teacher keys, unchecked.
        where = f"{run.checkpoint} config (no recorded teacher: sha256 not checked)"
    spec = TeacherSpec(
        arch=recorded.get("arch", cfg.teacher_arch),
        num_frames=int(recorded.get("num_frames", view.num_frames)),
        img_size=int(recorded.get("img_size", view.size)),
        tubelet=int(recorded.get("tubelet", cfg.tubelet)),
        patch=int(recorded.get("patch", cfg.patch)),
        layer=int(recorded.get("layer", cfg.teacher_layer)),
        target_norm=bool(recorded.get("target_norm", cfg.target_norm)),
    )
    return TeacherSource(str(source), spec, str(recorded.get("sha256", "")), where)


def check_teacher(teacher: Any, source: TeacherSource) -> None:
    """Refuse a teacher whose weights differ from the ones the run was trained against."""
    if source.sha256 and teacher.sha256 != source.sha256:
        raise RunError(
            f"teacher {source.source} has sha256 {teacher.sha256} but the run was trained on "
            f"targets of {source.sha256} (per {source.where}): restore that checkpoint, or "
            "name it yourself (`salt eval intphys --teacher PATH`, `salt eval probe --encoder "
            "teacher:PATH`)"
        )

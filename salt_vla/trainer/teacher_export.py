"""Export a stage-1 run's encoder as a VideoMAEv2 checkpoint the teacher loader reads as is.

The stage-1 encoder *is* the :class:`~salt_vla.models.teacher.Teacher` network, so its
weights in the training checkpoint (``ckpt.pt["encoder"]``) already carry the official key
layout (``patch_embed.proj.*``, ``blocks.N.attn.qkv.weight`` + ``q_bias`` / ``v_bias``,
``blocks.N.mlp.fc1.*`` ...; no position table, no head). The export writes them as a bare
state dict, proves that ``load_teacher`` accepts the file with its strict key check, and
records the file's sha256 (the same hash ``salt cache build`` writes into cache.json) in
``<out>.sha256`` (``sha256sum`` format) plus provenance in ``<out>.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from salt_vla.cache.teacher_choice import teacher_record_path
from salt_vla.errors import SaltError
from salt_vla.files import write_text_atomic
from salt_vla.models.checkpoint import file_sha256, save_state_dict
from salt_vla.models.teacher import TeacherSpec, load_teacher
from salt_vla.runs.rundir import TEACHER_EXPORT_NAME, RunDirError, resolve_run_path
from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
from salt_vla.trainer.teacher_experiments import TeacherTrainConfig


class TeacherExportError(SaltError, ValueError):
    """A run or checkpoint that cannot be exported as a teacher; says what it is instead."""


@dataclass(frozen=True)
class TeacherExport:
    """Where the export went and what it holds."""

    path: Path
    sha256: str
    sha_path: Path
    meta_path: Path
    spec: TeacherSpec
    view: str
    step: int
    total_steps: int

    def cache_command(self, data_root: str = "DATA_ROOT") -> str:
        """The `salt cache build` line that turns this teacher into a latent store."""
        return (f"salt cache build {data_root} --teacher {self.path} --teacher-arch "
                f"{self.spec.arch} --view-preset {self.view}")


def teacher_spec(cfg: TeacherTrainConfig) -> TeacherSpec:
    """The :class:`TeacherSpec` of a stage-1 config: its arch, at its view's clip size."""
    from salt_vla.data.view import view_preset

    view = view_preset(cfg.view)
    return TeacherSpec(arch=cfg.arch, num_frames=view.num_frames, img_size=view.size,
                       tubelet=cfg.tubelet, patch=cfg.patch)


def _resolve_checkpoint(run: Path) -> Path:
    try:
        return resolve_run_path(run, ("run", "checkpoint")).file
    except RunDirError as e:
        raise TeacherExportError(str(e)) from None


def export_teacher(run: Path | str, out: Path | str | None = None) -> TeacherExport:
    """Write the encoder of ``run`` (a run directory or a ``ckpt.pt``) to ``out`` (default
    ``RUN_DIR/teacher.pth``; a ``.safetensors`` suffix writes safetensors) and check that
    ``load_teacher(out, spec)`` loads it with the strict key check."""
    ckpt = _resolve_checkpoint(Path(run))
    try:
        state = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise TeacherExportError(str(e)) from e
    if "encoder" not in state:
        what = "a `salt train` (student) checkpoint: export it with `salt export`" \
            if "student" in state else f"keys {sorted(state)[:8]}"
        raise TeacherExportError(f"{ckpt} is not a `salt teacher train` checkpoint ({what})")
    try:
        cfg = TeacherTrainConfig.from_dict(state["config"])
    except ValueError as e:
        raise TeacherExportError(f"{ckpt}: unreadable teacher config: {e}") from e
    spec = teacher_spec(cfg)
    out = Path(out) if out is not None else ckpt.parent / TEACHER_EXPORT_NAME
    weights = {k: v.float() for k, v in state["encoder"].items()}
    save_state_dict(weights, out)
    try:
        loaded = load_teacher(out, spec)  # strict key check, as `salt cache build` does
    except Exception as e:  # pragma: no cover - the encoder IS the teacher network
        raise TeacherExportError(f"{out}: the export does not load as a teacher: {e}") from e
    sha = file_sha256(out)
    if loaded.sha256 != sha:  # pragma: no cover - nothing rewrote the file in between
        raise TeacherExportError(f"{out} changed while it was being checked")
    sha_path = out.with_name(out.name + ".sha256")
    write_text_atomic(sha_path, f"{sha}  {out.name}\n")
    meta: dict[str, Any] = {
        "format": "VideoMAEv2 encoder (official fine-tune key layout, bare state dict)",
        "sha256": sha,
        "teacher_spec": spec.to_dict(),
        "view": cfg.view,
        "source": {"checkpoint": str(ckpt.resolve()), "step": int(state["step"]),
                   "total_steps": int(state["total_steps"]), "exp": cfg.name},
        "config": cfg.to_dict(),
        "params": int(sum(v.numel() for v in weights.values())),
        "torch": torch.__version__,
    }
    meta_path = teacher_record_path(out)  # `salt cache build` reads arch + view from it
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    return TeacherExport(out, sha, sha_path, meta_path, spec, cfg.view, int(state["step"]),
                         int(state["total_steps"]))


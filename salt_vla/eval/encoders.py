"""Frozen encoders for evaluation: one name in, token features ``[B, N, D]`` out.

``--encoder`` accepts:

- ``RUN_DIR`` or ``CKPT``: the student of a ``salt train`` run (its ``ckpt.pt``), on the run's
  view unless another view of the same shape is asked for;
- ``EXPORT_DIR`` or ``ENCODER.safetensors``: an encoder written by ``salt export``, on its
  recorded view, or on a view of another shape (its position table is resampled for that
  grid, see docs/export.md); what a run directory, a checkpoint or an export names is
  decided in one place, :func:`salt_vla.runs.rundir.resolve_run_path`;
- ``random:ARCH`` or ``random:ARCH:SEED``: a randomly initialised student of size ARCH (tiny,
  small, base, large) with seed SEED (default 0): the "no training" baseline;
- ``teacher:SOURCE``: the frozen VideoMAEv2 teacher's target tokens (the latents the student
  learns to predict), SOURCE being a checkpoint path (``--teacher-arch`` names its size),
  ``random:ARCH:SEED``, or a RUN_DIR (the teacher that run was trained against).

Every encoder sees the same pixels through a ``ViewSpec`` and returns all of a clip's tokens
in the shared time-major order; the probe pools them itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salt_vla.data.view import ViewSpec
from salt_vla.errors import SaltError
from salt_vla.models.grid import TokenGrid
from salt_vla.models.pixels import frames_to_input
from salt_vla.runs.rundir import RunDirError, RunPath, resolve_run_path

RANDOM_PREFIX = "random:"
TEACHER_PREFIX = "teacher:"


class EncoderError(SaltError, ValueError):
    """An ``--encoder`` value that cannot be resolved; the message says what is accepted."""


USAGE = (
    "use RUN_DIR or CKPT (a trained run), EXPORT_DIR or ENCODER.safetensors (from `salt "
    "export`), random:ARCH[:SEED] (ARCH: tiny, small, base, large) or teacher:SOURCE (SOURCE: a "
    "VideoMAEv2 checkpoint, random:vit_tiny:0, or a RUN_DIR)"
)


@dataclass
class FrozenEncoder:
    """A frozen network and the view it reads; :meth:`features` maps frames to tokens."""

    name: str  # what the user passed
    kind: str  # "run" | "encoder" | "random" | "teacher"
    module: nn.Module
    view: ViewSpec
    dim: int
    grid: TokenGrid
    device: torch.device
    describe: dict[str, Any]  # JSON-able identity: what produced these features
    _forward: Callable[[torch.Tensor], torch.Tensor]

    def features(self, frames: torch.Tensor, amp: bool = True) -> torch.Tensor:
        """uint8 frames ``[B, T, H, W, 3]`` (any device) -> float32 tokens ``[B, N, D]``;
        under bf16 autocast on CUDA when ``amp``."""
        x = frames_to_input(frames.to(self.device))
        on_cuda = self.device.type == "cuda" and amp
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            return self._forward(x).float()

    def key(self) -> str:
        """Stable id of (encoder identity, view): features with the same key are the same."""
        text = json.dumps({"encoder": self.describe, "view": self.view.hash()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_same_shape(view: ViewSpec, want: ViewSpec, what: str, also: str = "") -> None:
    if (view.num_frames, view.size) != (want.num_frames, want.size):
        raise EncoderError(
            f"{what} takes {want.num_frames} frames of {want.size} px, but the view asked for "
            f"gives {view.num_frames} frames of {view.size} px; choose a view preset of that "
            f"shape or leave --view-preset out to use the run's own view{also}"
        )


def _random_student(name: str, view: ViewSpec | None, device: torch.device) -> FrozenEncoder:
    from salt_vla.models.student import STUDENT_SIZES, Student, StudentConfig

    parts = name.split(":")
    if len(parts) not in (2, 3) or parts[1] not in STUDENT_SIZES:
        raise EncoderError(f"bad encoder {name!r}: random:ARCH[:SEED] with ARCH in "
                           f"{', '.join(STUDENT_SIZES)}")
    try:
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise EncoderError(f"bad encoder {name!r}: SEED must be an integer") from None
    if view is None:
        raise EncoderError(f"encoder {name!r} has no view of its own: pass --view-preset")
    cfg = StudentConfig(size=parts[1], num_frames=view.num_frames, img_size=view.size)
    # A private generator: the baseline's weights depend on SEED only, not on global state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = Student(cfg)
    student.to(device).eval().requires_grad_(False)
    describe = {"kind": "random", "arch": parts[1], "seed": seed, "dim": student.embed_dim}
    return FrozenEncoder(name, "random", student, view, student.embed_dim, student.grid, device,
                         describe, student.forward_features)


def _teacher(
    name: str, view: ViewSpec | None, device: torch.device, teacher_arch: str
) -> FrozenEncoder:
    from salt_vla.models.teacher import TeacherSpec, load_teacher

    source = name[len(TEACHER_PREFIX):]
    if not source:
        raise EncoderError(f"bad encoder {name!r}: {USAGE}")
    spec_base: TeacherSpec | None = None
    ts = None
    run_path = Path(source).expanduser()
    if not source.startswith(RANDOM_PREFIX) and run_path.is_dir():
        from salt_vla.eval.trained_run import load_run, run_teacher_source

        run = load_run(run_path, "cpu")
        ts = run_teacher_source(run)
        if view is not None:
            _check_same_shape(view, run.view, f"the teacher of run {run_path}")
        view = view or run.view
        spec_base, source = ts.spec, ts.source
    if view is None:
        raise EncoderError(f"encoder {name!r} has no view of its own: pass --view-preset")
    spec = spec_base or TeacherSpec(arch=teacher_arch)
    spec = replace(spec, num_frames=view.num_frames, img_size=view.size)
    try:
        teacher = load_teacher(source, spec, device=device)
    except (ValueError, OSError) as e:
        raise EncoderError(f"cannot load teacher {source}: {e}") from e
    if ts is not None:
        from salt_vla.eval.trained_run import check_teacher

        check_teacher(teacher, ts)
    desc = teacher.describe()
    describe = {"kind": "teacher", "source": desc["checkpoint"], "sha256": desc["sha256"],
                "arch": desc["arch"], "layer": desc["layer"], "target_norm": desc["target_norm"],
                "dim": teacher.dim}
    return FrozenEncoder(name, "teacher", teacher, view, teacher.dim, teacher.grid, device,
                         describe, teacher.targets)


def _run_student(name: str, target: RunPath, view: ViewSpec | None,
                 device: torch.device) -> FrozenEncoder:
    from salt_vla.eval.trained_run import load_run
    from salt_vla.models.checkpoint import file_sha256

    run = load_run(target.file, device)
    if view is not None:
        _check_same_shape(view, run.view, f"the student of {run.checkpoint}",
                          "; an export of the run (`salt export`) takes other clip shapes")
    view = view or run.view
    student = run.student
    describe = dict(run.describe, kind="run", sha256=file_sha256(run.checkpoint))
    return FrozenEncoder(name, "run", student, view, student.embed_dim, student.grid, device,
                         describe, student.forward_features)


def _exported(name: str, target: RunPath, view: ViewSpec | None,
              device: torch.device) -> FrozenEncoder:
    """An export (directory or file) on its recorded view, or on ``view`` of any shape its
    tubelet and patch divide: the position table is resampled (load_encoder's defaults)."""
    from salt_vla.export.load import load_encoder
    from salt_vla.models.checkpoint import file_sha256

    encoder = load_encoder(Path(name).expanduser(), device)
    own = ViewSpec.from_dict(encoder.config["view"]["spec"])
    view = view or own
    grid = encoder.grid_for(view.num_frames, view.size, view.size)
    dtype = encoder.patch_embed.proj.weight.dtype  # a bf16/fp16 export keeps its stored type
    prov, arch = encoder.config.get("provenance", {}), encoder.config["architecture"]
    c = encoder.cfg
    describe = {"kind": "encoder", "path": str(target.file.resolve()),
                "sha256": file_sha256(target.file), "exp": prov.get("exp", ""),
                "step": prov.get("step", 0), "student": arch.get("student_size", ""),
                "dim": encoder.embed_dim, "dtype": encoder.config.get("dtype", ""),
                "positions": {"time": c.time_positions, "space": c.space_positions}}
    return FrozenEncoder(name, "encoder", encoder, view, encoder.embed_dim, grid, device,
                         describe, lambda x: encoder.forward_features(x.to(dtype)))


def resolve_encoder(
    name: str,
    view: ViewSpec | None = None,
    device: str | torch.device = "cpu",
    teacher_arch: str = "vit_base",
) -> FrozenEncoder:
    """Resolve an ``--encoder`` value (see the module doc) into a frozen feature extractor.

    ``view``: the pixels to feed it; None means the run's own view (random and teacher-file
    encoders have none, so they need one). ``teacher_arch`` sizes a ``teacher:PATH`` model.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if name.startswith(RANDOM_PREFIX):
        return _random_student(name, view, dev)
    try:
        if name.startswith(TEACHER_PREFIX):
            return _teacher(name, view, dev, teacher_arch)
        try:
            target = resolve_run_path(name)
        except RunDirError as e:
            raise EncoderError(f"encoder {name!r}: {e}; {USAGE}") from e
        if target.kind == "encoder":
            return _exported(name, target, view, dev)
        return _run_student(name, target, view, dev)
    except RunDirError as e:  # the run's files are there but cannot be used
        raise EncoderError(str(e)) from e

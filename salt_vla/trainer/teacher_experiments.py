"""Stage-1 teacher configs: one frozen, flat dataclass per `salt teacher train` run, presets.

Stage 1 of SALT trains the teacher itself by VideoMAE-style pixel reconstruction ("V-Pixel"):
a VideoMAEv2 encoder on the visible tokens, a light decoder over all tokens, loss on the
per-patch normalised pixels of the masked tubelets. The run uses the same loop, data stream,
schedules, checkpoints and logs as `salt train`; only the model and the objective differ, so
this config carries the same optimisation/data/execution keys as :class:`TrainConfig` (the
loop reads them by name) plus the encoder/decoder keys of this stage.

Keys are flat and `--set key=value` overrides are parsed, type-checked and refused when
unknown exactly as for `salt train` (the helpers of ``experiments.py``, given this class).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, replace
from typing import Any

from salt_vla.models.teacher import ARCHS
from salt_vla.trainer.experiments import (
    ConfigError,
    common_problems,
    parse_overrides,
    values_from_dict,
)

# String-valued keys that only take a few values (checked by `validate_teacher`).
TEACHER_CHOICES: dict[str, tuple[str, ...]] = {
    "arch": tuple(ARCHS),
    "mask_strategy": ("ratio", "multiblock", "tube", "random", "temporal"),
    "mask_truncate": ("tail", "random"),
    "mask_temporal_direction": ("both", "forward"),
    "loss": ("mse", "l1"),
    "precision": ("auto", "fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Everything that defines a stage-1 (pixel reconstruction) teacher run.

    ``batch_size`` is the global batch per optimiser step, as in :class:`TrainConfig`.
    ``blr`` > 0 is VideoMAE's learning-rate rule: the presets resolve ``lr = blr *
    batch_size / 256`` (an explicit ``--set lr=...`` sets ``blr`` to 0 and wins).
    """

    name: str = "custom"
    # --- encoder (the exported teacher) and pixel decoder
    arch: str = "vit_base"  # VideoMAEv2 size (salt_vla.models.teacher.ARCHS)
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    grad_checkpointing: bool = False
    # --- view (the clips come straight from the videos through it)
    view: str = "ssv2-16x224"
    tubelet: int = 2
    patch: int = 16
    # --- masks
    mask_strategy: str = "ratio"
    mask_ratio: float = 0.9
    mask_truncate: str = "tail"
    # temporal-split masks (salt_vla/masking/temporal.py): an extra group predicting later
    # time steps from earlier ones; multiblock blocks' time extent (V-JEPA: all of it)
    mask_temporal_group: bool = False
    mask_temporal_direction: str = "both"
    mask_temporal_max_context: int = 0  # 0: up to T-1 context time steps
    mask_temporal_scale: tuple[float, float] = (1.0, 1.0)
    # --- objective and optimisation
    loss: str = "mse"  # on the masked tubelets' pixels; "l1" selectable
    norm_pix: bool = True  # per-patch, per-channel normalised pixel targets (VideoMAE)
    batch_size: int = 64
    grad_accum: int = 1
    epochs: int = 800
    max_steps: int = 0  # > 0: run exactly this many optimiser steps (schedules span them)
    stop_at: int = 0  # > 0: checkpoint and stop after this step; schedules still span the run
    blr: float = 1.5e-4  # base lr per 256 clips; > 0: lr = blr * batch_size / 256
    lr: float = 3.75e-5
    min_lr: float = 1e-6
    warmup_steps: int = 10000
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global grad norm; 0 disables (VideoMAE pre-training)
    skip_nonfinite: int = 0
    # --- data
    limit_rows: int = 0  # > 0: train on the first N clips only (overfitting checks)
    num_workers: int = 8  # DataLoader worker processes decoding videos
    prefetch_factor: int = 2
    decode_threads: int = 0  # > 1 with num_workers=0: decode in threads (no /dev/shm)
    # --- execution
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp32 master weights), fp32 on CPU
    compile: bool = False
    # --- logging and checkpoints
    log_every: int = 10
    ckpt_every: int = 1000
    wandb_project: str = "salt-vla"
    wandb_run: str = ""
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherTrainConfig:
        """Inverse of ``to_dict``; unknown keys and wrong types raise ``ConfigError``."""
        return validate_teacher(cls(**values_from_dict(cls, d)))


_BASE = TeacherTrainConfig()

TEACHER_PRESETS: dict[str, TeacherTrainConfig] = {
    # ViT-B at 16 x 224 with VideoMAE's pre-training recipe: 90% masking, lr 1.5e-4 per 256
    # clips, AdamW (0.9, 0.95), weight decay 0.05, no clipping, 4-block 384-wide decoder.
    # 800 epochs on SSv2 is VideoMAE's schedule; SALT reports a much shorter stage 1 suffices
    # (set epochs / max_steps and warmup_steps for your run).
    "teacher-base": replace(
        _BASE, name="teacher-base",
        notes="ViT-B 16x224, VideoMAE defaults: ratio masks 0.9, lr 1.5e-4 x batch/256, "
              "batch 64, warmup 10k steps, 800 epochs (set your own schedule)",
    ),
    # CPU demo: vit_tiny at 8 frames x 64 px (4 x 4 x 4 tokens) under V-JEPA's multiblock
    # groups (the SALT "V-Pixel" masks). On `salt data synth`'s default set (140 train
    # clips) 30 epochs are 262 steps: a few minutes on 2 CPU cores. Raw pixel targets
    # (norm_pix off): the synthetic clips are mostly flat background plus sensor noise, and
    # per-patch normalisation turns a flat patch into pure noise, so with it the loss barely
    # moves in a CPU-sized run (measured: normalised loss 1.03 -> 1.00 in 262 steps, against
    # 5.5 -> 0.18 with raw pixels, whose teacher also probed better).
    "teacher-tiny": replace(
        _BASE, name="teacher-tiny", arch="vit_tiny", decoder_width=96, decoder_depth=2,
        decoder_heads=3, view="tiny-8x64", mask_strategy="multiblock", norm_pix=False,
        batch_size=16, epochs=30, blr=0.0, lr=1e-3, min_lr=1e-4, warmup_steps=20,
        grad_clip=1.0, num_workers=2, log_every=10, ckpt_every=100,
        notes="CPU demo: vit_tiny, tiny-8x64 view, multiblock masks, raw-pixel targets, 30 "
              "epochs: a few minutes on synthetic data",
    ),
}


def get_teacher_preset(name: str) -> TeacherTrainConfig:
    """The teacher preset called ``name``; an unknown name lists the valid ones."""
    if name not in TEACHER_PRESETS:
        close = difflib.get_close_matches(name, TEACHER_PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown teacher experiment {name!r}{hint}; presets: {', '.join(TEACHER_PRESETS)}"
        )
    return TEACHER_PRESETS[name]


def scaled_lr(cfg: TeacherTrainConfig) -> TeacherTrainConfig:
    """Apply VideoMAE's rule ``lr = blr * batch_size / 256`` when ``blr`` > 0."""
    if cfg.blr > 0:
        return replace(cfg, lr=cfg.blr * cfg.batch_size / 256)
    return cfg


def validate_teacher(cfg: TeacherTrainConfig) -> TeacherTrainConfig:
    """Check value ranges and choices; returns ``cfg`` or raises one ``ConfigError`` listing
    every problem."""
    positive = ("batch_size", "grad_accum", "decoder_width", "decoder_heads", "tubelet",
                "patch", "log_every", "ckpt_every", "prefetch_factor")
    non_negative = ("epochs", "max_steps", "stop_at", "warmup_steps", "blr", "lr", "min_lr",
                    "weight_decay", "weight_decay_end", "grad_clip", "skip_nonfinite",
                    "limit_rows", "num_workers", "decode_threads", "decoder_depth", "seed")
    problems = common_problems(cfg, TEACHER_CHOICES, positive, non_negative)
    if cfg.decoder_width % max(cfg.decoder_heads, 1):
        problems.append(f"decoder_width={cfg.decoder_width} is not divisible by "
                        f"decoder_heads={cfg.decoder_heads}")
    if problems:
        raise ConfigError("invalid teacher config: " + "; ".join(problems))
    return cfg


def resolve_teacher(
    name: str, overrides: list[str] | tuple[str, ...] = ()
) -> TeacherTrainConfig:
    """Teacher preset ``name`` with `--set` overrides applied, lr scaled, validated.

    An explicit ``lr`` without ``blr`` turns the batch scaling off (``blr=0``): the user's
    number is used as given.
    """
    base = get_teacher_preset(name)
    values = parse_overrides(overrides, TeacherTrainConfig)
    if "lr" in values and "blr" not in values:
        values["blr"] = 0.0
    return validate_teacher(scaled_lr(replace(base, **values)))

"""Stage-1 teacher configs: one frozen, flat dataclass per `salt teacher train` run, presets.

Stage 1 of SALT trains the teacher itself by VideoMAE-style pixel reconstruction ("V-Pixel"):
a VideoMAEv2 encoder on the visible tokens, a light decoder over all tokens, loss on the
per-patch normalised pixels of the masked tubelets. The run uses the same loop, data stream,
schedules, checkpoints and logs as `salt train`; only the model and the objective differ, so
this config is the loop's keys (:class:`~salt_vla.trainer.loop_config.LoopConfig`, shared
with stage 2's ``TrainConfig``) plus the encoder/decoder keys of this stage.

Keys are flat and `--set key=value` overrides are parsed, type-checked and refused when
unknown exactly as for `salt train` (one parser: ``overrides.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from salt_vla.errors import ConfigError
from salt_vla.models.teacher import ARCHS
from salt_vla.trainer.loop_config import LoopConfig, key
from salt_vla.trainer.overrides import did_you_mean


@dataclass(frozen=True)
class TeacherTrainConfig(LoopConfig):
    """Everything that defines a stage-1 (pixel reconstruction) teacher run: the loop's keys
    (:class:`LoopConfig`, with VideoMAE's pre-training recipe as defaults) plus the encoder,
    the pixel decoder and the pixel targets.

    ``blr`` > 0 is VideoMAE's learning-rate rule: the presets resolve ``lr = blr *
    batch_size / 256`` (an explicit ``--set lr=...`` sets ``blr`` to 0 and wins).
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**LoopConfig.CHOICES, "arch": tuple(ARCHS)}
    POSITIVE: ClassVar[tuple[str, ...]] = LoopConfig.POSITIVE + ("decoder_width", "decoder_heads")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = LoopConfig.NON_NEGATIVE + ("blr", "decoder_depth")
    KIND: ClassVar[str] = "teacher config"

    # --- the loop's keys where VideoMAE's recipe differs from stage 2's (position and meaning
    # are LoopConfig's)
    mask_strategy: str = "ratio"
    batch_size: int = 64
    epochs: int = 800
    lr: float = key(3.75e-5, "peak learning rate; while blr > 0 it is derived: blr x "
                    "batch_size / 256 (an lr given without blr sets blr = 0)")
    min_lr: float = 1e-6
    warmup_steps: int = 10000
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    grad_clip: float = 0.0  # no clipping in VideoMAE pre-training
    # --- encoder (the exported teacher) and pixel decoder
    arch: str = key("vit_base", "VideoMAEv2 size of the encoder (the exported teacher)")
    decoder_width: int = key(384, "pixel decoder width")
    decoder_depth: int = key(4, "pixel decoder blocks")
    decoder_heads: int = key(6, "pixel decoder attention heads")
    # --- objective
    norm_pix: bool = key(True, "per-patch, per-channel normalised pixel targets (VideoMAE)")
    blr: float = key(1.5e-4, "base learning rate per 256 clips; > 0: lr = blr x batch_size "
                     "/ 256")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.decoder_width % max(self.decoder_heads, 1):
            problems.append(f"decoder_width={self.decoder_width} is not divisible by "
                            f"decoder_heads={self.decoder_heads}")
        return problems


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
        raise ConfigError(
            f"unknown teacher experiment {name!r}{did_you_mean(name, TEACHER_PRESETS)}; "
            f"presets: {', '.join(TEACHER_PRESETS)}"
        )
    return TEACHER_PRESETS[name]


def scaled_lr(cfg: TeacherTrainConfig) -> TeacherTrainConfig:
    """Apply VideoMAE's rule ``lr = blr * batch_size / 256`` when ``blr`` > 0."""
    if cfg.blr > 0:
        return replace(cfg, lr=cfg.blr * cfg.batch_size / 256)
    return cfg


def resolve_teacher(
    name: str | None,
    overrides: list[str] | tuple[str, ...] = (),
    file_values: dict[str, Any] | None = None,
) -> TeacherTrainConfig:
    """Teacher preset ``name`` (None: the defaults of :class:`TeacherTrainConfig`), then a
    config file's values, then the `--set` overrides (a later one wins); lr scaled,
    validated.

    An explicit ``lr`` without ``blr`` (in the file or the overrides) turns the batch scaling
    off (``blr=0``): the user's number is used as given.
    """
    base = get_teacher_preset(name) if name is not None else TeacherTrainConfig()
    values = {**(file_values or {}), **TeacherTrainConfig.parse_overrides(overrides)}
    if "lr" in values and "blr" not in values:
        values["blr"] = 0.0
    return scaled_lr(replace(base, **values)).validated()

"""Stage-2 experiment configs: one frozen, flat dataclass per `salt train` run, named presets.

The presets reproduce the seed's sweep (baseline, exp1-exp3) plus V-JEPA-mask and CPU-sized
variants. :class:`TrainConfig` is the loop's keys (:class:`~salt_vla.trainer.loop_config.
LoopConfig`: optimisation, schedule, masks, data, execution, logging) plus the student,
predictor and target keys of this stage. Keys are flat, so `salt train --set key=value`
needs no dotted paths; `--set` is parsed and checked by ``overrides.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from salt_vla.errors import ConfigError
from salt_vla.trainer.loop_config import LoopConfig
from salt_vla.trainer.overrides import did_you_mean


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Everything that defines a stage-2 training run (defaults = the seed's shared settings):
    the loop's keys (:class:`LoopConfig`) plus the student, predictor and targets."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **LoopConfig.CHOICES,
        "student": ("tiny", "small", "base", "large"),
        "targets": ("cached", "online"),
    }
    POSITIVE: ClassVar[tuple[str, ...]] = LoopConfig.POSITIVE + (
        "predictor_width", "predictor_heads", "teacher_dim",
    )
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = LoopConfig.NON_NEGATIVE + (
        "predictor_depth", "drop_path",
    )

    # --- student / predictor
    student: str = "base"
    student_dim: int | None = None  # None: the size preset's width
    student_depth: int | None = None
    student_heads: int | None = None
    predictor_width: int = 384
    predictor_depth: int = 12
    predictor_heads: int = 12
    drop_path: float = 0.0
    # --- targets (checked against the store before the first step)
    teacher_dim: int = 768
    targets: str = "cached"  # "online": run the teacher on every batch instead of the store
    teacher: str = "vit_base"  # online targets: teacher arch
    teacher_ckpt: str = ""  # online targets: checkpoint path or random:ARCH:SEED
    teacher_layer: int = -1
    target_norm: bool = True

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.targets == "online" and not self.teacher_ckpt:
            problems.append("targets='online' needs teacher_ckpt=PATH (or random:ARCH:SEED)")
        return problems


# Stage 2's spellings of the `--set` parser (sweep and the tests use them).
valid_keys = TrainConfig.valid_keys
parse_overrides = TrainConfig.parse_overrides

SEED = TrainConfig(
    name="seed",
    student="base",
    batch_size=32,
    betas=(0.9, 0.95),
    weight_decay=0.04,
    weight_decay_end=0.4,
    grad_clip=0.02,
    mask_strategy="ratio",
    predictor_width=384,
    predictor_depth=12,
    loss="mse",
    grad_checkpointing=False,
)

PRESETS: dict[str, TrainConfig] = {
    "baseline": replace(
        SEED, name="baseline", lr=1.5e-4, min_lr=1e-5, warmup_steps=1000, epochs=10,
        mask_ratio=0.75,
        notes="seed baseline: lr 1.5e-4 -> 1e-5, warmup 1000, 10 epochs, ratio masks 0.75",
    ),
    "exp1": replace(
        SEED, name="exp1", lr=3e-4, min_lr=3e-5, warmup_steps=500, epochs=3, mask_ratio=0.75,
        notes="higher lr: 3e-4 -> 3e-5, warmup 500, 3 epochs, ratio masks 0.75",
    ),
    "exp2": replace(
        SEED, name="exp2", lr=1.5e-4, min_lr=1e-5, warmup_steps=500, epochs=3, mask_ratio=0.9,
        notes="harder masks: lr 1.5e-4 -> 1e-5, warmup 500, 3 epochs, ratio masks 0.9",
    ),
    "exp3": replace(
        SEED, name="exp3", lr=3e-4, min_lr=3e-5, warmup_steps=500, epochs=3, mask_ratio=0.9,
        notes="higher lr + harder masks: 3e-4 -> 3e-5, warmup 500, 3 epochs, ratio masks 0.9",
    ),
}
PRESETS["exp3-vjepa-masks"] = replace(
    PRESETS["exp3"], name="exp3-vjepa-masks", mask_strategy="multiblock",
    notes="exp3 with V-JEPA's two-group multiblock masks (8 x 0.15 + 2 x 0.7 blocks)",
)
# CPU-sized: matches a store built with the vit_tiny teacher (192 wide) and the "tiny-8x64"
# view (8 frames x 64 px -> 4 x 4 x 4 tokens), as `make demo` and the tests build it.
PRESETS["tiny"] = replace(
    SEED, name="tiny", student="tiny", predictor_width=96, predictor_depth=2, predictor_heads=3,
    view="tiny-8x64", teacher="vit_tiny", teacher_dim=192, mask_ratio=0.75,
    batch_size=8, epochs=20, lr=1e-3, min_lr=1e-4, warmup_steps=20, grad_clip=1.0,
    num_workers=2, log_every=10, ckpt_every=100,
    notes="CPU demo/test size: tiny student and predictor for a vit_tiny / tiny-8x64 store",
)


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown experiment {name!r}{did_you_mean(name, PRESETS)}; "
                          f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve(name: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Preset ``name`` with `--set` overrides applied, type-checked and validated."""
    return replace(get_preset(name), **parse_overrides(overrides)).validated()

"""Stage-2 experiment configs: one frozen, flat dataclass per `salt train` run, named presets.

The presets reproduce the seed's sweep (baseline, exp1-exp3) plus V-JEPA-mask and CPU-sized
variants. :class:`TrainConfig` is the loop's keys (:class:`~salt_vla.trainer.loop_config.
LoopConfig`: optimisation, schedule, masks, data, execution, logging) plus the student,
predictor and target keys of this stage. Keys are flat, so `salt train --set key=value`
needs no dotted paths; `--set` is parsed and checked by ``overrides.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from salt_vla.errors import ConfigError
from salt_vla.models.teacher import ARCHS, is_random_source, parse_random_source
from salt_vla.trainer.loop_config import LoopConfig, key
from salt_vla.trainer.overrides import did_you_mean


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Everything that defines a stage-2 training run (defaults = the seed's shared settings):
    the loop's keys (:class:`LoopConfig`) plus the student, predictor and targets."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **LoopConfig.CHOICES,
        "student": ("tiny", "small", "base", "large"),
        "targets": ("cached", "online"),
        "teacher_arch": tuple(ARCHS),
        "target_center": ("none", "clip"),
    }
    POSITIVE: ClassVar[tuple[str, ...]] = LoopConfig.POSITIVE + (
        "predictor_width", "predictor_heads", "teacher_dim",
    )
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = LoopConfig.NON_NEGATIVE + (
        "predictor_depth", "drop_path",
    )

    # Before 0.2 the teacher's source was `teacher_ckpt` and `teacher` its architecture.
    ALIASES: ClassVar[dict[str, str]] = {"teacher_ckpt": "teacher"}
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("teacher",)

    # --- student / predictor
    student: str = key("base", "student size preset: tiny, small, base or large")
    student_dim: int | None = key(None, "student width; unset: the size preset's")
    student_depth: int | None = key(None, "student blocks; unset: the size preset's")
    student_heads: int | None = key(None, "student attention heads; unset: the size preset's")
    student_pos_gain: bool = key(False, "multiply the student's position table by a learned "
                                 "scalar (initialised to 1)")
    predictor_width: int = key(384, "predictor width")
    predictor_depth: int = key(12, "predictor blocks")
    predictor_heads: int = key(12, "predictor attention heads")
    predictor_ctx_pos: bool = key(True, "add positions to the student's context tokens in "
                                  "the predictor; off: the tokens must say where they are")
    drop_path: float = key(0.0, "stochastic depth rate of the student and predictor blocks")
    # --- targets (checked against the store before the first step)
    teacher_dim: int = key(768, "width of the teacher's latents (must match the cache)")
    targets: str = key("cached", "cached: read the store built by `salt cache build`; online: "
                       "run the teacher on every batch")
    teacher: str = key("", "online targets: the teacher, a checkpoint PATH or "
                       "random:ARCH:SEED (cached targets: the store's, recorded in it)")
    teacher_arch: str = key("vit_base", "online targets: VideoMAEv2 size of a teacher "
                            "checkpoint (random:ARCH:SEED names its own)")
    teacher_layer: int = key(-1, "online targets: block whose tokens are the targets "
                             "(negative counts from the end)")
    target_norm: bool = key(True, "online targets: layer-normalise the targets without "
                            "affine (V-JEPA's convention)")
    target_center: str = key("none", "clip: targets minus each clip's mean token, unit RMS "
                             "per clip (objective.center_targets); none: as cached")

    @classmethod
    def upgrade_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Dicts saved before the rename: ``teacher`` was the arch, ``teacher_ckpt`` the
        source (which cached runs never used, so it is dropped for them)."""
        if "teacher_ckpt" not in d:
            return d
        d = dict(d)
        if "teacher" in d:
            d["teacher_arch"] = d.pop("teacher")
        source = d.pop("teacher_ckpt")
        d["teacher"] = source if d.get("targets", "cached") == "online" else ""
        return d

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.teacher in ARCHS:
            problems.append(
                f"teacher={self.teacher!r} is an architecture: `teacher` is the teacher itself "
                f"(a checkpoint PATH or random:ARCH:SEED); its size is teacher_arch="
                f"{self.teacher}")
        elif is_random_source(self.teacher):
            try:
                parse_random_source(self.teacher)
            except ConfigError as e:
                problems.append(f"teacher={self.teacher!r}: {e}")
        if self.targets == "cached" and self.teacher:
            problems.append(f"teacher={self.teacher!r} with targets='cached': a cached run's "
                            "targets come from the store's teacher; add --targets online to "
                            "run this teacher on every batch instead")
        if self.targets == "online" and not self.teacher:
            problems.append("targets='online' needs the teacher: --teacher PATH or "
                            "random:ARCH:SEED (--set teacher=...)")
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
    view="tiny-8x64", teacher_arch="vit_tiny", teacher_dim=192, mask_ratio=0.75,
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


def resolve(
    name: str | None,
    overrides: list[str] | tuple[str, ...] = (),
    file_values: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset ``name`` (None: the defaults of :class:`TrainConfig`), then the values of a
    config file (``file_values``, typed: see ``config_file.py``), then the `--set`
    ``overrides``: a later one wins; type-checked and validated."""
    base = get_preset(name) if name is not None else TrainConfig()
    values = {**(file_values or {}), **parse_overrides(overrides)}
    return replace(base, **values).validated()

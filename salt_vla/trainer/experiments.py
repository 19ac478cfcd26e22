"""Experiment configs: one frozen, flat dataclass per run, named presets, `--set` overrides.

The presets reproduce the seed's sweep (baseline, exp1-exp3) plus V-JEPA-mask and CPU-sized
variants. Keys are flat (``lr``, ``mask_ratio``, ...) so `salt train --set key=value` needs
no dotted paths; every value is type-checked and every unknown key is refused with the list
of valid keys, because a typo silently ignored costs a multi-day run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

# String-valued keys that only take a few values (checked by `validate`).
CHOICES: dict[str, tuple[str, ...]] = {
    "student": ("tiny", "small", "base", "large"),
    "targets": ("cached", "online"),
    "mask_strategy": ("ratio", "multiblock", "tube", "random", "temporal"),
    "mask_truncate": ("tail", "random"),
    "mask_temporal_direction": ("both", "forward"),
    "loss": ("mse", "l1"),
    "target_center": ("none", "clip"),
    "precision": ("auto", "fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
}

# Keys that may differ between a run and its resumption: they change how the run is
# executed or logged, never what it computes.
RUNTIME_KEYS = frozenset(
    {"num_workers", "prefetch_factor", "decode_threads", "log_every", "ckpt_every", "stop_at",
     "wandb_project", "wandb_run"}
)


class ConfigError(ValueError):
    """A bad experiment name, override or value; the message says what is valid."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (defaults = the seed's shared settings).

    ``batch_size`` is the global batch per optimiser step: under torchrun with W processes and
    ``grad_accum`` A each process runs micro-batches of ``batch_size / (W * A)`` clips, so
    the schedule and the recipe mean the same thing on 1 or 8 GPUs.
    """

    name: str = "custom"
    # --- student / predictor
    student: str = "base"
    student_dim: int | None = None  # None: the size preset's width
    student_depth: int | None = None
    student_heads: int | None = None
    student_pos_gain: bool = False  # learned scalar gain on the student's position table
    predictor_width: int = 384
    predictor_depth: int = 12
    predictor_heads: int = 12
    predictor_ctx_pos: bool = True  # off: the student's tokens must say where they are
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # --- view and targets (checked against the store before the first step)
    view: str = "ssv2-16x224"  # a view preset, or "store": the cache's own (custom) view
    tubelet: int = 2
    patch: int = 16
    teacher_dim: int = 768
    targets: str = "cached"  # "online": run the teacher on every batch instead of the store
    teacher: str = "vit_base"  # online targets: teacher arch
    teacher_ckpt: str = ""  # online targets: checkpoint path or random:ARCH:SEED
    teacher_layer: int = -1
    target_norm: bool = True
    target_center: str = "none"  # "clip": remove each clip's mean target token (objective.py)
    # --- masks
    mask_strategy: str = "multiblock"
    mask_ratio: float = 0.9
    mask_truncate: str = "tail"
    # temporal-split masks (salt_vla/masking/temporal.py): an extra group predicting later
    # time steps from earlier ones; multiblock blocks' time extent (V-JEPA: all of it)
    mask_temporal_group: bool = False
    mask_temporal_direction: str = "both"
    mask_temporal_max_context: int = 0  # 0: up to T-1 context time steps
    mask_temporal_scale: tuple[float, float] = (1.0, 1.0)
    # --- objective and optimisation
    loss: str = "mse"
    batch_size: int = 32
    grad_accum: int = 1
    epochs: int = 10
    max_steps: int = 0  # > 0: run exactly this many optimiser steps (schedules span them)
    stop_at: int = 0  # > 0: checkpoint and stop after this step; schedules still span the run
    lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 1000
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 0.02  # max global grad norm; 0 disables (V-JEPA uses 10)
    skip_nonfinite: int = 0  # tolerate this many non-finite-loss steps (skipped) before stopping
    # --- data
    limit_rows: int = 0  # > 0: train on the first N store rows only (overfitting checks)
    num_workers: int = 8  # DataLoader worker processes decoding frames
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
    wandb_run: str = ""  # default: the run directory's name
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys and wrong types raise ``ConfigError``."""
        return validate(cls(**values_from_dict(cls, d)))


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


# The helpers below take the config class, so other flat configs run through the same loop
# (e.g. the stage-1 teacher's, teacher_experiments.py) parse and check keys the same way.


def _hints(cls: type = TrainConfig) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = TrainConfig) -> list[str]:
    """Every key `--set` accepts, in declaration order."""
    return [f.name for f in fields(cls)]


def values_from_dict(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Type-checked constructor arguments of ``cls`` from a JSON dict (config.json, a
    checkpoint's config): unknown keys and wrong types raise ``ConfigError``."""
    hints = _hints(cls)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(hints)}")
    return {k: _coerce_json(k, v, hints[k]) for k, v in d.items()}


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; an unknown name lists the valid ones."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown experiment {name!r}{hint}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_scalar(key: str, text: str, tp: type) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a float") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def parse_value(key: str, text: str, cls: type = TrainConfig) -> Any:
    """Parse the text of `--set key=text` to the key's declared type in ``cls``."""
    hints = _hints(cls)
    if key not in hints:
        raise ConfigError(_unknown_key_message(key, cls))
    tp = hints[key]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _parse_scalar(key, text, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        if len(parts) != len(args):
            raise ConfigError(
                f"{key}={text!r}: expected {len(args)} comma-separated values, e.g. "
                f"{key}=" + ",".join(str(v) for v in _default(cls, key))
            )
        return tuple(_parse_scalar(key, p.strip(), a) for p, a in zip(parts, args, strict=True))
    return _parse_scalar(key, text, tp)


def _coerce_json(key: str, value: Any, tp: Any) -> Any:
    """Check a value read from JSON against the key's type (ints may stand for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} values")
        return tuple(_coerce_json(key, v, a) for v, a in zip(value, args, strict=True))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    return value


def _default(cls: type, key: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == key)


def _unknown_key_message(key: str, cls: type = TrainConfig) -> str:
    keys = valid_keys(cls)
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}"


def parse_overrides(
    items: list[str] | tuple[str, ...], cls: type = TrainConfig
) -> dict[str, Any]:
    """``["lr=3e-4", "betas=0.9,0.99"]`` -> typed ``{"lr": 3e-4, "betas": (0.9, 0.99)}``
    for the keys of ``cls``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=3e-4")
        out[key] = parse_value(key, text, cls)
    return out


def common_problems(
    cfg: Any, choices: dict[str, tuple], positive: tuple[str, ...], non_negative: tuple[str, ...]
) -> list[str]:
    """Range and choice problems shared by every training config (stage 1 and stage 2)."""
    problems = []
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            problems.append(f"{key}={getattr(cfg, key)!r}: choose one of {', '.join(allowed)}")
    for key in positive:
        if getattr(cfg, key) <= 0:
            problems.append(f"{key}={getattr(cfg, key)}: must be > 0")
    for key in non_negative:
        if getattr(cfg, key) < 0:
            problems.append(f"{key}={getattr(cfg, key)}: must be >= 0")
    if cfg.epochs == 0 and cfg.max_steps == 0:
        problems.append("epochs=0 and max_steps=0: set one of them")
    if cfg.min_lr > cfg.lr:
        problems.append(f"min_lr={cfg.min_lr} is above lr={cfg.lr}")
    if not 0.0 < cfg.mask_ratio < 1.0:
        problems.append(f"mask_ratio={cfg.mask_ratio}: must be in (0, 1)")
    if cfg.batch_size % cfg.grad_accum:
        problems.append(f"batch_size={cfg.batch_size} is not divisible by grad_accum="
                        f"{cfg.grad_accum}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        problems.append(f"betas={cfg.betas}: each must be in [0, 1)")
    return problems


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check value ranges and choices; returns ``cfg`` or raises one ``ConfigError`` listing
    every problem."""
    positive = ("batch_size", "grad_accum", "predictor_width", "predictor_heads", "tubelet",
                "patch", "teacher_dim", "log_every", "ckpt_every", "prefetch_factor")
    non_negative = ("epochs", "max_steps", "stop_at", "warmup_steps", "lr", "min_lr",
                    "weight_decay", "weight_decay_end", "grad_clip", "skip_nonfinite", "limit_rows",
                    "num_workers", "decode_threads", "predictor_depth", "drop_path", "seed")
    problems = common_problems(cfg, CHOICES, positive, non_negative)
    if cfg.targets == "online" and not cfg.teacher_ckpt:
        problems.append("targets='online' needs teacher_ckpt=PATH (or random:ARCH:SEED)")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def resolve(name: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Preset ``name`` with `--set` overrides applied, type-checked and validated."""
    base = get_preset(name)
    values = parse_overrides(overrides)
    return validate(replace(base, **values))


def describe(cfg: Any) -> list[str]:
    """``key = value`` lines for `salt exp show` (every key but ``notes``, in order)."""
    keys = [k for k in valid_keys(type(cfg)) if k != "notes"]
    width = max(len(k) for k in keys)
    return [f"{k.ljust(width)} = {getattr(cfg, k)!r}" for k in keys]


def diff(a: Any, b: Any, ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Keys whose values differ (``key: a -> b``) between two configs of one class, skipping
    ``ignore`` and ``notes``."""
    return [
        f"{k}: {getattr(a, k)!r} -> {getattr(b, k)!r}"
        for k in valid_keys(type(a))
        if k not in ignore and k != "notes" and getattr(a, k) != getattr(b, k)
    ]

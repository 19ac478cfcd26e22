"""The keys every training run has: one frozen base dataclass for stage 1 and stage 2.

The training loop (``loop.py``) runs both stages, so both configs carry the keys it, the
schedules (``optim.py``), the mask collator and the data stream read: view, masks,
optimisation and schedule, data loading, execution, logging and checkpoints.
:class:`LoopConfig` declares them once; ``TrainConfig`` (stage 2, ``experiments.py``) and
``TeacherTrainConfig`` (stage 1, ``teacher_experiments.py``) subclass it, add their model
keys and change a default where the stage's recipe differs.

Keys stay flat (``lr``, ``mask_ratio``, ...) so `--set key=value` needs no dotted paths,
and ``to_dict`` is the flat dict config.json and the checkpoints have always held (base
keys first, then the stage's). Range and choice checks of the shared keys live here too;
a stage adds its own in ``problems``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from salt_vla.errors import ConfigError
from salt_vla.trainer import overrides

C = TypeVar("C", bound="LoopConfig")

# Keys that may differ between a run and its resumption: they change how the run is
# executed or logged, never what it computes.
RUNTIME_KEYS = frozenset(
    {"num_workers", "prefetch_factor", "decode_threads", "log_every", "ckpt_every", "stop_at",
     "wandb_project", "wandb_run"}
)


@dataclass(frozen=True)
class LoopConfig:
    """The keys the loop reads, whatever the stage trains (defaults: stage 2's recipe).

    ``batch_size`` is the global batch per optimiser step: under torchrun with W processes and
    ``grad_accum`` A each process runs micro-batches of ``batch_size / (W * A)`` clips, so
    the schedule and the recipe mean the same thing on 1 or 8 GPUs.

    The class-level tables say which keys :meth:`problems` checks; a stage extends them with
    its own keys.
    """

    # String-valued keys that only take a few values.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "mask_strategy": ("ratio", "multiblock", "tube", "random"),
        "mask_truncate": ("tail", "random"),
        "loss": ("mse", "l1"),
        "precision": ("auto", "fp32", "bf16"),
        "device": ("auto", "cpu", "cuda"),
    }
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "batch_size", "grad_accum", "tubelet", "patch", "log_every", "ckpt_every",
        "prefetch_factor",
    )
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = (
        "epochs", "max_steps", "stop_at", "warmup_steps", "lr", "min_lr", "weight_decay",
        "weight_decay_end", "grad_clip", "skip_nonfinite", "limit_rows", "num_workers",
        "decode_threads", "seed",
    )
    # What `validated` calls this config in its error ("invalid config: ...").
    KIND: ClassVar[str] = "config"

    name: str = "custom"
    grad_checkpointing: bool = False  # recompute the trained blocks' activations in backward
    # --- view (the stage-2 store is checked against it; stage 1 decodes the videos with it)
    view: str = "ssv2-16x224"
    tubelet: int = 2
    patch: int = 16
    # --- masks
    mask_strategy: str = "multiblock"
    mask_ratio: float = 0.9
    mask_truncate: str = "tail"
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
    limit_rows: int = 0  # > 0: train on the first N rows (clips) only (overfitting checks)
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
        """JSON-able flat dict of every key (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Inverse of ``to_dict``; unknown keys, wrong types and bad values raise
        ``ConfigError``."""
        return cls(**overrides.values_from_dict(cls, d)).validated()

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Every key `--set` accepts, in declaration order."""
        return overrides.valid_keys(cls)

    @classmethod
    def parse_overrides(cls, items: Iterable[str]) -> dict[str, Any]:
        """`--set` items -> typed values for this class's keys (see ``overrides.py``)."""
        return overrides.parse_overrides(items, cls)

    def problems(self) -> list[str]:
        """Every range and choice problem of the shared keys (a stage extends it)."""
        problems = []
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                problems.append(f"{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        for key in self.POSITIVE:
            if getattr(self, key) <= 0:
                problems.append(f"{key}={getattr(self, key)}: must be > 0")
        for key in self.NON_NEGATIVE:
            if getattr(self, key) < 0:
                problems.append(f"{key}={getattr(self, key)}: must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            problems.append("epochs=0 and max_steps=0: set one of them")
        if self.min_lr > self.lr:
            problems.append(f"min_lr={self.min_lr} is above lr={self.lr}")
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio={self.mask_ratio}: must be in (0, 1)")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size={self.batch_size} is not divisible by grad_accum="
                            f"{self.grad_accum}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas={self.betas}: each must be in [0, 1)")
        return problems

    def validated(self: C) -> C:
        """``self`` if its values are in range, else one ``ConfigError`` listing every
        problem (so a user fixes them in one go, not one per run)."""
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid {self.KIND}: " + "; ".join(problems))
        return self


def describe(cfg: LoopConfig) -> list[str]:
    """``key = value`` lines for `salt exp show` (every key but ``notes``, in order)."""
    keys = [k for k in cfg.valid_keys() if k != "notes"]
    width = max(len(k) for k in keys)
    return [f"{k.ljust(width)} = {getattr(cfg, k)!r}" for k in keys]


def diff(a: LoopConfig, b: LoopConfig, ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Keys whose values differ (``key: a -> b``) between two configs of one class, skipping
    ``ignore`` and ``notes`` (the resume check: a run continues only with what it computed)."""
    return [
        f"{k}: {getattr(a, k)!r} -> {getattr(b, k)!r}"
        for k in a.valid_keys()
        if k not in ignore and k != "notes" and getattr(a, k) != getattr(b, k)
    ]

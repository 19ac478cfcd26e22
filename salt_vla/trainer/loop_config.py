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

from salt_vla.errors import ConfigError, nonfinite_fields
from salt_vla.trainer import overrides

C = TypeVar("C", bound="LoopConfig")

# Keys that may differ between a run and its resumption: they change how the run is
# executed or logged, never what it computes.
RUNTIME_KEYS = frozenset(
    {"num_workers", "prefetch_factor", "decode_threads", "log_every", "ckpt_every", "stop_at",
     "wandb_project", "wandb_run", "keep_checkpoints", "snapshot_every", "verify_reads"}
)
# Keys a resumption may raise to extend the run (see ``schedules.py`` for what happens to the
# learning-rate and weight-decay schedules then).
EXTEND_KEYS = frozenset({"epochs", "max_steps"})
RESUME_KEYS = RUNTIME_KEYS | EXTEND_KEYS

HELP = "help"  # the field-metadata entry holding a key's one-line description


def key(default: Any, help: str, **kw: Any) -> Any:
    """A config key: its default and its one-line description, declared together.

    The description is the one ``salt exp show`` writes beside the key and ``--keys`` lists;
    a subclass that only changes a default re-declares the key without one and inherits it
    (:func:`key_help`)."""
    return field(default=default, metadata={HELP: help}, **kw)


def key_help(cls: type, name: str) -> str:
    """The description of key ``name``: from the nearest class in ``cls``'s MRO that declared
    it with :func:`key` ("" when none did)."""
    for klass in cls.__mro__:
        own = getattr(klass, "__dataclass_fields__", {}).get(name)
        if own is not None and own.metadata.get(HELP):
            return str(own.metadata[HELP])
    return ""


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
        "mask_strategy": ("ratio", "multiblock", "tube", "random", "temporal"),
        "mask_truncate": ("tail", "random"),
        "mask_temporal_direction": ("both", "forward"),
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
        "decode_threads", "seed", "keep_checkpoints", "snapshot_every",
        "mask_temporal_max_context",
    )
    # What `validated` calls this config in its error ("invalid config: ...").
    KIND: ClassVar[str] = "config"
    # Old key names still accepted (in `--set` and config files, with a deprecation line;
    # in saved config dicts through ``upgrade_dict``): old name -> key.
    ALIASES: ClassVar[dict[str, str]] = {}
    # Keys holding a file path (or a non-path spelling such as random:ARCH:SEED): made
    # absolute before a run records them, so its config.json works from any directory.
    PATH_KEYS: ClassVar[tuple[str, ...]] = ()

    name: str = key("custom", "run name, shown by `salt status` and `salt report`")
    grad_checkpointing: bool = key(
        False, "recompute the trained blocks' activations in backward (less memory, slower)")
    # --- view (the stage-2 store is checked against it; stage 1 decodes the videos with it)
    view: str = key("ssv2-16x224", "view preset: frames, sampling and size of the clips "
                    "(stage 2: `store` takes the cache's own view)")
    tubelet: int = key(2, "frames per token along time")
    patch: int = key(16, "pixels per token side")
    # --- masks
    mask_strategy: str = key("multiblock", "masks: ratio, multiblock (V-JEPA's two groups), "
                             "tube or random")
    mask_ratio: float = key(0.9, "fraction of tokens masked (ratio, tube and random masks)")
    mask_truncate: str = key("tail", "how a batch's masks are cut to one count: drop the "
                             "tail or random tokens")
    # temporal-split masks (salt_vla/masking/temporal.py)
    mask_temporal_group: bool = key(False, "add a group that predicts later time steps from "
                                    "earlier ones (split drawn per batch)")
    mask_temporal_direction: str = key("both", "temporal group/strategy: both (either side "
                                       "may be context) or forward (earlier predicts later)")
    mask_temporal_max_context: int = key(0, "temporal masks: most context time steps; 0: up "
                                         "to T-1")
    mask_temporal_scale: tuple[float, float] = key(
        (1.0, 1.0), "multiblock blocks' time extent as a fraction range of the clip (V-JEPA: "
        "(1, 1), every block spans the clip)")
    # --- objective and optimisation
    loss: str = key("mse", "loss on the masked tokens: mse or l1")
    batch_size: int = key(32, "clips per optimiser step over all processes (global batch)")
    grad_accum: int = key(1, "micro-batches per optimiser step (batch_size must divide)")
    epochs: int = key(10, "passes over the data; the run's length unless max_steps > 0")
    max_steps: int = key(0, "> 0: run exactly this many optimiser steps (schedules span them)")
    stop_at: int = key(0, "> 0: checkpoint and stop after this step; schedules still span "
                       "the run")
    lr: float = key(1.5e-4, "peak learning rate: linear warmup to it, cosine to min_lr")
    min_lr: float = key(1e-5, "learning rate at the last step")
    warmup_steps: int = key(1000, "steps of linear learning-rate warmup")
    weight_decay: float = key(0.04, "AdamW weight decay at step 0 (cosine to "
                              "weight_decay_end)")
    weight_decay_end: float = key(0.4, "AdamW weight decay at the last step")
    betas: tuple[float, float] = key((0.9, 0.95), "AdamW betas (beta1, beta2)")
    eps: float = key(1e-8, "AdamW epsilon")
    grad_clip: float = key(0.02, "clip the global gradient norm to this; 0 disables "
                           "(V-JEPA uses 10)")
    skip_nonfinite: int = key(0, "tolerate this many non-finite-loss steps (skipped) before "
                              "stopping; seen every log_every steps, so a stop comes up to "
                              "log_every-1 steps late, with the state before the bad step")
    # --- data
    limit_rows: int = key(0, "> 0: train on the first N rows (clips) only (overfitting "
                          "checks)")
    num_workers: int = key(8, "DataLoader worker processes decoding frames")
    prefetch_factor: int = key(2, "batches each loader worker prepares ahead")
    decode_threads: int = key(0, "> 1 with num_workers=0: decode in threads (no /dev/shm)")
    verify_reads: bool = key(True, "check each latent row's crc32c against cache.json as it is "
                             "read (a mismatch names the row and shard); false skips the check")
    # --- execution
    seed: int = key(0, "seed of the initial weights, the data order and the masks")
    device: str = key("auto", "auto (this process's GPU if any, else cpu), cpu or cuda")
    precision: str = key("auto", "auto: bf16 autocast on CUDA (fp32 master weights), fp32 "
                         "on CPU; fp32; bf16")
    compile: bool = key(False, "torch.compile the model (slow first steps)")
    # --- logging and checkpoints
    log_every: int = key(10, "steps between metric lines (console, metrics.jsonl, W&B)")
    ckpt_every: int = key(1000, "steps between checkpoints (one is also written at the end)")
    keep_checkpoints: int = key(2, "earlier checkpoints kept beside the latest (ckpt-STEP.pt); "
                                "a resume falls back to them when the latest does not load")
    snapshot_every: int = key(0, "> 0: also checkpoint every N steps and keep those for good "
                              "(never rotated out; for learning curves of one run)")
    wandb_project: str = key("salt-vla", "W&B project (with --wandb online or offline)")
    wandb_run: str = key("", "W&B run name; empty: the run directory's name")
    notes: str = key("", "one line about the config, shown by `salt exp list`", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able flat dict of every key (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Inverse of ``to_dict`` (also of the dicts older versions saved: ``upgrade_dict``);
        unknown keys, wrong types and bad values raise ``ConfigError``."""
        return cls(**overrides.values_from_dict(cls, cls.upgrade_dict(d))).validated()

    @classmethod
    def upgrade_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A config dict saved by an older version, in today's key names (a stage overrides
        this when it renames a key; the base has renamed none)."""
        return d

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Every key `--set` accepts, in declaration order."""
        return overrides.valid_keys(cls)

    @classmethod
    def parse_overrides(cls, items: Iterable[str]) -> dict[str, Any]:
        """`--set` items -> typed values for this class's keys (see ``overrides.py``)."""
        return overrides.parse_overrides(items, cls)

    def problems(self) -> list[str]:
        """Every range and choice problem of the shared keys (a stage extends it); first any
        NaN or infinite float, of any key of the stage's class (no range check sees those)."""
        problems = [f"{item}: must be a finite number" for item in nonfinite_fields(self)]
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: choose one of "
                                f"{', '.join(allowed)}")
        for name in self.POSITIVE:
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)}: must be > 0")
        for name in self.NON_NEGATIVE:
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be >= 0")
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


def diff(a: LoopConfig, b: LoopConfig, ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Keys whose values differ (``key: a -> b``) between two configs of one class, skipping
    ``ignore`` and ``notes`` (the resume check: a run continues only with what it computed)."""
    return [
        f"{k}: {getattr(a, k)!r} -> {getattr(b, k)!r}"
        for k in a.valid_keys()
        if k not in ignore and k != "notes" and getattr(a, k) != getattr(b, k)
    ]

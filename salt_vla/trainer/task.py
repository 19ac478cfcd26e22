"""What the training loop trains: the objective-specific half of a run.

The loop (``loop.py``) owns everything a run does the same way whatever it learns: the data
stream, masks collation, schedules, AdamW, gradient accumulation, non-finite handling,
checkpoints, resume and logging, all read from the keys of the base config
(:class:`~salt_vla.trainer.loop_config.LoopConfig`). A :class:`Task` supplies the rest, for
its own config class (a ``LoopConfig`` subclass):

- ``config_type``: the frozen config class (``from_dict`` re-reads a checkpoint's config);
- ``open_sources``: where the clips (and targets, if any) come from;
- ``build``: the model, one ``nn.Module`` whose ``forward(x, masks, targets)`` returns
  ``(loss, stats)`` with ``stats`` = detached ``[raw loss, normalised loss, cosine]``;
- ``parts``: the named sub-modules optimised and checkpointed (checkpoint keys);
- ``make_teacher``: the teacher computing targets online, or None.

The masks are not the task's: their keys are the loop's, so the loop builds them.
:data:`SALT_TASK` is stage 2 (`salt train`); the stage-1 pixel teacher's task lives in
``teacher_train.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from salt_vla.models.teacher import Teacher
from salt_vla.trainer.build import build_model
from salt_vla.trainer.experiments import TrainConfig
from salt_vla.trainer.loop_config import LoopConfig
from salt_vla.trainer.sources import DataSources, open_sources

ConfigT = TypeVar("ConfigT", bound=LoopConfig)


class Task(Protocol[ConfigT]):
    """The objective-specific part of a training run for configs of type ``ConfigT`` (see the
    module docstring). ``run`` is the loop's ``RunSpec`` (loop.py imports this module)."""

    name: str
    config_type: type[ConfigT]

    def open_sources(
        self, cfg: ConfigT, run: Any, echo: Callable[[str], None]
    ) -> DataSources: ...

    def build(self, cfg: ConfigT, sources: DataSources) -> nn.Module: ...

    def parts(self, model: nn.Module) -> dict[str, nn.Module]: ...

    def make_teacher(
        self, cfg: ConfigT, sources: DataSources, device: torch.device
    ) -> Teacher | None: ...


class SaltTask:
    """Stage 2: student + predictor regress the teacher's latents (cached or online)."""

    name = "salt"
    config_type = TrainConfig

    def open_sources(
        self, cfg: TrainConfig, run: Any, echo: Callable[[str], None]
    ) -> DataSources:
        return open_sources(cfg, run, echo)

    def build(self, cfg: TrainConfig, sources: DataSources) -> nn.Module:
        return build_model(cfg, sources.num_frames, sources.img_size)

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"student": model.student, "predictor": model.predictor}

    def make_teacher(
        self, cfg: TrainConfig, sources: DataSources, device: torch.device
    ) -> Teacher | None:
        return sources.make_teacher(device) if cfg.targets == "online" else None


SALT_TASK = SaltTask()

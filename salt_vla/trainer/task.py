"""What the training loop trains: the objective-specific half of a run.

The loop (``loop.py``) owns everything a run does the same way whatever it learns: the data
stream, masks collation, schedules, AdamW, gradient accumulation, non-finite handling,
checkpoints, resume and logging. A :class:`Task` supplies the rest:

- ``config_type``: the frozen config class (``from_dict`` re-reads a checkpoint's config);
- ``open_sources``: where the clips (and targets, if any) come from;
- ``build``: the model, one ``nn.Module`` whose ``forward(x, masks, targets)`` returns
  ``(loss, stats)`` with ``stats`` = detached ``[raw loss, normalised loss, cosine]``;
- ``parts``: the named sub-modules optimised and checkpointed (checkpoint keys);
- ``mask_config``, ``make_teacher`` (online targets, or None).

:data:`SALT_TASK` is stage 2 (`salt train`); the stage-1 pixel teacher's task lives in
``teacher_train.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from salt_vla.masking.config import MaskConfig
from salt_vla.trainer.build import build_model, mask_config
from salt_vla.trainer.experiments import TrainConfig
from salt_vla.trainer.sources import DataSources, open_sources


class Task(Protocol):
    """The objective-specific part of a training run (see the module docstring)."""

    name: str
    config_type: Any

    def open_sources(self, cfg: Any, run: Any, echo: Callable[[str], None]) -> DataSources: ...

    def build(self, cfg: Any, sources: DataSources) -> nn.Module: ...

    def parts(self, model: nn.Module) -> dict[str, nn.Module]: ...

    def mask_config(self, cfg: Any) -> MaskConfig: ...

    def make_teacher(self, cfg: Any, sources: DataSources, device: torch.device) -> Any: ...


class SaltTask:
    """Stage 2: student + predictor regress the teacher's latents (cached or online)."""

    name = "salt"
    config_type = TrainConfig

    def open_sources(self, cfg: Any, run: Any, echo: Callable[[str], None]) -> DataSources:
        return open_sources(cfg, run, echo)

    def build(self, cfg: Any, sources: DataSources) -> nn.Module:
        return build_model(cfg, sources.num_frames, sources.img_size)

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"student": model.student, "predictor": model.predictor}

    def mask_config(self, cfg: Any) -> MaskConfig:
        return mask_config(cfg)

    def make_teacher(self, cfg: Any, sources: DataSources, device: torch.device) -> Any:
        return sources.make_teacher(device) if cfg.targets == "online" else None


SALT_TASK = SaltTask()

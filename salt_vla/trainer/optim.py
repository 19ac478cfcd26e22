"""AdamW over the trained parts (stage 2: student and predictor; stage 1: encoder and pixel
decoder): two parameter groups (decayed / not decayed) whose learning rate and weight decay
the loop sets every step from the schedules. Only the loop's keys (:class:`LoopConfig`) are
read, so both stages share it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from salt_vla.models.student import split_weight_decay
from salt_vla.trainer.loop_config import LoopConfig
from salt_vla.trainer.schedules import Legs, lr_at, weight_decay_at


def build_optimizer(
    modules: Iterable[nn.Module], cfg: LoopConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norm weights, position tables and mask tokens.

    Each group carries ``apply_wd``; :func:`set_schedules` only gives the decayed group a
    non-zero weight decay. The fused kernel is used on CUDA (one launch for all tensors).
    """
    decay, no_decay = split_weight_decay(list(modules))
    groups = [
        {"params": decay, "apply_wd": True, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def set_schedules(
    optimizer: torch.optim.Optimizer, step: int, total: int, cfg: LoopConfig,
    legs: Legs | None = None,
) -> tuple[float, float]:
    """Set every group's lr and weight decay for optimiser step ``step``; returns both
    (``legs``: an extended run's schedule legs, see ``schedules.py``)."""
    lr = lr_at(step, total, cfg.warmup_steps, cfg.lr, cfg.min_lr, legs)
    wd = weight_decay_at(step, total, cfg.weight_decay, cfg.weight_decay_end, legs)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0
    return lr, wd

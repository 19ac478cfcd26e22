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
    modules: Iterable[nn.Module], cfg: LoopConfig, device: torch.device,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norm weights, position tables and mask tokens.

    Each group carries ``apply_wd``; :func:`set_schedules` only gives the decayed group a
    non-zero weight decay. ``fused`` (default: on CUDA) picks the fused kernel: one launch
    for all tensors, and a step :func:`step_unless` can cancel on the device. The CPU keeps
    the unfused kernel by default: its results are those every CPU run has had (the fused
    CPU kernel rounds differently in the last bit).
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
        fused=device.type == "cuda" if fused is None else fused,
    )


def step_unless(optimizer: torch.optim.Optimizer, apply: torch.Tensor) -> None:
    """``optimizer.step()`` if the 0-d bool tensor ``apply`` is true; else leave weights and
    optimiser state exactly as if the step had not been called.

    Fused AdamW decides on the device, without a host read: ``found_inf`` = not ``apply`` (the
    mechanism ``GradScaler`` uses) makes the fused kernel return before touching weights and
    moments, and torch takes back the step counter's increment (+1 then -1, exact in fp32).
    The unfused kernels cannot be cancelled on the device, so they read ``apply`` on the host:
    the loop uses them only on the CPU, where kernels run eagerly and the read waits for
    nothing.
    """
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = (~apply).to(torch.float32)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(apply):
        optimizer.step()


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

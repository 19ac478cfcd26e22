"""The SALT objective: student on context tokens -> predictor -> loss against the teacher's
latents at the target tokens, averaged over mask groups; plus the metrics we log.

Metrics are comparable across teachers: the normalised loss divides by the loss of always
predicting the batch's per-channel mean target (for MSE: the targets' variance), so 1.0 means
"no better than the mean" whatever the teacher's scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salt_vla.errors import ConfigError
from salt_vla.models.predictor import Predictor
from salt_vla.models.student import Student

Masks = list[tuple[torch.Tensor, torch.Tensor]]


def gather_targets(targets: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` latents at ``[B, Nt]`` token indices -> ``[B, Nt, D]``."""
    return torch.gather(targets, 1, tgt_idx[..., None].expand(-1, -1, targets.shape[-1]))


def token_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over tokens and channels of squared (``mse``) or absolute (``l1``) error."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    raise ConfigError(f"loss={kind!r}: choose 'mse' or 'l1'")


def mean_baseline(target: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss of predicting the batch's per-channel mean target everywhere."""
    flat = target.reshape(-1, target.shape[-1])
    return token_loss(flat.mean(0, keepdim=True).expand_as(flat), flat, kind)


def group_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask group's loss and its logged stats ``[loss, normalised loss, cosine]``."""
    loss = token_loss(pred, target, kind)
    with torch.no_grad():
        norm = loss.detach() / mean_baseline(target, kind).clamp_min(1e-12)
        cos = F.cosine_similarity(pred.detach(), target, dim=-1).mean()
        stats = torch.stack([loss.detach(), norm, cos])
    return loss, stats


def mean_over_groups(
    groups: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and mean stats over mask groups (each from :func:`group_loss`)."""
    return (torch.stack([g[0] for g in groups]).mean(),
            torch.stack([g[1] for g in groups]).mean(0))


TARGET_CENTERS = ("none", "clip")


def center_targets(targets: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` latents minus each clip's mean token, scaled to unit RMS per clip.

    Why: a small teacher's latents are mostly a per-clip code (95% of their variance on the
    demo is the clip mean), which a student predicts from any visible token without knowing
    where anything is or which way it moves. Centred, the targets hold only what differs
    between a clip's positions and time steps (where the object is at each time step), so
    that is all the loss can ask for. The per-clip scale keeps the loss near 1 at the start.
    """
    t = targets.float()
    t = t - t.mean(dim=1, keepdim=True)
    rms = t.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-6)
    return t / rms


class SaltModel(nn.Module):
    """Student + predictor as one module, so DDP wraps (and syncs) both with one forward.

    ``target_center``: ``"none"`` (the teacher's latents as cached) or ``"clip"``
    (:func:`center_targets`).
    """

    def __init__(self, student: Student, predictor: Predictor, loss: str = "mse",
                 target_center: str = "none") -> None:
        super().__init__()
        if target_center not in TARGET_CENTERS:
            raise ValueError(f"target_center={target_center!r}: choose one of {TARGET_CENTERS}")
        self.student = student
        self.predictor = predictor
        self.loss_kind = loss
        self.target_center = target_center

    def forward(
        self, x: torch.Tensor, masks: Masks, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (mean over groups) and detached fp32 metrics ``[raw, normalised, cosine]``.

        ``x``: normalised video ``[B, 3, T, H, W]``; ``masks``: per group ``(ctx_idx [B, Nc],
        tgt_idx [B, Nt])``; ``targets``: teacher latents ``[B, N, D]`` (any float dtype).
        """
        if self.target_center == "clip":
            targets = center_targets(targets)
        losses = []
        for ctx_idx, tgt_idx in masks:
            z = self.student(x, ctx_idx)
            pred = self.predictor(z, ctx_idx, tgt_idx).float()
            losses.append(group_loss(pred, gather_targets(targets, tgt_idx).float(),
                                     self.loss_kind))
        return mean_over_groups(losses)

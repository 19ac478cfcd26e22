"""V-JEPA-style predictor: from the student's context tokens, predict teacher latents at the
target positions.

Context tokens are projected to the (narrow) predictor width and given their fixed 3-D
positions; every target position gets the same learned mask token plus its position. Both
sets go through timm blocks together and only the target outputs are projected to the
teacher's width (the parts it shares with the pixel decoder: ``target_head.py``). No autocast
here: the trainer owns precision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.student import StudentConfig
from salt_vla.models.target_head import TargetHead


@dataclass(frozen=True)
class PredictorConfig:
    """Predictor architecture: ``in_dim`` = student width, ``out_dim`` = teacher width.

    ``ctx_pos``: add the position table to the context tokens (V-JEPA's predictor does).
    Off, the predictor knows where its targets are but learns where the context tokens are
    only from what the student writes into them, so the student must keep position (and
    with it, order in time) in its output tokens instead of dropping it (issue 13, (f)).
    """

    in_dim: int
    out_dim: int
    width: int = 384
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    num_frames: int = 16
    img_size: int = 224
    tubelet: int = 2
    patch: int = 16
    grad_checkpointing: bool = False
    ctx_pos: bool = True

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(
                f"predictor width={self.width} is not divisible by heads={self.heads}")
        if min(self.in_dim, self.out_dim, self.width) <= 0 or self.depth < 0:
            raise ConfigError(f"predictor dims must be positive and depth >= 0: {self}")
        token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)  # sizes divide

    @property
    def grid(self) -> TokenGrid:
        return token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)

    @classmethod
    def for_student(
        cls, student: StudentConfig, out_dim: int, **overrides: object
    ) -> PredictorConfig:
        """Config matching a student's width and token grid; ``overrides`` set other fields."""
        base = cls(
            in_dim=student.dims[0],
            out_dim=out_dim,
            num_frames=student.num_frames,
            img_size=student.img_size,
            tubelet=student.tubelet,
            patch=student.patch,
        )
        return replace(base, **overrides)


class Predictor(TargetHead):
    """Predicts ``[B, Nt, out_dim]`` target latents from ``[B, Nc, in_dim]`` context tokens."""

    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__(
            in_dim=cfg.in_dim, out_dim=cfg.out_dim, width=cfg.width, depth=cfg.depth,
            heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
            drop_path=cfg.drop_path, grid=cfg.grid, grad_checkpointing=cfg.grad_checkpointing,
            head_name="proj", in_norm=False, source="student",
        )
        self.cfg = cfg

    def forward(
        self, ctx_tokens: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> torch.Tensor:
        """Predict the latents at ``tgt_idx`` ``[B, Nt]``, in that order -> ``[B, Nt, out_dim]``.

        ``ctx_tokens`` ``[B, Nc, in_dim]`` are the student's outputs for the positions
        ``ctx_idx`` ``[B, Nc]`` (same order). Indices are time-major grid positions.
        """
        n_ctx = ctx_tokens.shape[1]
        # No casts: under autocast the fp32 table keeps the residual stream in fp32.
        x = self.embed_context(ctx_tokens, ctx_idx, tgt_idx)
        if self.cfg.ctx_pos:
            x = x + self.pos_embed[ctx_idx]
        m = self.mask_token + self.pos_embed[tgt_idx]
        z = self.run_blocks(torch.cat([x, m], dim=1))  # [B, Nc + Nt, width]
        return self.project(z[:, n_ctx:])

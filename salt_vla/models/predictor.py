"""V-JEPA-style predictor: from the student's context tokens, predict teacher latents at the
target positions.

Context tokens are projected to the (narrow) predictor width and given their fixed 3-D
positions; every target position gets the same learned mask token plus its position. Both
sets go through timm blocks together and only the target outputs are projected to the
teacher's width. No autocast here: the trainer owns precision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.posembed import sincos_pos_embed_3d
from salt_vla.models.student import (
    LayerNorm,
    StudentConfig,
    check_context,
    init_vit_weights,
    make_blocks,
    run_blocks,
)


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
            raise ValueError(f"predictor width={self.width} is not divisible by heads={self.heads}")
        if min(self.in_dim, self.out_dim, self.width) <= 0 or self.depth < 0:
            raise ValueError(f"predictor dims must be positive and depth >= 0: {self}")
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


class Predictor(nn.Module):
    """Predicts ``[B, Nt, out_dim]`` target latents from ``[B, Nc, in_dim]`` context tokens."""

    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._grid = cfg.grid
        self.embed = nn.Linear(cfg.in_dim, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        # Not persistent: a pure function of (width, grid), recomputed on construction.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_3d(cfg.width, self._grid), persistent=False
        )
        self.blocks = make_blocks(
            cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_path
        )
        self.norm = LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.out_dim)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def grid(self) -> TokenGrid:
        return self._grid

    def no_weight_decay_names(self) -> set[str]:
        """The mask token is an embedding, not a weight matrix: no weight decay on it."""
        return {"mask_token"}

    def forward(
        self, ctx_tokens: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> torch.Tensor:
        """Predict the latents at ``tgt_idx`` ``[B, Nt]``, in that order -> ``[B, Nt, out_dim]``.

        ``ctx_tokens`` ``[B, Nc, in_dim]`` are the student's outputs for the positions
        ``ctx_idx`` ``[B, Nc]`` (same order). Indices are time-major grid positions.
        """
        check_context(ctx_tokens, ctx_idx, tgt_idx, self.cfg.in_dim, self._grid.num_tokens,
                      "student")
        n_ctx = ctx_tokens.shape[1]
        x = self.embed(ctx_tokens)
        # No casts: under autocast the fp32 table keeps the residual stream in fp32.
        if self.cfg.ctx_pos:
            x = x + self.pos_embed[ctx_idx]
        m = self.mask_token + self.pos_embed[tgt_idx]
        z = run_blocks(
            self.blocks,
            torch.cat([x, m], dim=1),
            self.grad_checkpointing and self.training and torch.is_grad_enabled(),
        )
        return self.proj(self.norm(z[:, n_ctx:]))

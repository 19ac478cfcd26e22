"""VideoMAE-style pixel decoder for the stage-1 teacher: encoder tokens -> tubelet pixels.

The encoder sees only the context (visible) tokens. The decoder rebuilds the full token grid:
the encoder's outputs sit at their context positions, one learned mask token fills every
other position, each token gets its fixed 3-D position, and a few narrow transformer blocks
run over all of them. Only the target positions are projected to pixels (``tubelet x patch
x patch x 3`` values each), so no work is spent on the output of tokens the loss ignores.

The encoder is exported without a final norm (the official VideoMAEv2 layout has none), so
the decoder starts with its own LayerNorm on the encoder's raw block output. No autocast
here: the trainer owns precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.posembed import sincos_pos_embed_3d
from salt_vla.models.student import (
    LayerNorm,
    check_context,
    init_vit_weights,
    make_blocks,
    run_blocks,
)


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Decoder architecture: ``in_dim`` = encoder width; the grid comes from the clip size."""

    in_dim: int
    width: int = 384
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    num_frames: int = 16
    img_size: int = 224
    tubelet: int = 2
    patch: int = 16
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.width <= 0 or self.in_dim <= 0 or self.depth < 0 or self.heads <= 0:
            raise ConfigError(f"decoder dims must be positive and depth >= 0: {self}")
        if self.width % self.heads:
            raise ConfigError(f"decoder width={self.width} is not divisible by heads={self.heads}")
        token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)  # sizes divide

    @property
    def grid(self) -> TokenGrid:
        return token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)

    @property
    def pixels_per_token(self) -> int:
        """Values one token reconstructs: ``tubelet * patch * patch * 3``."""
        return self.tubelet * self.patch * self.patch * 3


class PixelDecoder(nn.Module):
    """``[B, Nc, in_dim]`` context tokens -> ``[B, Nt, tubelet*patch*patch*3]`` pixels."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._grid = cfg.grid
        self.in_norm = LayerNorm(cfg.in_dim)
        self.embed = nn.Linear(cfg.in_dim, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        # Not persistent: a pure function of (width, grid), recomputed on construction.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_3d(cfg.width, self._grid), persistent=False
        )
        self.blocks = make_blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, True, 0.0)
        self.norm = LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.pixels_per_token)
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
        """Pixels of the tokens at ``tgt_idx`` ``[B, Nt]``, in that order.

        ``ctx_tokens`` ``[B, Nc, in_dim]`` are the encoder's outputs for ``ctx_idx``
        ``[B, Nc]`` (same order); every grid position not in ``ctx_idx`` is a mask token.
        """
        n_tok, width = self._grid.num_tokens, self.cfg.width
        check_context(ctx_tokens, ctx_idx, tgt_idx, self.cfg.in_dim, n_tok, "encoder")
        batch = ctx_tokens.shape[0]
        x = self.embed(self.in_norm(ctx_tokens))
        full = self.mask_token.to(x.dtype).expand(batch, n_tok, width)
        full = full.scatter(1, ctx_idx[..., None].expand(-1, -1, width), x)
        # No cast: under autocast the fp32 table keeps the residual stream in fp32.
        z = run_blocks(
            self.blocks,
            full + self.pos_embed,
            self.grad_checkpointing and self.training and torch.is_grad_enabled(),
        )
        z = torch.gather(z, 1, tgt_idx[..., None].expand(-1, -1, z.shape[-1]))
        return self.head(self.norm(z))

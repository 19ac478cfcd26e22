"""VideoMAE-style pixel decoder for the stage-1 teacher: encoder tokens -> tubelet pixels.

The encoder sees only the context (visible) tokens. The decoder rebuilds the full token grid:
the encoder's outputs sit at their context positions, one learned mask token fills every
other position, each token gets its fixed 3-D position, and a few narrow transformer blocks
run over all of them. Only the target positions are projected to pixels (``tubelet x patch
x patch x 3`` values each), so no work is spent on the output of tokens the loss ignores.

The encoder is exported without a final norm (the official VideoMAEv2 layout has none), so
the decoder starts with its own LayerNorm on the encoder's raw block output. The parts it
shares with the stage-2 predictor live in ``target_head.py``. No autocast here: the trainer
owns precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.target_head import TargetHead


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


class PixelDecoder(TargetHead):
    """``[B, Nc, in_dim]`` context tokens -> ``[B, Nt, tubelet*patch*patch*3]`` pixels."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__(
            in_dim=cfg.in_dim, out_dim=cfg.pixels_per_token, width=cfg.width, depth=cfg.depth,
            heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, drop_path=0.0,
            grid=cfg.grid, grad_checkpointing=cfg.grad_checkpointing, head_name="head",
            in_norm=True, source="encoder",
        )
        self.cfg = cfg

    def forward(
        self, ctx_tokens: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> torch.Tensor:
        """Pixels of the tokens at ``tgt_idx`` ``[B, Nt]``, in that order.

        ``ctx_tokens`` ``[B, Nc, in_dim]`` are the encoder's outputs for ``ctx_idx``
        ``[B, Nc]`` (same order); every grid position not in ``ctx_idx`` is a mask token.
        """
        x = self.embed_context(ctx_tokens, ctx_idx, tgt_idx)  # [B, Nc, width]
        batch, width = x.shape[0], x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(batch, self.grid.num_tokens, width)
        full = full.scatter(1, ctx_idx[..., None].expand(-1, -1, width), x)
        # No cast: under autocast the fp32 table keeps the residual stream in fp32.
        z = self.run_blocks(full + self.pos_embed)  # [B, N, width]: the whole grid
        return self.project(torch.gather(z, 1, tgt_idx[..., None].expand(-1, -1, width)))

"""VideoViT: the student's network in timm's ViT key layout, for clips of any shape.

This is what `salt export` writes and ``salt_vla.load_encoder`` builds. The layers are the
student's (:mod:`salt_vla.models.student`: tubelet Conv3d, fixed 3-D sin-cos positions, timm
``Block``s, final LayerNorm eps 1e-6), computing the same numbers; only the names follow
``timm.models.vision_transformer.VisionTransformer`` (built with ``class_token=False,
global_pool='avg', fc_norm=False, num_classes=0``):

- student ``patch_embed.weight`` ``[D, 3, t, p, p]`` / ``.bias`` -> ``patch_embed.proj.weight`` /
  ``.bias`` (timm's name; its layer is a Conv2d ``[D, 3, p, p]``, this one a Conv3d);
- the student's unsaved position buffer ``[N, D]`` -> ``pos_embed`` ``[1, N, D]`` (timm's shape;
  timm learns it, here it is the fixed sin-cos table);
- ``blocks.{i}.*`` (timm ``Block``s in both) and ``norm.*``: the same names.

The training student keeps its own names (checkpoints must keep loading); the mapping is
:data:`STUDENT_TO_VIT`. ``pos_embed`` is stored for codebases that expect it, but it is fixed:
the table for any grid is recomputed from the positions (:meth:`VideoViT.position_table`), so
one network takes clips of another frame count or crop size (:func:`~salt_vla.models.posembed.
resampled_positions` says where each token sits, per axis: ``time_positions`` /
``space_positions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.posembed import POSITION_MODES, resampled_positions, sincos_table_3d
from salt_vla.models.student import LayerNorm, init_vit_weights, make_blocks, run_blocks
from salt_vla.models.teacher import PatchEmbed3d

# Student parameter name -> VideoViT (timm) name; every other key is the same in both.
STUDENT_TO_VIT: dict[str, str] = {
    "patch_embed.weight": "patch_embed.proj.weight",
    "patch_embed.bias": "patch_embed.proj.bias",
}


def student_to_vit_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A student state dict under VideoViT's names (without ``pos_embed``)."""
    return {STUDENT_TO_VIT.get(k, k): v for k, v in state.items()}


@dataclass(frozen=True)
class VideoViTConfig:
    """Architecture plus the native clip shape (the one it was trained on) and where tokens of
    other shapes sit (:data:`~salt_vla.models.posembed.POSITION_MODES`, per axis)."""

    embed_dim: int
    depth: int
    heads: int
    num_frames: int
    img_size: int
    tubelet: int = 2
    patch: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    time_positions: str = "scaled"
    space_positions: str = "scaled"

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by heads={self.heads}")
        for name in ("time_positions", "space_positions"):
            if getattr(self, name) not in POSITION_MODES:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of "
                                  f"{', '.join(POSITION_MODES)}")
        token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)  # sizes divide

    @property
    def grid(self) -> TokenGrid:
        """The native token grid."""
        return token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)


class VideoViT(nn.Module):
    """ViT over tubelet tokens; ``forward_features`` of normalised ``[B, 3, T, H, W]`` ->
    ``[B, t*h*w, D]`` for any ``T``, ``H``, ``W`` the tubelet and patch divide."""

    def __init__(self, cfg: VideoViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3d(cfg.embed_dim, cfg.tubelet, cfg.patch)
        # Stored (timm has it) but fixed: load checks it against the formula.
        self.register_buffer("pos_embed", self.position_table(cfg.grid)[None])
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.heads, cfg.mlp_ratio,
                                  cfg.qkv_bias, 0.0)
        self.norm = LayerNorm(cfg.embed_dim)
        self._tables: dict[tuple[TokenGrid, torch.device, torch.dtype], torch.Tensor] = {}
        self.apply(init_vit_weights)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def grid(self) -> TokenGrid:
        """The native token grid (the training clips')."""
        return self.cfg.grid

    def grid_for(self, num_frames: int, height: int, width: int) -> TokenGrid:
        """The token grid of a ``num_frames x height x width`` clip."""
        c = self.cfg
        if num_frames % c.tubelet or height % c.patch or width % c.patch:
            raise ConfigError(
                f"a clip of {num_frames} frames x {height} x {width} px does not cut into "
                f"tubelets of {c.tubelet} frames x {c.patch} x {c.patch} px; use a frame count "
                f"divisible by {c.tubelet} and sizes divisible by {c.patch}"
            )
        return TokenGrid(num_frames // c.tubelet, height // c.patch, width // c.patch)

    def position_table(self, grid: TokenGrid) -> torch.Tensor:
        """``[N, D]`` float32 position table of ``grid``: on the native grid the training
        table bit for bit (the same formula at the same integer positions)."""
        native, c = self.cfg.grid, self.cfg
        return sincos_table_3d(
            c.embed_dim,
            resampled_positions(native.t, grid.t, c.time_positions),
            resampled_positions(native.h, grid.h, c.space_positions),
            resampled_positions(native.w, grid.w, c.space_positions),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised video ``[B, 3, T, H, W]`` -> tokens with positions ``[B, N, D]``."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected normalised video [B, 3, T, H, W], got {tuple(x.shape)}")
        grid = self.grid_for(*x.shape[2:])
        weight = self.patch_embed.proj.weight
        key = (grid, weight.device, weight.dtype)
        table = self._tables.get(key)
        if table is None:
            # fp32 weights: an fp32 table, so under autocast the residual stream stays fp32 as
            # in training; a bf16/fp16 export adds it in its own type.
            table = self._tables[key] = self.position_table(grid).to(weight.device, weight.dtype)
        return self.patch_embed(x) + table

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of normalised ``[B, 3, T, H, W]`` clips -> ``[B, N, D]``, time-major."""
        return self.norm(run_blocks(self.blocks, self.embed(x), False))

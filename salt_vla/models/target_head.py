"""The body the two context -> target heads share: the stage-2 predictor (teacher latents) and
the stage-1 pixel decoder (tubelet pixels).

Both take an encoder's outputs at the context (visible) positions and answer at the target
positions: the context tokens are projected to a narrow width, every target position is
one learned mask token, each token gets its fixed 3-D sin-cos position, timm blocks run over
both sets together, and a LayerNorm + linear layer project the target outputs. They differ
only in how the two sets are laid out for the blocks (the predictor concatenates context and
target tokens; the decoder rebuilds the whole grid), so each keeps its own ``forward``.

The sub-modules are attributes of the head itself (no wrapper module): their names are the
state-dict keys of existing checkpoints (``embed.*``, ``mask_token``, ``blocks.N.*``,
``norm.*`` and ``proj.*`` / ``head.*``), and they are created in the order the weights are
drawn from torch's RNG, so a seeded model gets the same numbers it always got.
"""

from __future__ import annotations

import torch
from torch import nn

from salt_vla.models.grid import TokenGrid
from salt_vla.models.posembed import sincos_pos_embed_3d
from salt_vla.models.student import (
    LayerNorm,
    check_context,
    init_vit_weights,
    make_blocks,
    run_blocks,
)


class TargetHead(nn.Module):
    """Shared parts of a head that maps ``[B, Nc, in_dim]`` context tokens to ``[B, Nt,
    out_dim]`` outputs at target positions of ``grid`` (see the module docstring).

    ``head_name``: the attribute (state-dict prefix) of the output layer, ``"proj"`` for the
    predictor and ``"head"`` for the pixel decoder. ``in_norm``: a LayerNorm on the incoming
    tokens first (the pixel decoder's, because the VideoMAEv2 encoder has no final norm).
    ``source`` names the encoder in input errors ("student", "encoder").
    """

    def __init__(
        self, *, in_dim: int, out_dim: int, width: int, depth: int, heads: int,
        mlp_ratio: float, qkv_bias: bool, drop_path: float, grid: TokenGrid,
        grad_checkpointing: bool, head_name: str, in_norm: bool, source: str,
    ) -> None:
        super().__init__()
        self._grid = grid
        self._in_dim = in_dim
        self._source = source
        self._head_name = head_name
        # Identity adds no state-dict keys: the predictor's checkpoints have no in_norm.
        self.in_norm = LayerNorm(in_dim) if in_norm else nn.Identity()
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # Not persistent: a pure function of (width, grid), recomputed on construction.
        self.register_buffer("pos_embed", sincos_pos_embed_3d(width, grid), persistent=False)
        self.blocks = make_blocks(width, depth, heads, mlp_ratio, qkv_bias, drop_path)
        self.norm = LayerNorm(width)
        setattr(self, head_name, nn.Linear(width, out_dim))
        self.grad_checkpointing = grad_checkpointing
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def grid(self) -> TokenGrid:
        return self._grid

    def no_weight_decay_names(self) -> set[str]:
        """The mask token is an embedding, not a weight matrix: no weight decay on it."""
        return {"mask_token"}

    def embed_context(
        self, ctx_tokens: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> torch.Tensor:
        """Check the inputs and project ``[B, Nc, in_dim]`` context tokens to ``[B, Nc,
        width]`` (no positions yet: the layouts add them differently)."""
        check_context(ctx_tokens, ctx_idx, tgt_idx, self._in_dim, self._grid.num_tokens,
                      self._source)
        return self.embed(self.in_norm(ctx_tokens))

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks over ``[B, N, width]`` tokens, recomputing activations in backward when
        ``grad_checkpointing`` is on (training with gradients only)."""
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        return run_blocks(self.blocks, tokens, use_ckpt)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, Nt, width]`` target outputs of the blocks -> ``[B, Nt, out_dim]``."""
        return getattr(self, self._head_name)(self.norm(tokens))

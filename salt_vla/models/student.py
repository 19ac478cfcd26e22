"""The ViT student: tubelet embedding + fixed 3-D sin-cos positions + timm blocks.

The student encodes only the context (visible) tokens of a clip during training, so its
forward takes the token indices to keep; evaluation uses every token. Blocks are timm's
``Block`` whose attention calls ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels on CUDA). No autocast here: the trainer owns precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.posembed import sincos_pos_embed_3d

# name -> (embed_dim, depth, heads). "base" uses vit_base_patch16_224 widths; "tiny" is a
# CPU-demo size (shallower than ViT-Ti) so tests and the demo run in seconds.
STUDENT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 4, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

# timm ViTs use eps=1e-6; keep it so the blocks behave like the published ones.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class StudentConfig:
    """Student architecture. ``embed_dim``/``depth``/``heads`` override the ``size`` preset.

    ``pos_gain``: multiply the fixed position table by a learned scalar (initialised to 1,
    so the network starts exactly as without it). Why: training grows the tubelet
    embeddings ~20x on the demo while the table stays at +-1, so behind the pre-norm blocks
    a token keeps 1-4% position and can hardly tell its time step; a gain lets training
    scale positions with the embeddings instead.
    """

    size: str = "base"
    num_frames: int = 16
    img_size: int = 224
    tubelet: int = 2
    patch: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    embed_dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    pos_gain: bool = False

    def __post_init__(self) -> None:
        if self.size not in STUDENT_SIZES:
            raise ConfigError(
                f"unknown student size {self.size!r}; choose one of {sorted(STUDENT_SIZES)}"
            )
        dim, depth, heads = self.dims
        if dim % heads:
            raise ConfigError(f"student embed_dim={dim} is not divisible by heads={heads}")
        if depth < 0:
            raise ConfigError(f"student depth must be >= 0, got {depth}")
        token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)  # sizes divide

    @property
    def dims(self) -> tuple[int, int, int]:
        """Resolved ``(embed_dim, depth, heads)`` after applying overrides to the preset."""
        dim, depth, heads = STUDENT_SIZES[self.size]
        return (
            self.embed_dim if self.embed_dim is not None else dim,
            self.depth if self.depth is not None else depth,
            self.heads if self.heads is not None else heads,
        )

    @property
    def grid(self) -> TokenGrid:
        return token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)


def make_blocks(
    dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float
) -> nn.ModuleList:
    """``depth`` timm Blocks with stochastic depth rising linearly to ``drop_path``."""
    # Plain Python (not torch.linspace) so models can be built on the meta device.
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(
            dim,
            heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path=rate,
            norm_layer=LayerNorm,
        )
        for rate in rates
    )


def init_vit_weights(module: nn.Module) -> None:
    """timm-ViT init: truncated normal(0.02) for linear maps (the tubelet Conv3d is one), zero
    biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply blocks in order; with ``use_checkpoint`` recompute each block in backward."""
    for blk in blocks:
        if use_checkpoint:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor, what: str) -> torch.Tensor:
    """``tokens[b, idx[b, i]]`` for ``[B, N, D]`` tokens and ``[B, K]`` indices -> ``[B, K, D]``."""
    check_indices(idx, tokens.shape[0], tokens.shape[1], what)
    return torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))


def check_context(
    ctx_tokens: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, in_dim: int,
    num_tokens: int, source: str,
) -> None:
    """Inputs of a context -> target head (predictor, pixel decoder): ``ctx_tokens``
    ``[B, Nc, in_dim]`` output by ``source``, ``ctx_idx`` ``[B, Nc]``, ``tgt_idx`` ``[B, Nt]``."""
    if ctx_tokens.ndim != 3 or ctx_tokens.shape[-1] != in_dim:
        raise ValueError(
            f"ctx_tokens must be [B, Nc, {in_dim}] (in_dim = {source} width), "
            f"got {tuple(ctx_tokens.shape)}"
        )
    batch, n_ctx = ctx_tokens.shape[:2]
    check_indices(ctx_idx, batch, num_tokens, "ctx_idx")
    check_indices(tgt_idx, batch, num_tokens, "tgt_idx")
    if ctx_idx.shape[1] != n_ctx:
        raise ValueError(
            f"ctx_idx has {ctx_idx.shape[1]} indices per sample but ctx_tokens has {n_ctx}"
        )


def check_indices(idx: torch.Tensor, batch: int, num_tokens: int, what: str) -> None:
    """Shape/dtype checks (free: metadata only). The value range is checked in eager CPU runs
    only: on a GPU the read would synchronise with the host, and under ``torch.compile`` it
    would break the graph. Training batches are range-checked once, on the host, by the mask
    collator (``masking/collator.py``)."""
    if idx.ndim != 2 or idx.shape[0] != batch:
        raise ValueError(f"{what} must be [B={batch}, K] token indices, got {tuple(idx.shape)}")
    if idx.dtype != torch.long:
        raise TypeError(f"{what} must be a torch.long tensor, got {idx.dtype}")
    if idx.device.type == "cpu" and idx.numel() and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_tokens:
            raise ValueError(
                f"{what} holds token indices in [{lo}, {hi}] but the grid has "
                f"{num_tokens} tokens; masks and model were built for different grids"
            )


class Student(nn.Module):
    """ViT video encoder over tubelet tokens (see :class:`StudentConfig`)."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, depth, heads = cfg.dims
        self._grid = cfg.grid
        self.patch_embed = nn.Conv3d(
            3,
            dim,
            kernel_size=(cfg.tubelet, cfg.patch, cfg.patch),
            stride=(cfg.tubelet, cfg.patch, cfg.patch),
        )
        # Not persistent: a pure function of (dim, grid), recomputed on construction.
        self.register_buffer("pos_embed", sincos_pos_embed_3d(dim, self._grid), persistent=False)
        # Created only when asked for, so checkpoints without it load unchanged.
        self.pos_scale = nn.Parameter(torch.ones(1)) if cfg.pos_gain else None
        self.blocks = make_blocks(dim, depth, heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_path)
        self.norm = LayerNorm(dim)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.apply(init_vit_weights)

    @property
    def embed_dim(self) -> int:
        return self.cfg.dims[0]

    @property
    def grid(self) -> TokenGrid:
        return self._grid

    @property
    def num_tokens(self) -> int:
        return self._grid.num_tokens

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names exempt from weight decay beyond biases and norms (none here: the
        position table is a buffer)."""
        return set()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised video ``[B, 3, T, H, W]`` -> all tokens with positions ``[B, N, D]``."""
        cfg = self.cfg
        expected = (3, cfg.num_frames, cfg.img_size, cfg.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"student expects normalised video [B, {', '.join(map(str, expected))}] "
                f"(see salt_vla.models.pixels.frames_to_input), got {tuple(x.shape)}"
            )
        # [B, D, t, h, w] flattened over (t, h, w) is exactly the time-major token order.
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        # No cast: under autocast the fp32 table keeps the residual stream in fp32.
        if self.pos_scale is not None:
            return tokens + self.pos_scale * self.pos_embed
        return tokens + self.pos_embed

    def forward(self, x: torch.Tensor, ctx_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the tokens at ``ctx_idx`` ``[B, Nc]`` (None: all) -> ``[B, Nc, D]``.

        Tokens outside ``ctx_idx`` are dropped before the first block, so they influence
        neither the output nor the gradients; outputs follow the order of ``ctx_idx``.
        """
        tokens = self.embed(x)
        if ctx_idx is not None:
            tokens = gather_tokens(tokens, ctx_idx, "ctx_idx")
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        tokens = run_blocks(self.blocks, tokens, use_ckpt)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encode every token (evaluation, probes) -> ``[B, N, D]``."""
        return self.forward(x, None)


def split_weight_decay(
    modules: Iterable[nn.Module],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into ``(decay, no_decay)`` for the optimiser.

    No decay on biases, norm weights (any parameter with ndim <= 1) and on names a module
    lists in its ``no_weight_decay_names()`` (e.g. the predictor's mask token).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        names = getattr(module, "no_weight_decay_names", None)
        exempt = names() if names is not None else set()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(".bias") or name in exempt:
                no_decay.append(p)
            else:
                decay.append(p)
    return decay, no_decay

"""The attentive probe: the frozen-encoder classification protocol of V-JEPA and SALT.

All of a clip's token features ``[N, D]`` go in; a learned query token attends to them in one
cross-attention block (pre-norm cross-attention + MLP, each with a residual on the query), and
a linear layer classifies the pooled vector. That is V-JEPA's ``attentive`` probe. The
``attentive4`` variant is V-JEPA 2's: three self-attention blocks over the tokens first, then
the same cross-attention block (4 blocks in all), then the linear layer.

Positions (``ProbeConfig.positions``): ``none`` (V-JEPA's protocol, the default) pools the
tokens as they are, so the probe is invariant to any permutation of a clip's tokens and can
only read what the token *contents* say. Trained encoders may drop absolute position from
their output tokens (their decoders and predictors add positions back), and then a
position-free probe cannot tell "object at the left at t=0, at the right at t=3" from its
time reversal. ``fixed`` adds the encoder grid's 3-D sin-cos table
(:func:`salt_vla.models.posembed.sincos_pos_embed_3d`), scaled so its RMS equals the training
features' RMS (one scalar per encoder: a table at its raw +-1 scale would be noise next to
tokens of norm ~100, or drown tokens of norm ~1); ``learned`` adds a learned
``[N, D]`` table (trunc-normal 0.02 init, no weight decay). Both are added to the frozen
tokens before the first probe block, the same recipe for every encoder.

Training: AdamW (no weight decay on biases, norms, the query and a learned position table),
linear warmup then cosine decay to zero, cross-entropy, on features computed once
(``features.py``). Reported: top-1 and top-5 accuracy on the validation features after the
last epoch (never the best epoch: picking it on the validation split would overstate the
encoder).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from salt_vla.errors import ConfigError, nonfinite_fields
from salt_vla.models.grid import TokenGrid
from salt_vla.models.posembed import sincos_pos_embed_3d
from salt_vla.models.student import LayerNorm, init_vit_weights, make_blocks

# probe kind -> number of blocks (the last one is the cross-attention pooling block)
PROBE_KINDS: dict[str, int] = {"attentive": 1, "attentive4": 4}
# what the probe adds to the frozen tokens before pooling (module doc)
PROBE_POSITIONS: tuple[str, ...] = ("none", "fixed", "learned")
# clips whose features set the ``fixed`` table's scale: enough for a stable RMS, bounded cost
RMS_CLIPS = 1024


@dataclass(frozen=True)
class ProbeConfig:
    """Probe architecture and training recipe (defaults: V-JEPA's, scaled to small sets)."""

    kind: str = "attentive"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    heads: int = 16  # at most; reduced to the largest divisor of the feature width
    mlp_ratio: float = 4.0
    seed: int = 0
    positions: str = "none"  # none | fixed | learned (module doc)
    # score the validation split every N epochs for the history (0: only after the last
    # epoch; the reported top-1 is always the last epoch's). Each pass costs a forward over
    # the whole split, a sizeable share of a small probe's time on a CPU.
    val_every: int = 1

    def __post_init__(self) -> None:
        if bad := nonfinite_fields(self):  # NaN passes every range check below
            raise ConfigError(f"probe {', '.join(bad)}: must be a finite number")
        if self.kind not in PROBE_KINDS:
            raise ConfigError(f"probe kind {self.kind!r}: choose one of {', '.join(PROBE_KINDS)}")
        if self.positions not in PROBE_POSITIONS:
            raise ConfigError(f"probe positions {self.positions!r}: choose one of "
                             f"{', '.join(PROBE_POSITIONS)}")
        for name in ("epochs", "batch_size", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"probe {name} must be >= 1, got {getattr(self, name)}")
        if self.val_every < 0:
            raise ConfigError(f"probe val_every must be >= 0, got {self.val_every}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError("probe lr must be > 0, weight_decay and warmup_epochs >= 0")

    @property
    def depth(self) -> int:
        return PROBE_KINDS[self.kind]


def probe_heads(dim: int, at_most: int) -> int:
    """The largest head count <= ``at_most`` that divides ``dim``."""
    return next(h for h in range(min(at_most, dim), 0, -1) if dim % h == 0)


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``[B, n, D]`` over tokens ``[B, N, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        h = self.heads
        q = self.q(q).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(x).reshape(b, x.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttentionBlock(nn.Module):
    """``q += attn(q, norm(x)); q += mlp(norm(q))``: the pooling block of V-JEPA's probe."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.xattn = CrossAttention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


def as_grid(grid: TokenGrid | tuple[int, int, int] | None) -> TokenGrid | None:
    """A ``TokenGrid`` from a grid or a ``(t, h, w)`` tuple (None stays None)."""
    if grid is None or isinstance(grid, TokenGrid):
        return grid
    t, h, w = (int(v) for v in grid)
    return TokenGrid(t, h, w)


def feature_rms(x: np.ndarray, clips: int = RMS_CLIPS) -> float:
    """Root mean square of the features ``[n, N, D]`` of the first ``clips`` clips (float64
    accumulation: float16 features of norm ~100 overflow a float16 sum of squares). A
    streaming source (``batches``) is read for those clips only."""
    n = max(1, min(clips, x.shape[0]))
    if hasattr(x, "batches"):
        xb, _ = next(iter(x.batches(np.arange(n), n, torch.device("cpu"))))
        sub = xb.double().numpy()
    else:
        sub = np.asarray(x[:n], dtype=np.float64)
    return float(np.sqrt(np.mean(sub * sub)))


class AttentiveProbe(nn.Module):
    """Token features ``[B, N, D]`` -> class logits ``[B, num_classes]`` (see module doc).

    ``grid``: the encoder's token grid (``grid.num_tokens == N``, time-major order), needed
    when ``cfg.positions`` is not ``none``. ``rms``: the features' RMS, the target RMS of
    the ``fixed`` table (see :func:`feature_rms`).
    """

    def __init__(self, dim: int, num_classes: int, cfg: ProbeConfig,
                 grid: TokenGrid | tuple[int, int, int] | None = None, rms: float = 1.0) -> None:
        super().__init__()
        heads = probe_heads(dim, cfg.heads)
        self.heads = heads
        self.positions = cfg.positions
        grid = as_grid(grid)
        if cfg.positions != "none" and grid is None:
            raise ValueError(f"probe positions={cfg.positions!r} needs the encoder's token grid "
                             "(pass grid=TokenGrid or (t, h, w))")
        self.grid = grid
        self.blocks = make_blocks(dim, cfg.depth - 1, heads, cfg.mlp_ratio, True, 0.0)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.pool = CrossAttentionBlock(dim, heads, cfg.mlp_ratio)
        self.head = nn.Linear(dim, num_classes)
        # The student's init (timm ViT: trunc-normal 0.02 linears, zero biases, unit norms),
        # not a copy of it: probe and encoder blocks start the same way by construction.
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.query, std=0.02)
        # Drawn after everything else, so positions="none" consumes the RNG exactly as before.
        self.pos_embed: nn.Parameter | None = None
        if cfg.positions == "fixed":
            assert grid is not None
            table = sincos_pos_embed_3d(dim, grid)
            scale = rms / max(float(table.pow(2).mean().sqrt()), 1e-12)
            self.register_buffer("pos_table", (table * scale)[None])
        elif cfg.positions == "learned":
            assert grid is not None
            self.pos_embed = nn.Parameter(torch.zeros(1, grid.num_tokens, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def add_positions(self, x: torch.Tensor) -> torch.Tensor:
        """``x + table`` for ``[B, N, D]`` tokens (unchanged when positions are ``none``)."""
        table = self.pos_embed if self.pos_embed is not None else getattr(self, "pos_table",
                                                                          None)
        if table is None:
            return x
        if x.shape[1] != table.shape[1]:
            raise ValueError(f"features have {x.shape[1]} tokens but the probe's grid "
                             f"{self.grid.as_tuple() if self.grid else None} has "
                             f"{table.shape[1]}")
        return x + table.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add_positions(x)
        for block in self.blocks:
            x = block(x)
        q = self.pool(self.query.expand(x.shape[0], -1, -1), x)
        return self.head(q[:, 0])


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many rows have their label among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warmup from 0 over ``warmup`` steps, then cosine from ``base`` to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class ProbeResult:
    """Accuracy of the probe after its last epoch, and how it got there."""

    top1: float
    top5: float
    top5_k: int  # 5, or the number of classes when there are fewer
    val_clips: int
    train_clips: int
    num_classes: int
    heads: int
    params: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    positions: str = "none"
    feature_rms: float | None = None  # the scale of the ``fixed`` table (None otherwise)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches(x: np.ndarray, y: np.ndarray, order: np.ndarray, size: int, device: torch.device):
    if hasattr(x, "batches"):  # a streaming source (eval/features.py StreamedFeatures)
        yield from x.batches(order, size, device)
        return
    for start in range(0, len(order), size):
        # Sorted reads are sequential on a memory-mapped .npy; labels follow the same order.
        idx = np.sort(order[start:start + size])
        xb = torch.from_numpy(np.asarray(x[idx])).to(device, non_blocking=True).float()
        yield xb, torch.from_numpy(y[idx]).to(device)


def evaluate_probe(
    probe: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(top-1, top-5) of ``probe`` on features ``x`` with labels ``y``."""
    probe.eval()
    c1 = c5 = n = 0
    with torch.no_grad():
        for xb, yb in _batches(x, y, np.arange(len(y)), batch_size, device):
            logits = probe(xb).float()
            c1 += topk_correct(logits, yb, 1)
            c5 += topk_correct(logits, yb, 5)
            n += len(yb)  # a stream drops clips that fail to decode: score those it had
    return c1 / max(n, 1), c5 / max(n, 1)


def train_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    cfg: ProbeConfig,
    device: str | torch.device = "cpu",
    progress: Callable[[dict[str, float]], None] | None = None,
    grid: TokenGrid | tuple[int, int, int] | None = None,
) -> ProbeResult:
    """Train an attentive probe on ``train_x`` ``[n, N, D]`` (any float dtype, may be a memory
    map) with labels ``train_y`` ``[n]``; report top-1/top-5 on ``val_x``/``val_y``.
    ``train_x`` / ``val_x`` may instead be streaming sources (an object with ``shape`` and
    ``batches(order, size, device)``, e.g. :class:`~salt_vla.eval.features.StreamedFeatures`),
    which make each batch on demand; their labels are still passed as ``train_y`` / ``val_y``.

    ``grid``: the encoder's token grid (``TokenGrid`` or ``(t, h, w)``, ``N`` tokens in
    time-major order); required when ``cfg.positions`` is ``fixed`` or ``learned``.
    ``progress(record)`` after each epoch with its mean loss, train top-1 and (every
    ``cfg.val_every`` epochs) val top-1.
    """
    device = torch.device(device)
    train_y = np.asarray(train_y, dtype=np.int64)
    val_y = np.asarray(val_y, dtype=np.int64)
    if len(train_y) == 0 or len(val_y) == 0:
        raise ValueError("the probe needs at least one training and one validation clip")
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(f"train features {train_x.shape[1:]} and val features "
                         f"{val_x.shape[1:]} differ in shape")
    for name, y in (("train", train_y), ("val", val_y)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} labels must be in [0, {num_classes}), got "
                             f"[{y.min()}, {y.max()}]")
    grid = as_grid(grid)
    if cfg.positions != "none":
        if grid is None:
            raise ValueError(f"probe positions={cfg.positions!r} needs the encoder's token grid")
        if grid.num_tokens != train_x.shape[1]:
            raise ValueError(f"grid {grid.as_tuple()} has {grid.num_tokens} tokens but the "
                             f"features have {train_x.shape[1]}")
    t0 = time.perf_counter()
    rms = feature_rms(train_x) if cfg.positions == "fixed" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        probe = AttentiveProbe(train_x.shape[-1], num_classes, cfg, grid,
                               rms if rms is not None else 1.0).to(device)
    exempt = {"query", "pos_embed"}  # no decay: they are embeddings, not weights
    decay = [p for n, p in probe.named_parameters() if p.ndim > 1 and n not in exempt]
    no_decay = [p for n, p in probe.named_parameters() if p.ndim <= 1 or n in exempt]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(train_y) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    rng = np.random.default_rng(cfg.seed)
    on_cuda = device.type == "cuda"
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.epochs):
        probe.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in _batches(train_x, train_y, rng.permutation(len(train_y)), cfg.batch_size,
                               device):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                logits = probe(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += topk_correct(logits.detach().float(), yb, 1)
            seen += len(yb)
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": correct / seen}
        if cfg.val_every and (epoch + 1) % cfg.val_every == 0:
            record["val_top1"], _ = evaluate_probe(probe, val_x, val_y, cfg.batch_size, device)
        history.append(record)
        if progress:
            progress(record)
    top1, top5 = evaluate_probe(probe, val_x, val_y, cfg.batch_size, device)
    return ProbeResult(
        top1=top1, top5=top5, top5_k=min(5, num_classes), val_clips=len(val_y),
        train_clips=len(train_y), num_classes=num_classes, heads=probe.heads,
        params=sum(p.numel() for p in probe.parameters()), seconds=time.perf_counter() - t0,
        history=history, positions=cfg.positions, feature_rms=rms,
    )

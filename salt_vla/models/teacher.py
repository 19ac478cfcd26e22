"""The frozen VideoMAEv2 teacher: official checkpoints in, per-token target latents out.

The network is VideoMAEv2's fine-tune/distill ``VisionTransformer`` (``modeling_finetune.py``),
rebuilt so that its parameter names ARE the official key layout and a published checkpoint
(e.g. ``vit_b_k710_dl_from_giant.pth``) loads with a strict key check:

- ``patch_embed.proj``: Conv3d(3, D, kernel = stride = (tubelet, patch, patch)), with bias;
  its output flattened over (t, h, w) gives tokens in time-major order (see ``grid.py``).
- a FIXED 1-D sinusoid table over all tokens added to the patch embeddings
  (``angle = pos / 10000^(2*(j//2)/D)``, sin on even ``j``, cos on odd ``j``); it is not a
  parameter and not in checkpoints.
- pre-norm blocks (LayerNorm eps 1e-6): ``attn.qkv`` has no bias of its own; the separate
  ``attn.q_bias`` / ``attn.v_bias`` are used with a key bias fixed at zero; ``mlp.fc1`` ->
  GELU -> ``mlp.fc2``; layer scale ``gamma_1`` / ``gamma_2`` only when the file has them.
- no final norm: with mean pooling the official model's ``norm`` is Identity and its
  ``fc_norm`` + ``head`` act only on the pooled vector for classification. Those keys
  (``fc_norm.*``, ``head.*``, and ``norm.*`` from a ``use_mean_pooling=False`` model) are
  accepted and ignored; :attr:`Teacher.ignored_keys` lists them.

Targets are the tokens output by block ``layer`` (default the last), optionally layer-normed
without affine (``target_norm``, V-JEPA's convention).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salt_vla.errors import ConfigError
from salt_vla.models.checkpoint import (
    StateDictError,
    diff_state_dict,
    load_checkpoint,
    save_state_dict,
)
from salt_vla.models.grid import TokenGrid, token_grid

log = logging.getLogger(__name__)

LN_EPS = 1e-6  # VideoMAEv2 builds every LayerNorm with partial(nn.LayerNorm, eps=1e-6)
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class ViTArch:
    """Width, depth, heads and MLP ratio of one VideoMAEv2 encoder size."""

    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)  # int() as the official Mlp does (giant: 6144)


ARCHS: dict[str, ViTArch] = {
    "vit_tiny": ViTArch(192, 4, 3),  # ours, for tests and the demo; not a published size
    "vit_small": ViTArch(384, 12, 6),
    "vit_base": ViTArch(768, 12, 12),
    "vit_large": ViTArch(1024, 24, 16),
    "vit_huge": ViTArch(1280, 32, 16),
    "vit_giant": ViTArch(1408, 40, 16, 48 / 11),  # published with patch 14: set patch=14
}

# Checkpoint keys the teacher accepts but never uses (classification head, final norms).
IGNORED_KEY_PATTERNS: tuple[str, ...] = (r"fc_norm\.", r"head\.", r"norm\.")


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher, at which input size, and which targets it produces.

    ``layer`` indexes blocks (negative from the end: -1 is the last block); ``target_norm``
    applies a LayerNorm without affine to the chosen block's tokens.
    """

    arch: str = "vit_base"
    num_frames: int = 16
    img_size: int = 224
    tubelet: int = 2
    patch: int = 16
    layer: int = -1
    target_norm: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown teacher arch {self.arch!r}; choose one of {list(ARCHS)}")
        token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)  # sizes divide
        resolve_layer(self.layer, ARCHS[self.arch].depth, self.arch)

    @property
    def grid(self) -> TokenGrid:
        return token_grid(self.num_frames, self.img_size, self.tubelet, self.patch)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherSpec:
        return cls(**d)


def resolve_layer(layer: int, depth: int, arch: str = "") -> int:
    """Block index ``layer`` (negative counts from the end) as a non-negative index."""
    if not -depth <= layer < depth:
        raise ConfigError(
            f"layer={layer} is out of range for {arch or 'a model'} with {depth} blocks "
            f"(use 0..{depth - 1}, or -1..-{depth} from the end)"
        )
    return layer % depth


def is_random_source(source: str | Path) -> bool:
    """Whether ``source`` means a random teacher (``random``, ``random:...``), so that a bare
    or malformed ``random`` gets the ``random:ARCH:SEED`` usage, not "file not found"."""
    return str(source).split(":", 1)[0] == "random"


def parse_random_source(source: str) -> tuple[str, int]:
    """``"random:ARCH:SEED"`` -> ``(arch, seed)``; raises ValueError naming the fix."""
    parts = source.split(":")
    usage = f"expected 'random:ARCH:SEED' with ARCH in {list(ARCHS)} and SEED an integer"
    if len(parts) != 3 or parts[0] != "random":
        raise ConfigError(f"bad teacher source {source!r}: {usage}")
    arch, seed = parts[1], parts[2]
    if arch not in ARCHS:
        raise ConfigError(f"bad teacher source {source!r}: unknown arch {arch!r}; {usage}")
    try:
        return arch, int(seed)
    except ValueError:
        raise ConfigError(f"bad teacher source {source!r}: seed {seed!r}; {usage}") from None


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """VideoMAEv2's fixed 1-D position table ``[n_position, dim]`` (float32).

    ``angle[p, j] = p / 10000^(2*(j//2)/dim)``; sin on even ``j``, cos on odd ``j``
    (interleaved, unlike the student's 3-D table). Computed in float64 as the original
    (numpy) does, then cast.
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


# --- the network (parameter names = official checkpoint keys) --------------------------


class PatchEmbed3d(nn.Module):
    """Tubelet embedding: ``proj`` is Conv3d(3, D, kernel = stride = (tubelet, patch, patch));
    ``[B, 3, T, H, W]`` -> ``[B, t*h*w, D]``. VideoMAEv2's and timm's name (the exported
    student's too, :mod:`salt_vla.models.video_vit`)."""

    def __init__(self, dim: int, tubelet: int, patch: int) -> None:
        super().__init__()
        k = (tubelet, patch, patch)
        self.proj = nn.Conv3d(3, dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, D, t, h, w] -> [B, t*h*w, D]: flatten(2) is time-major
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as official
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, arch: ViTArch, layer_scale: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.dim, eps=LN_EPS)
        self.attn = _Attention(arch.dim, arch.heads)
        self.norm2 = nn.LayerNorm(arch.dim, eps=LN_EPS)
        self.mlp = _Mlp(arch.dim, arch.mlp_hidden)
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.ones(arch.dim))
            self.gamma_2 = nn.Parameter(torch.ones(arch.dim))
        else:
            self.register_parameter("gamma_1", None)
            self.register_parameter("gamma_2", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class Teacher(nn.Module):
    """Frozen VideoMAEv2 encoder producing target latents; build it with :func:`load_teacher`.

    ``state_dict()`` keys are the official VideoMAEv2 fine-tune keys (encoder part only).
    """

    def __init__(
        self,
        spec: TeacherSpec,
        *,
        layer_scale: bool = False,
        checkpoint: str = "",
        sha256: str = "",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.arch = ARCHS[spec.arch]
        self.grid: TokenGrid = spec.grid
        self.layer_index = resolve_layer(spec.layer, self.arch.depth, spec.arch)
        self.checkpoint = checkpoint  # resolved file path, or "random:ARCH:SEED"
        self.sha256 = sha256  # file sha256, or "random:ARCH:SEED"
        self.ignored_keys: tuple[str, ...] = ()
        self.patch_embed = PatchEmbed3d(self.arch.dim, spec.tubelet, spec.patch)
        self.blocks = nn.ModuleList(_Block(self.arch, layer_scale) for _ in range(self.arch.depth))
        self.register_buffer(
            "pos_embed", sinusoid_table(self.grid.num_tokens, self.arch.dim), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    @property
    def dim(self) -> int:
        return self.arch.dim

    @property
    def depth(self) -> int:
        return self.arch.depth

    @property
    def layer_scale(self) -> bool:
        return self.blocks[0].gamma_1 is not None

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    def reset_position_table(self) -> None:
        """Recompute the fixed table on CPU (after building on the meta device)."""
        self.pos_embed = sinusoid_table(self.grid.num_tokens, self.arch.dim).to(
            self.patch_embed.proj.weight.device
        )

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.spec
        want = (3, s.num_frames, s.img_size, s.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"teacher {s.arch} expects normalised input [B, {', '.join(map(str, want))}] "
                f"(frames_to_input of {s.num_frames} frames at {s.img_size} px), "
                f"got {tuple(x.shape)}"
            )
        if x.device != self.device and self.device.type != "meta":
            raise ValueError(f"input is on {x.device} but the teacher is on {self.device}")

    def features(self, x: torch.Tensor, layer_index: int | None = None) -> torch.Tensor:
        """Raw tokens ``[B, N, D]`` output by block ``layer_index`` (default: the spec's).

        No grad handling, no autocast, no target norm: the plain network, as the official
        model computes it before any pooling.
        """
        last = self.layer_index if layer_index is None else layer_index
        h = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks[: last + 1]:
            h = block(h)
        return h

    def targets(self, x: torch.Tensor, amp: bool = True) -> torch.Tensor:
        """Target latents ``[B, N, D]`` float32 for normalised input ``x`` ``[B, 3, T, H, W]``.

        Runs without grad (``no_grad``, not ``inference_mode``: targets may later be used
        as constants in a loss, which inference tensors forbid); bf16 autocast on CUDA when
        ``amp``, fp32 elsewhere.
        """
        self._check_input(x)
        x = x.to(self.patch_embed.proj.weight.dtype)
        on_cuda = x.device.type == "cuda"
        with (
            torch.no_grad(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and amp),
        ):
            h = self.features(x)
        h = h.float()
        if self.spec.target_norm:
            with torch.no_grad():
                h = F.layer_norm(h, (h.shape[-1],))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.targets(x)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights in the official VideoMAEv2 key layout (fp32, CPU copies).

        Encoder only: ``fc_norm`` / ``head`` were not loaded, so they are not exported; the
        position table is fixed and, as in the official files, not included.
        """
        return {k: v.detach().float().cpu().clone() for k, v in self.state_dict().items()}

    export_state_dict = official_state_dict

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`official_state_dict` to ``path`` (``.safetensors`` or a bare ``.pth``)."""
        return save_state_dict(self.official_state_dict(), path)

    def describe(self) -> dict[str, Any]:
        """What made these targets, for ``cache.json``."""
        s = self.spec
        return {
            "arch": s.arch,
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "layer": s.layer,
            "layer_index": self.layer_index,
            "target_norm": s.target_norm,
            "dim": self.dim,
            "depth": self.depth,
            "tubelet": s.tubelet,
            "patch": s.patch,
            "num_frames": s.num_frames,
            "img_size": s.img_size,
        }


# --- building and loading ----------------------------------------------------------------


def random_init_(model: nn.Module, seed: int) -> None:
    """Fill every parameter from a CPU generator seeded with ``seed`` (same seed, same weights).

    Every parameter gets a nonzero random value (biases, q/v biases and norm affines too),
    so a test comparing two implementations notices any weight one of them drops.
    Weights ~ N(0, 1/fan_in) truncated at 2 std, keeping activations O(1) at any width.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        cpu = torch.empty(p.shape, dtype=torch.float32)
        if p.ndim >= 2:
            std = 1.0 / math.sqrt(math.prod(p.shape[1:]))
            cpu.normal_(0.0, 1.0, generator=g).clamp_(-2.0, 2.0).mul_(std)
        elif name.endswith(("norm1.weight", "norm2.weight", "gamma_1", "gamma_2")):
            cpu.normal_(1.0, 0.1, generator=g)
        else:
            cpu.normal_(0.0, 0.1, generator=g)
        with torch.no_grad():
            p.copy_(cpu)


def _checkpoint_hints(state: dict[str, torch.Tensor], spec: TeacherSpec) -> str:
    """What the file seems to hold, and how to fix the spec, from its keys and shapes."""
    keys = list(state)
    w = state.get("patch_embed.proj.weight")
    if w is None or w.ndim != 5:
        if any(k.startswith("encoder.") for k in keys) and any(
            k.startswith("decoder.") for k in keys
        ):
            hint = (
                "this looks like a VideoMAEv2 PRE-TRAINING checkpoint (encoder.* + decoder.*); "
                "use a fine-tuned or distilled one (e.g. vit_b_k710_dl_from_giant.pth)"
            )
        elif any(k.startswith("videomae.") or ".attention.attention." in k for k in keys):
            hint = (
                "this looks like a Hugging Face transformers VideoMAE checkpoint; the teacher "
                "reads the original VideoMAEv2 layout: convert it with `salt teacher convert "
                "FILE_OR_DIR --out teacher.pth` and pass teacher.pth"
            )
        else:
            hint = (
                "expected the VideoMAEv2 fine-tune layout ('patch_embed.proj.weight', "
                f"'blocks.0.attn.q_bias', ...); the file starts with {keys[:5]}"
            )
        return f"  hint: {hint}"
    dim, _, tubelet, patch, _ = w.shape
    block_ids = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1 if block_ids else 0
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    hidden = None if fc1 is None else fc1.shape[0]
    matches = [
        n
        for n, a in ARCHS.items()
        if (a.dim, a.depth) == (dim, depth) and hidden in (None, a.mlp_hidden)
    ]
    hints: list[str] = []
    if matches and spec.arch not in matches:
        hints.append(
            f"is this a VideoMAEv2 {matches[0]} checkpoint? try --teacher-arch {matches[0]} "
            f"(teacher_arch={matches[0]} in a training config)"
        )
    elif not matches:
        hints.append(f"no known arch has that shape; known: {list(ARCHS)}")
    if tubelet != spec.tubelet:
        hints.append(f"the file's tubelet is {tubelet}: set tubelet={tubelet}")
    if patch != spec.patch:
        hints.append(f"the file's patch is {patch}: set patch={patch}")
    if "pos_embed" in state:
        hints.append(
            "the file has a learned 'pos_embed'; VideoMAEv2 fine-tune models use a fixed "
            "sinusoid table that is not stored"
        )
    if any(k.endswith("attn.qkv.bias") for k in keys):
        hints.append(
            "the file has a full 'attn.qkv.bias' (timm style), not VideoMAEv2's q/v biases"
        )
    found = (
        f"  the file holds a ViT with dim {dim}, {depth} blocks, tubelet {tubelet}, patch {patch}"
    )
    return "\n".join([found, *(f"  hint: {h}" for h in hints)])


def load_teacher(
    source: str | Path, spec: TeacherSpec | None = None, device: str | torch.device = "cpu"
) -> Teacher:
    """Build the frozen teacher from a checkpoint file or ``"random:ARCH:SEED"``.

    A checkpoint (``.pth``/``.pt`` bare or wrapped in 'model'/'module'/'state_dict', or
    ``.safetensors``) must match ``spec.arch`` exactly: missing, unexpected or mis-shaped
    keys raise one :class:`StateDictError` listing them, with a hint at the right arch.
    ``fc_norm.*``, ``head.*`` and ``norm.*`` are accepted and ignored (see
    :attr:`Teacher.ignored_keys`). Layer scale is used iff the file has ``gamma_1``.

    ``"random:ARCH:SEED"`` names the model completely, so its ARCH overrides ``spec.arch``
    (the returned teacher's ``spec`` says which was used); same seed, same weights.
    """
    spec = spec or TeacherSpec()
    name = str(source)
    if is_random_source(name):
        arch, seed = parse_random_source(name)
        if arch != spec.arch:
            spec = replace(spec, arch=arch)
        with torch.device("meta"):
            teacher = Teacher(spec, checkpoint=name, sha256=name)
        teacher.to_empty(device="cpu")
        random_init_(teacher, seed)
    else:
        ckpt = load_checkpoint(source)
        state = ckpt.state_dict
        layer_scale = any(k.endswith(".gamma_1") for k in state)
        with torch.device("meta"):  # no wasted init: every weight comes from the file
            teacher = Teacher(
                spec, layer_scale=layer_scale, checkpoint=str(ckpt.path), sha256=ckpt.sha256
            )
        diff = diff_state_dict(state, teacher.state_dict(), ignore=IGNORED_KEY_PATTERNS)
        if not diff.ok:
            a = teacher.arch
            raise StateDictError(
                ckpt.path,
                f"does not match VideoMAEv2 {spec.arch} (dim {a.dim}, {a.depth} blocks, "
                f"tubelet {spec.tubelet}, patch {spec.patch}, "
                f"layer scale {'on' if layer_scale else 'off'}):\n"
                f"{diff.format()}\n{_checkpoint_hints(state, spec)}",
            )
        weights = {
            k: (v.float() if v.is_floating_point() else v)
            for k, v in state.items()
            if k not in diff.ignored
        }
        teacher.load_state_dict(weights, strict=True, assign=True)
        teacher.ignored_keys = diff.ignored
        if diff.ignored:
            log.info("teacher %s: ignored %d keys: %s", ckpt.path, len(diff.ignored), diff.ignored)
    teacher.reset_position_table()
    teacher.to(device)
    teacher.requires_grad_(False)
    return teacher.eval()

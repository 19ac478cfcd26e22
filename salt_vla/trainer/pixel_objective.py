"""The stage-1 ("V-Pixel") objective: VideoMAEv2 encoder on the context tokens -> pixel
decoder over all tokens -> L2 (or L1) against the pixels of the target tubelets, averaged
over mask groups; plus the metrics the loop logs (``[raw, normalised, cosine]``, as for the
SALT objective).

Targets follow VideoMAE: each token's tubelet (``tubelet x patch x patch`` pixels x 3
channels) is normalised per channel by its own mean and (unbiased) std, so the loss asks for
the *shape* of the patch, not its brightness. They are computed from the model input itself,
so this objective needs no target source: the loop passes ``targets=None``.
"""

from __future__ import annotations

import torch
from torch import nn

from salt_vla.models.pixel_decoder import PixelDecoder
from salt_vla.models.pixels import imagenet_stats
from salt_vla.models.student import gather_tokens, run_blocks
from salt_vla.models.teacher import Teacher, TeacherSpec
from salt_vla.trainer.objective import Masks, gather_targets, group_loss, mean_over_groups

NORM_EPS = 1e-6  # VideoMAE adds it to the per-patch std


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, 3, T, H, W]`` -> ``[B, N, tubelet * patch * patch, 3]`` tubelet pixels.

    Tokens are time-major (``t * h * w + y * w + x``), the order of ``patch_embed``'s output;
    inside a token, pixels are ``(frame, row, col)``-major, as VideoMAE lays them out.
    """
    b, c, t, h, w = video.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"video {tuple(video.shape)} does not divide into tubelets "
                         f"{tubelet}x{patch}x{patch}")
    v = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    v = v.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t', h', w', tubelet, patch, patch, c
    return v.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def pixel_targets(x: torch.Tensor, tubelet: int, patch: int, norm_pix: bool = True,
                  stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Reconstruction targets ``[B, N, tubelet*patch*patch*3]`` (fp32) for model input ``x``.

    ``x`` is the ImageNet-normalised input; it is mapped back to [0, 1] pixels first, as
    VideoMAE does. ``norm_pix``: per token and channel, subtract the mean and divide by the
    unbiased std (+ 1e-6) over the tubelet's pixels. ``stats``: the ImageNet (mean, std)
    ``[1, 3, 1, 1, 1]`` fp32 tensors on ``x``'s device (default: ``imagenet_stats``).
    """
    x = x.float()
    mean, std = imagenet_stats(x.device) if stats is None else stats
    pix = patchify(x * std + mean, tubelet, patch)
    if norm_pix:
        pix = (pix - pix.mean(dim=-2, keepdim=True)) / (
            pix.var(dim=-2, unbiased=True, keepdim=True).sqrt() + NORM_EPS
        )
    return pix.flatten(2)


def init_encoder_(encoder: nn.Module) -> None:
    """VideoMAE's encoder init: xavier-uniform linear maps, zero biases, unit LayerNorms;
    q/v biases at zero. The tubelet Conv3d keeps torch's default, as in VideoMAE."""
    for m in encoder.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in encoder.named_parameters():
        if name.endswith(("q_bias", "v_bias")):
            nn.init.zeros_(p)


def trainable_encoder(spec: TeacherSpec) -> Teacher:
    """A freshly initialised, trainable VideoMAEv2 encoder (the :class:`Teacher` network, so
    its ``state_dict()`` is the official key layout ``load_teacher`` reads back).

    Initialisation draws from torch's global RNG: seed it first for reproducible weights.
    """
    encoder = Teacher(spec, checkpoint="stage1", sha256="stage1")
    init_encoder_(encoder)
    encoder.requires_grad_(True)
    return encoder.train()


def encode_context(
    encoder: Teacher, x: torch.Tensor, ctx_idx: torch.Tensor, grad_checkpointing: bool = False
) -> torch.Tensor:
    """The encoder's last-block tokens ``[B, Nc, D]`` for the context tokens ``ctx_idx``.

    Tokens outside ``ctx_idx`` are dropped after the tubelet embedding and position table,
    before the first block (VideoMAE's encoder sees only the visible tokens).
    """
    tokens = encoder.patch_embed(x) + encoder.pos_embed  # fp32 table: fp32 residual stream
    tokens = gather_tokens(tokens, ctx_idx, "ctx_idx")
    use_ckpt = grad_checkpointing and encoder.training and torch.is_grad_enabled()
    return run_blocks(encoder.blocks, tokens, use_ckpt)


class PixelModel(nn.Module):
    """Encoder + pixel decoder as one module, so DDP wraps (and syncs) both with one forward.

    ``parts()`` names the checkpointed modules: ``encoder`` (official VideoMAEv2 keys) and
    ``decoder``.
    """

    def __init__(
        self, encoder: Teacher, decoder: PixelDecoder, loss: str = "mse",
        norm_pix: bool = True, grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if decoder.cfg.in_dim != encoder.dim:
            raise ValueError(f"decoder in_dim={decoder.cfg.in_dim} but the encoder is "
                             f"{encoder.dim} wide")
        if decoder.grid != encoder.grid:
            raise ValueError(f"decoder grid {decoder.grid} != encoder grid {encoder.grid}")
        self.encoder = encoder
        self.decoder = decoder
        # On the model's device with it, so the step copies nothing to the GPU (not saved).
        mean, std = imagenet_stats(torch.device("cpu"))
        self.register_buffer("pixel_mean", mean.clone(), persistent=False)
        self.register_buffer("pixel_std", std.clone(), persistent=False)
        self.loss_kind = loss
        self.norm_pix = norm_pix
        self.grad_checkpointing = grad_checkpointing

    def parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def forward(
        self, x: torch.Tensor, masks: Masks, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (mean over groups) and detached fp32 metrics ``[raw, normalised, cosine]``.

        ``x``: normalised video ``[B, 3, T, H, W]``; ``masks``: per group ``(ctx_idx [B, Nc],
        tgt_idx [B, Nt])``; ``targets``: ignored (the pixels of ``x`` are the targets).
        """
        spec = self.encoder.spec
        pixels = pixel_targets(x, spec.tubelet, spec.patch, self.norm_pix,
                               (self.pixel_mean, self.pixel_std))
        losses = []
        for ctx_idx, tgt_idx in masks:
            z = encode_context(self.encoder, x, ctx_idx, self.grad_checkpointing)
            pred = self.decoder(z, ctx_idx, tgt_idx).float()
            losses.append(group_loss(pred, gather_targets(pixels, tgt_idx), self.loss_kind))
        return mean_over_groups(losses)

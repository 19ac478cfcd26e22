"""``load_encoder``: an exported encoder back as a frozen ``nn.Module``, with only torch, timm,
safetensors and salt_vla installed (no training stack; tests/test_slim_install.py checks).

``forward(video) -> (tokens [B, N, D], pooled [B, D])`` and ``forward_per_frame(video) ->
[B, t, h*w, D]``, ``video`` being uint8 RGB frames ``[B, T, H, W, 3]`` (normalised inside)
or ImageNet-normalised float ``[B, 3, T, H, W]``. ``T``, ``H``, ``W`` may differ from the
training clips' (any multiple of the tubelet and patch): the position table is recomputed
for the new token grid, each token at the position the ``time_positions`` /
``space_positions`` modes give it (docs/export.md, "Other clip shapes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from salt_vla.errors import ConfigError
from salt_vla.export.format import ExportError, read_export, vit_config
from salt_vla.models.grid import TokenGrid
from salt_vla.models.pixels import frames_to_input
from salt_vla.models.video_vit import VideoViT, VideoViTConfig

AUTO = "auto"
STRIDE_SAMPLING = "stride"  # ViewSpec.sampling whose frames keep their spacing (data/view.py)


class VideoEncoder(VideoViT):
    """An exported SALT student (:class:`~salt_vla.models.video_vit.VideoViT`, timm key names)
    plus its export ``config`` (JSON dict: architecture, view, provenance, ...)."""

    def __init__(self, cfg: VideoViTConfig, config: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.config = config

    @property
    def num_frames(self) -> int:
        """Frames of the training clips (others work too: see the module doc)."""
        return self.cfg.num_frames

    @property
    def img_size(self) -> int:
        """Side of the training clips' square frames."""
        return self.cfg.img_size

    @property
    def num_tokens(self) -> int:
        """Tokens of a training-shaped clip."""
        return self.grid.num_tokens

    def preprocess(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` -> normalised ``[B, 3, T, H, W]`` in the weights' type
        and device; float input passes unchanged."""
        if video.dtype == torch.uint8:
            if video.ndim != 5 or video.shape[-1] != 3:
                raise ValueError(f"uint8 video must be [B, T, H, W, 3] RGB frames, got "
                                 f"{tuple(video.shape)}")
            weight = self.patch_embed.proj.weight
            return frames_to_input(video.to(weight.device), dtype=weight.dtype)
        if not video.is_floating_point():
            raise TypeError(f"video must be uint8 frames or float normalised input, got "
                            f"{video.dtype}")
        return video

    def clip_grid(self, video: torch.Tensor) -> TokenGrid:
        """The token grid of ``video`` (either input format)."""
        if video.ndim != 5:
            raise ValueError(f"video must be 5-D, got {tuple(video.shape)}")
        t, h, w = video.shape[1:4] if video.dtype == torch.uint8 else video.shape[2:5]
        return self.grid_for(t, h, w)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, N, D], pooled [B, D])``; tokens time-major, pooled their mean."""
        tokens = self.forward_features(self.preprocess(video))
        return tokens, tokens.mean(dim=1)

    def forward_per_frame(self, video: torch.Tensor) -> torch.Tensor:
        """Tokens per tubelet time step, for policies that keep time: ``[B, t, h*w, D]``."""
        grid = self.clip_grid(video)
        tokens = self.forward_features(self.preprocess(video))
        return tokens.reshape(tokens.shape[0], grid.t, grid.per_frame, tokens.shape[-1])


def default_time_positions(sampling: str | None) -> str:
    """``"auto"`` resolved from the training view's frame sampling: a ``stride`` view takes
    frames a fixed step apart, so more frames mean a longer window at the same spacing
    (``integer``); a ``segment`` view spreads its frames over the whole clip, so more frames
    mean the same span sampled densely (``scaled``)."""
    return "integer" if sampling == STRIDE_SAMPLING else "scaled"


def load_encoder(
    path: Path | str,
    device: str | torch.device = "cpu",
    frozen: bool = True,
    time_positions: str = AUTO,
    space_positions: str = "scaled",
) -> VideoEncoder:
    """Load an encoder written by `salt export`: a directory or a ``*.safetensors`` file.

    ``frozen`` (default): eval mode, no gradients, as for a frozen policy backbone; pass False
    to fine-tune it. ``time_positions`` (``auto``, ``scaled``, ``integer``) and
    ``space_positions`` (``scaled``, ``integer``) place the tokens of clips of another shape
    than the training clips' (no effect on that shape); see docs/export.md.
    """
    config, tensors, weights = read_export(path)
    sampling = config.get("view", {}).get("spec", {}).get("sampling")
    time_mode = default_time_positions(sampling) if time_positions == AUTO else time_positions
    try:
        cfg = vit_config(config, time_mode, space_positions)
    except ConfigError:
        raise  # a bad mode: its message names the choices
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: unusable architecture in its config ({e}); re-export "
                          "it with `salt export`") from None
    with torch.device("meta"):  # no wasted init: every weight comes from the file
        encoder = VideoEncoder(cfg, config)
    try:
        encoder.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"{weights}: weights do not fit the recorded architecture: "
                          f"{e}") from None
    dtype = encoder.patch_embed.proj.weight.dtype  # the stored type (a bf16 export stays bf16)
    want = encoder.position_table(encoder.grid).to(dtype)[None]
    if not torch.allclose(encoder.pos_embed.float(), want.float(), atol=1e-3 if
                          dtype != torch.float32 else 1e-5):
        raise ExportError(f"{weights}: its pos_embed is not the fixed sin-cos table this "
                          "salt-vla computes; load it with the salt-vla version that wrote it")
    encoder.to(device)
    encoder.eval()
    if frozen:
        encoder.requires_grad_(False)
    return encoder

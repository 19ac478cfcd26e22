"""uint8 frames -> normalised model input, the one conversion every model uses.

VideoMAEv2 (and so our teacher) was trained on ImageNet-normalised RGB; the student gets
the same input so that both sides see the same numbers.
"""

from __future__ import annotations

from functools import lru_cache

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frames_to_input(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, T, H, W, 3]`` uint8 frames -> ``[B, 3, T, H, W]`` ImageNet-normalised floats.

    Works on any device; move the uint8 tensor to the accelerator first (4x fewer bytes).
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected [B, T, H, W, 3] frames, got shape {tuple(frames.shape)}")
    x = frames.permute(0, 4, 1, 2, 3).to(dtype).div_(255.0)
    mean, std = imagenet_stats(x.device, dtype)
    return (x - mean) / std


@lru_cache(maxsize=16)
def imagenet_stats(device: torch.device, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as ``[1, 3, 1, 1, 1]`` tensors on ``device``, made once per
    (device, dtype): copying a Python list to a GPU synchronises it with the host, which a
    training step must not do."""
    def table(values: tuple[float, ...]) -> torch.Tensor:
        with torch.inference_mode(False):  # usable by autograd whoever asked first
            return torch.tensor(values, device=device, dtype=dtype).view(1, 3, 1, 1, 1)

    return table(IMAGENET_MEAN), table(IMAGENET_STD)

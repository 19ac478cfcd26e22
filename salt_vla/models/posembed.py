"""Fixed 3-D sin-cos position embedding over a TokenGrid, shared by student and predictor.

The table is a pure function of (dim, grid), so it is never learned and never stored in
checkpoints: a model rebuilt for the same grid gets the same numbers, and one rebuilt for a
different grid (more frames, larger crops) gets a consistent table for free.
"""

from __future__ import annotations

import torch

from salt_vla.models.grid import TokenGrid


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[n]`` positions -> ``[n, dim]`` table: ``dim/2`` sines then ``dim/2`` cosines.

    Frequencies follow the transformer convention ``1 / 10000^(k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    half = dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def axis_dims(dim: int) -> tuple[int, int, int]:
    """Channels given to (time, height, width): near-equal even shares summing to ``dim``."""
    if dim % 2 or dim < 6:
        raise ValueError(f"3-D sin-cos embedding needs an even dim >= 6, got {dim}")
    share = 2 * (dim // 6)
    return share, share, dim - 2 * share


def sincos_pos_embed_3d(dim: int, grid: TokenGrid) -> torch.Tensor:
    """Fixed ``[grid.num_tokens, dim]`` float32 table in time-major token order.

    Row ``t*(h*w) + y*w + x`` is ``[time(t) | height(y) | width(x)]``, each part a 1-D sin-cos
    embedding of that coordinate (see :func:`axis_dims` for the channel split). Computed in
    float64 so the values do not depend on the device's float32 math.
    """
    dt, dh, dw = axis_dims(dim)
    tt, yy, xx = torch.meshgrid(
        torch.arange(grid.t), torch.arange(grid.h), torch.arange(grid.w), indexing="ij"
    )
    table = torch.cat(
        [
            sincos_1d(dt, tt.reshape(-1)),
            sincos_1d(dh, yy.reshape(-1)),
            sincos_1d(dw, xx.reshape(-1)),
        ],
        dim=1,
    )
    return table.to(torch.float32)

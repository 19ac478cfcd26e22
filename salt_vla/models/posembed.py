"""Fixed 3-D sin-cos position embedding over a TokenGrid, shared by student and predictor.

The table is a pure function of (dim, grid), so it is never learned and never stored in
checkpoints: a model rebuilt for the same grid gets the same numbers. A clip of another shape
(more frames, larger crops) gets the table at resampled positions (:func:`resampled_positions`:
the same extent with more or fewer tokens, or the same spacing over a larger or smaller
extent); docs/export.md says which fits which clip.
"""

from __future__ import annotations

import torch

from salt_vla.errors import ConfigError
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
    return sincos_table_3d(dim, torch.arange(grid.t), torch.arange(grid.h), torch.arange(grid.w))


def sincos_table_3d(
    dim: int, t_pos: torch.Tensor, y_pos: torch.Tensor, x_pos: torch.Tensor
) -> torch.Tensor:
    """The 3-D table of :func:`sincos_pos_embed_3d` at given (possibly fractional) positions
    per axis: ``[len(t_pos) * len(y_pos) * len(x_pos), dim]`` float32, time-major.

    Integer positions ``0..n-1`` give the training table; other positions serve a clip of
    another shape (:func:`resampled_positions`).
    """
    dt, dh, dw = axis_dims(dim)
    tt, yy, xx = torch.meshgrid(t_pos, y_pos, x_pos, indexing="ij")
    table = torch.cat(
        [
            sincos_1d(dt, tt.reshape(-1)),
            sincos_1d(dh, yy.reshape(-1)),
            sincos_1d(dw, xx.reshape(-1)),
        ],
        dim=1,
    )
    return table.to(torch.float32)


POSITION_MODES = ("scaled", "integer")


def resampled_positions(native: int, n: int, mode: str) -> torch.Tensor:
    """float64 positions of ``n`` tokens along an axis that had ``native`` tokens in training.

    ``"scaled"``: the ``n`` tokens cover the same extent as the ``native`` ones (same time span,
    same field of view, more or fewer tokens): token ``i``'s centre sits at
    ``(i + 0.5) * native / n - 0.5`` in training units, the centre-aligned mapping of
    ``F.interpolate(align_corners=False)``. ``"integer"``: tokens keep the training spacing and
    the clip covers more or less (``0..n-1``; beyond ``native - 1`` the table extrapolates).
    Both give exactly ``0..native-1`` when ``n == native``.
    """
    if mode not in POSITION_MODES:
        raise ConfigError(f"position mode must be one of {', '.join(POSITION_MODES)}, got "
                          f"{mode!r}")
    idx = torch.arange(n, dtype=torch.float64)
    if mode == "integer":
        return idx
    return (idx + 0.5) * (native / n) - 0.5

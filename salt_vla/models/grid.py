"""The token grid shared by teacher, student, predictor and masks.

A clip of T frames at S x S pixels, cut into tubelets of ``tubelet`` frames x ``patch`` x
``patch`` pixels, gives a (T/tubelet, S/patch, S/patch) grid of tokens. Tokens are always
flattened time-major: ``index = t * (h * w) + y * w + x``, as VideoMAEv2 orders them.
"""

from __future__ import annotations

from dataclasses import dataclass

from salt_vla.errors import ConfigError


@dataclass(frozen=True)
class TokenGrid:
    """Token grid of a clip: ``t`` time steps, ``h`` x ``w`` spatial positions."""

    t: int
    h: int
    w: int

    @property
    def num_tokens(self) -> int:
        return self.t * self.h * self.w

    @property
    def per_frame(self) -> int:
        """Tokens per time step."""
        return self.h * self.w

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.t, self.h, self.w)


def token_grid(num_frames: int, img_size: int, tubelet: int = 2, patch: int = 16) -> TokenGrid:
    """Grid for ``num_frames`` frames of ``img_size`` square pixels; sizes must divide."""
    if num_frames % tubelet:
        raise ConfigError(f"num_frames={num_frames} is not a multiple of tubelet={tubelet}")
    if img_size % patch:
        raise ConfigError(f"img_size={img_size} is not a multiple of patch={patch}")
    return TokenGrid(num_frames // tubelet, img_size // patch, img_size // patch)

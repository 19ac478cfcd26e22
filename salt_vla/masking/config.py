"""What masks to draw: one frozen config for every strategy; defaults are V-JEPA's.

Strategies:
- ``multiblock``: V-JEPA's multiblock-3D. Each entry of ``groups`` is its own mask group
  (its own context/target pair on the same clip); the target is the union of
  ``num_blocks`` blocks, the context its complement. Defaults are V-JEPA's pretrain configs
  (``configs/pretrain/vitl16.yaml``): 8 blocks at spatial scale 0.15 and 2 blocks at 0.7,
  aspect ratio 0.75-1.5, temporal scale 1.0. ``ratio`` is not used.
- ``ratio``: one group whose target is a union of whole time-spanning blocks (shape drawn
  like a multiblock group's, from ``ratio_block``), added until the masked fraction reaches
  ``ratio``; the last block is cut to land on it.
- ``tube``: ``ratio`` of the spatial positions, chosen at random, masked at every time step.
- ``random``: ``ratio`` of all tokens, chosen at random.
- ``temporal``: one group whose context is the first ``k`` time steps and whose target is all
  later ones, or (``temporal_direction="both"``) the mirror image; ``k`` and the direction
  are drawn per batch (``masking/temporal.py``). ``ratio`` is not used.

``temporal_group=True`` appends one such temporal group to any strategy's groups (e.g. the
two multiblock groups plus a predict-the-future group on the same clip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from salt_vla.errors import ConfigError

STRATEGIES = ("multiblock", "ratio", "tube", "random", "temporal")
TRUNCATIONS = ("tail", "random")
TEMPORAL_DIRECTIONS = ("both", "forward")


def _check_range(name: str, rng: tuple[float, float], lo: float, hi: float) -> None:
    if len(rng) != 2 or not (lo < rng[0] <= rng[1] <= hi):
        raise ConfigError(f"{name}={rng!r}: need ({lo} < min <= max <= {hi})")


@dataclass(frozen=True)
class BlockGroup:
    """One multiblock mask group: the target is the union of ``num_blocks`` blocks.

    Block size (drawn once per batch, see ``blocks.draw_block_size``): temporal extent
    ``max(1, int(T * temporal_scale))``; ``keep = int(H * W * spatial_scale)`` spatial tokens
    shaped by ``aspect_ratio`` (height / width). Scales and aspect ratio are drawn uniformly
    from their (min, max) ranges.
    """

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        # tuples survive a JSON round trip as lists; normalise so equality and hashing hold
        for name in ("spatial_scale", "aspect_ratio", "temporal_scale"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.num_blocks < 0:
            raise ConfigError(f"num_blocks={self.num_blocks} must be >= 0")
        _check_range("spatial_scale", self.spatial_scale, 0.0, 1.0)
        _check_range("temporal_scale", self.temporal_scale, 0.0, 1.0)
        _check_range("aspect_ratio", self.aspect_ratio, 0.0, float("inf"))

    @property
    def spans_time(self) -> bool:
        """True when every block covers all time steps (temporal scale fixed at 1)."""
        return self.temporal_scale == (1.0, 1.0)


# V-JEPA pretrain configs (vitl16/vith16): short-range and long-range groups.
VJEPA_GROUPS: tuple[BlockGroup, ...] = (
    BlockGroup(num_blocks=8, spatial_scale=(0.15, 0.15)),
    BlockGroup(num_blocks=2, spatial_scale=(0.7, 0.7)),
)
# Ratio mode's block shape: V-JEPA's short-range block; num_blocks is not used (blocks are
# added until the ratio is reached).
RATIO_BLOCK = BlockGroup(num_blocks=0, spatial_scale=(0.15, 0.15))


@dataclass(frozen=True)
class MaskConfig:
    """Mask strategy and its parameters (see the module docstring for the strategies).

    ``truncate`` chooses which tokens the collator drops to equalise counts in a batch:
    ``"tail"`` keeps each sample's first (lowest-index, i.e. earliest time step) tokens, as
    V-JEPA does, so drops come from the last time steps; ``"random"`` drops a seeded random
    subset spread over the clip. Both keep the kept indices sorted.
    ``min_context``: a multiblock sample whose context would have fewer tokens is redrawn
    (V-JEPA redraws empty contexts), at most ``max_tries`` times before a clear error.
    ``temporal_group`` appends a temporal-split group (module docstring) after the
    strategy's own; ``temporal_direction`` (``both`` | ``forward``) is used by it and by the
    ``temporal`` strategy.
    """

    strategy: str = "multiblock"
    ratio: float = 0.9
    groups: tuple[BlockGroup, ...] = VJEPA_GROUPS
    ratio_block: BlockGroup = field(default=RATIO_BLOCK)
    truncate: str = "tail"
    min_context: int = 1
    max_tries: int = 1000
    temporal_group: bool = False
    temporal_direction: str = "both"
    temporal_max_context: int = 0  # most context time steps of a temporal split (0: T-1)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy={self.strategy!r}: choose one of {STRATEGIES}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio={self.ratio}: the masked fraction must be in (0, 1)")
        if self.truncate not in TRUNCATIONS:
            raise ConfigError(f"truncate={self.truncate!r}: choose one of {TRUNCATIONS}")
        if self.min_context < 1:
            raise ConfigError(f"min_context={self.min_context}: must be >= 1")
        if self.max_tries < 1:
            raise ConfigError(f"max_tries={self.max_tries}: must be >= 1")
        if self.temporal_direction not in TEMPORAL_DIRECTIONS:
            raise ConfigError(f"temporal_direction={self.temporal_direction!r}: choose one of "
                             f"{TEMPORAL_DIRECTIONS}")
        if self.temporal_max_context < 0:
            raise ConfigError(f"temporal_max_context={self.temporal_max_context}: must be >= 0")
        if self.strategy == "temporal" and self.temporal_group:
            raise ConfigError("strategy='temporal' is already one temporal group: leave "
                             "temporal_group off")
        groups = tuple(g if isinstance(g, BlockGroup) else BlockGroup(**g) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        if not isinstance(self.ratio_block, BlockGroup):
            object.__setattr__(self, "ratio_block", BlockGroup(**self.ratio_block))
        if self.strategy == "multiblock":
            if not groups:
                raise ConfigError("strategy='multiblock' needs at least one block group")
            for i, g in enumerate(groups):
                if g.num_blocks < 1:
                    raise ConfigError(f"groups[{i}].num_blocks={g.num_blocks}: must be >= 1")
        if self.strategy == "ratio" and not self.ratio_block.spans_time:
            raise ConfigError(
                "strategy='ratio' uses time-spanning blocks: set ratio_block.temporal_scale "
                "to (1.0, 1.0)"
            )

    @property
    def num_base_groups(self) -> int:
        """Groups of the strategy itself (without the appended temporal group)."""
        return len(self.groups) if self.strategy == "multiblock" else 1

    @property
    def num_groups(self) -> int:
        """Number of (context, target) pairs per clip."""
        return self.num_base_groups + int(self.temporal_group)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for experiment files and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskConfig:
        """Inverse of ``to_dict``; unknown keys raise ``TypeError`` naming them."""
        return cls(**d)

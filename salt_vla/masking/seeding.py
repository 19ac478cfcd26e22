"""Random streams for masks, keyed by (seed, epoch, key, group, purpose).

V-JEPA draws block positions from each worker's global RNG and the block size from a
counter shared between workers, so its masks depend on worker count and timing. Here every
draw comes from its own numpy Generator seeded by a SeedSequence over the key, so a mask is
a pure function of (seed, epoch, sample index) — and, for per-batch block sizes, of the
batch key — whatever process draws it.
"""

from __future__ import annotations

import numpy as np

# Separates mask streams from anything else that might seed a SeedSequence with the same
# (seed, epoch, index) — e.g. view augmentation.
_DOMAIN = 0x5A17_3A5C

BATCH_SIZE_DRAW = 1  # per-batch block size
PLACEMENT = 2  # per-sample block positions / token choice
TRUNCATION = 3  # per-sample choice of tokens dropped by "random" truncation


def mask_rng(seed: int, epoch: int, key: int, group: int, purpose: int) -> np.random.Generator:
    """Generator for one (seed, epoch, key, group, purpose); all must be ints >= 0."""
    parts = (seed, epoch, key, group, purpose)
    if any(int(p) != p or p < 0 for p in parts):
        raise ValueError(
            f"mask seeds must be non-negative ints, got seed={seed} epoch={epoch} key={key} "
            f"group={group} purpose={purpose}"
        )
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_DOMAIN, *map(int, parts)])))

"""Training checkpoints: atomic save (temp file, fsync, rename) and safe load. Where a run
keeps its checkpoint is the run-directory contract's (``runs.rundir.checkpoint_path``).

A checkpoint holds the student, predictor and optimiser state, the step (schedules are pure
functions of it), the data position, every RNG state and the resolved config. Loading uses
``torch.load(weights_only=True)``, so only tensors and plain containers are stored: the numpy
RNG state is converted to a tensor and back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.errors import SaltError
from salt_vla.files import atomic_path

FORMAT = 1


class CheckpointError(SaltError, RuntimeError):
    """A checkpoint that is missing, unreadable or from an incompatible run."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one,
    never a torn one."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}. If the file is damaged, move it away and "
            "resume from an older copy or start a new run with another --out"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a salt-vla training checkpoint (format {FORMAT})")
    return state


def capture_rng() -> dict[str, Any]:
    """Every RNG the training step can touch: python, numpy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` insists on tuples all the way down."""
    if isinstance(x, (list, tuple)):
        return tuple(_as_tuple(v) for v in x)
    return x

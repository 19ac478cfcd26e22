"""Training checkpoints: atomic save (temp file, fsync, rename), safe load, rotation, and the
choice of which one a resume loads. Where a run keeps them is the run-directory contract's
(``runs.rundir``: ``ckpt.pt``, ``ckpt-STEP.pt``).

A checkpoint holds the student, predictor and optimiser state, the step (schedules are pure
functions of it), the data position and the identity of the data (``data.identity``: the
store's identity_sha256, view hash and teacher sha256), every RNG state and the resolved
config. Loading uses ``torch.load(weights_only=True)``, so only tensors and plain containers
are stored: the numpy RNG state is converted to a tensor and back.

A run keeps several: each checkpoint is written as ``ckpt-STEP.pt`` and ``ckpt.pt`` is made
the same file (a hard link, replaced atomically); the ``keep`` step checkpoints before the
latest stay, older ones are deleted unless they are snapshots (``snapshot_every``). A resume
that finds the latest damaged falls back to the newest one that loads (:func:`load_first`).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.errors import SaltError
from salt_vla.files import atomic_path
from salt_vla.runs.rundir import checkpoint_path, checkpoints, step_checkpoint_path

FORMAT = 1
NOT_OURS = "not a checkpoint written by salt-vla"
MISSING = "no such file"


class CheckpointError(SaltError, RuntimeError):
    """A checkpoint that is missing, unreadable or from an incompatible run."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one,
    never a torn one."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def save_run_checkpoint(run_dir: Path | str, step: int, state: dict[str, Any], keep: int,
                        snapshot_every: int = 0) -> Path:
    """The checkpoint of ``step`` in ``run_dir``: ``ckpt-STEP.pt`` written atomically, then
    ``ckpt.pt`` made the same file, then the rotation (:func:`prune_checkpoints`). Returns
    ``ckpt.pt``. Each step is one write: the two names share the bytes."""
    step_path = save_checkpoint(step_checkpoint_path(run_dir, step), state)
    latest = checkpoint_path(run_dir)
    with atomic_path(latest) as tmp:
        tmp.unlink()
        try:
            os.link(step_path, tmp)
        except OSError:  # a file system without hard links: a copy (twice the disk)
            shutil.copyfile(step_path, tmp)
    prune_checkpoints(run_dir, step, keep, snapshot_every)
    return latest


def prune_checkpoints(run_dir: Path | str, step: int, keep: int, snapshot_every: int = 0
                      ) -> list[Path]:
    """Delete the step checkpoints of ``run_dir`` older than the ``keep`` before ``step``
    (the latest), except snapshots (steps divisible by ``snapshot_every`` > 0); returns what
    was deleted. Files of steps after ``step`` (left by a timeline a fallback resume
    abandoned) are not counted and not deleted: the run rewrites them as it passes them."""
    older = [(s, p) for s, p in checkpoints(run_dir) if s < step]
    doomed = older[: max(len(older) - keep, 0)]
    removed = []
    for s, p in doomed:
        if snapshot_every > 0 and s % snapshot_every == 0:
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def resume_candidates(run_dir: Path | str) -> list[Path]:
    """The checkpoints a resume may load, newest first: ``ckpt.pt``, then the step
    checkpoints that are other files (the latest step file is ``ckpt.pt`` itself)."""
    latest = checkpoint_path(run_dir)
    out = [latest] if latest.is_file() else []
    for _, p in reversed(checkpoints(run_dir)):
        if not out or not _same_file(p, latest):
            out.append(p)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be loaded (missing, empty, damaged, not ours);
    ``reason`` says which in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        head = "no checkpoint at" if reason == MISSING else "cannot load checkpoint"
        super().__init__(f"{head} {path}: {reason}")


def load_first(paths: list[Path]) -> tuple[dict[str, Any], Path, list[tuple[Path, str]]]:
    """``(state, path, skipped)``: the first of ``paths`` that loads, and ``(path, reason)``
    of each one before it that did not. When none loads, one CheckpointError lists each file
    and why."""
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            return load_checkpoint(path), path, skipped
        except UnreadableCheckpoint as e:
            skipped.append((path, e.reason))
    listed = "; ".join(f"{p}: {why}" for p, why in skipped)
    raise CheckpointError(
        f"no checkpoint loads ({listed}). Restore a copy of one, or start a new run with "
        "another --out"
    )


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors on CPU). A file that is
    missing, empty, damaged or not ours raises CheckpointError saying which (``reason``)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(path, MISSING if not path.exists() else "not a regular file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UnreadableCheckpoint(path, _why_unloadable(path, e)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UnreadableCheckpoint(path, f"{NOT_OURS} (it loads, but has no format-{FORMAT} "
                                   "entry: a bare state dict or another tool's file?)")
    return state


def _why_unloadable(path: Path, e: Exception) -> str:
    """A few words on why ``torch.load`` refused ``path``. Never torch's own advice for
    weights-only failures, which is to load with ``weights_only=False``: that runs whatever
    code the file holds."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if size == 0:
        return "empty file (0 bytes): a copy or write that never finished"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return f"{NOT_OURS} (not a torch zip archive: it starts with {head!r})"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"truncated or damaged ({size} bytes; the zip archive is incomplete)"
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
        return (f"{NOT_OURS} (it holds Python objects besides tensors and plain containers; "
                "not loaded, since unpickling them could run code)")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return f"damaged ({type(e).__name__}: {first})"


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

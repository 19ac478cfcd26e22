"""Reading, hashing, checking and writing model checkpoint files.

Model-agnostic: a checkpoint file becomes a flat ``{key: tensor}`` state dict plus where it
came from (path, sha256, which wrapper held it, which prefix was stripped). Loaders for a
particular model (the teacher, later student/predictor exports) compare it against their
own key layout with :func:`diff_state_dict` and raise :class:`StateDictError` with the
diff's :meth:`KeyDiff.format` text, so every loader fails the same readable way.

Formats: ``.safetensors`` (read with safetensors), anything else through
``torch.load(weights_only=True)`` — a bare state dict, or one wrapped under
``'model'`` / ``'module'`` / ``'state_dict'`` (training scripts' checkpoint dicts).
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from salt_vla.errors import SaltError
from salt_vla.files import atomic_path

WRAPPER_KEYS: tuple[str, ...] = ("model", "module", "state_dict")
"""Keys under which training scripts store the state dict, tried in this order."""

UNIFORM_PREFIXES: tuple[str, ...] = ("module.", "encoder.")
"""Prefixes stripped only when EVERY key has them (a DDP wrapper, an encoder-only export).

A file where only some keys have the prefix (e.g. a pre-training checkpoint with
``encoder.*`` and ``decoder.*``) is left as is: guessing which part is wanted would load
the wrong weights without a word.
"""

_CHUNK = 1 << 20


class StateDictError(SaltError, ValueError):
    """A checkpoint file that cannot be read or does not fit the model; names the file."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(f"checkpoint {self.path}: {message}")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file read into a flat state dict, with its provenance."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    sha256: str
    wrapper: tuple[str, ...] = ()  # wrapper keys descended through, outermost first
    stripped_prefix: str = ""  # uniform key prefix removed ('' if none)


def file_sha256(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, streamed in chunks (checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(
    obj: object, path: str | Path = "<memory>", max_depth: int = 3
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Find the flat ``{str: Tensor}`` state dict in a loaded checkpoint object.

    Descends through :data:`WRAPPER_KEYS` (at most ``max_depth`` levels); returns the state
    dict and the wrapper keys taken. Raises :class:`StateDictError` describing what was found.
    """
    taken: list[str] = []
    for _ in range(max_depth + 1):
        if _is_state_dict(obj):
            return dict(obj.items()), tuple(taken)  # type: ignore[union-attr]
        if not isinstance(obj, Mapping):
            raise StateDictError(
                path, f"expected a state dict (a dict of tensors), found {type(obj).__name__}"
            )
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            top = ", ".join(repr(k) for k in list(obj)[:12]) or "nothing"
            raise StateDictError(
                path,
                "no state dict found: expected a dict of tensors, or one under "
                f"{' / '.join(repr(k) for k in WRAPPER_KEYS)}; top-level keys: {top}",
            )
        taken.append(key)
        obj = obj[key]
    raise StateDictError(path, f"state dict nested deeper than {max_depth} wrappers")


def strip_uniform_prefix(
    state: Mapping[str, torch.Tensor], prefixes: Sequence[str] = UNIFORM_PREFIXES
) -> tuple[dict[str, torch.Tensor], str]:
    """Remove each prefix in ``prefixes`` that every key carries (repeatedly, in any order).

    Returns the new dict and the total prefix removed (e.g. ``'module.'``, or ``''``).
    """
    out = dict(state)
    removed = ""
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                removed += prefix
                changed = True
    return out, removed


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is long; keep the line naming the refused class, if any.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise StateDictError(path, f"not a readable PyTorch checkpoint: {e}") from e
        if found.group(1) != "argparse.Namespace":
            raise StateDictError(
                path,
                f"torch.load(weights_only=True) refused the class {found.group(1)} in it. "
                "If you trust the file, re-save only its weights: torch.save(torch.load(p, "
                "weights_only=False)['model'], 'weights.pth')",
            ) from e
        # Training checkpoints (VideoMAEv2, DeiT, BEiT style) often carry the run's
        # argparse.Namespace next to the weights: plain data, so allow exactly that class.
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:
            raise StateDictError(path, f"torch.load(weights_only=True) failed: {e2}") from e2
    except Exception as e:
        raise StateDictError(path, f"not a readable PyTorch checkpoint: {e}") from e


def read_state_dict(
    path: str | Path, prefixes: Sequence[str] = UNIFORM_PREFIXES
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], str]:
    """Read ``path`` into a flat state dict: ``(state, wrapper keys, stripped prefix)``."""
    path = Path(path)
    if not path.is_file():
        raise StateDictError(path, "file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:
            raise StateDictError(path, f"not a readable safetensors file: {e}") from e
    else:
        obj = _torch_load(path)
    state, wrapper = unwrap_state_dict(obj, path)
    state, stripped = strip_uniform_prefix(state, prefixes)
    return state, wrapper, stripped


def load_checkpoint(
    path: str | Path, prefixes: Sequence[str] = UNIFORM_PREFIXES
) -> LoadedCheckpoint:
    """Read a checkpoint file (see module doc) and hash it."""
    path = Path(path).expanduser().resolve()
    state, wrapper, stripped = read_state_dict(path, prefixes)
    return LoadedCheckpoint(path, state, file_sha256(path), wrapper, stripped)


# --- key diff ---------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^(.*?\.)?(\d+)(\..*)$")


def _collapse(items: Sequence[str]) -> list[str]:
    """Group keys that differ only in one block index: ``blocks.{0-3,7}.attn.q_bias``."""
    groups: dict[tuple[str, str], list[int]] = {}
    singles: list[str] = []
    for item in items:
        m = _BLOCK_RE.match(item)
        if m is None:
            singles.append(item)
            continue
        groups.setdefault((m.group(1) or "", m.group(3)), []).append(int(m.group(2)))
    out = list(singles)
    for (head, tail), idx in groups.items():
        idx = sorted(set(idx))
        if len(idx) == 1:
            out.append(f"{head}{idx[0]}{tail}")
            continue
        runs: list[str] = []
        start = prev = idx[0]
        for i in [*idx[1:], None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            if i is not None:
                start = prev = i
        out.append(f"{head}{{{','.join(runs)}}}{tail}")
    return sorted(out)


@dataclass(frozen=True)
class KeyDiff:
    """Differences between a checkpoint's keys and a model's expected keys."""

    missing: tuple[str, ...] = ()  # the model needs them, the file lacks them
    unexpected: tuple[str, ...] = ()  # the file has them, the model has no such key
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # key, file, model
    ignored: tuple[str, ...] = field(default=())  # present, deliberately unused

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self) -> str:
        """Readable multi-line diff; per-block keys collapsed to ``blocks.{0-11}.x``."""
        lines: list[str] = []
        if self.missing:
            lines.append(f"  missing from the file ({len(self.missing)}):")
            lines += [f"    {k}" for k in _collapse(self.missing)]
        if self.unexpected:
            lines.append(f"  unexpected in the file ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in _collapse(self.unexpected)]
        if self.mismatched:
            lines.append(f"  shape mismatch, file vs model ({len(self.mismatched)}):")
            by_shapes: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
            for key, file_shape, model_shape in self.mismatched:
                by_shapes.setdefault((file_shape, model_shape), []).append(key)
            rows = [
                f"    {k}: {list(fs)} vs {list(ms)}"
                for (fs, ms), keys in by_shapes.items()
                for k in _collapse(keys)
            ]
            lines += sorted(rows)
        return "\n".join(lines)


def diff_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor | torch.Size | Sequence[int]],
    ignore: Sequence[str | re.Pattern[str]] = (),
) -> KeyDiff:
    """Compare ``state`` with the expected keys/shapes (a model's ``state_dict()`` works).

    Keys matching an ``ignore`` pattern (``re.match``) are neither loaded nor reported as
    unexpected; they are listed in ``KeyDiff.ignored``.
    """
    pats = [re.compile(p) if isinstance(p, str) else p for p in ignore]

    def shape(v: torch.Tensor | torch.Size | Sequence[int]) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    ignored = tuple(sorted(k for k in state if k not in expected and any(p.match(k) for p in pats)))
    missing = tuple(sorted(k for k in expected if k not in state))
    unexpected = tuple(sorted(k for k in state if k not in expected and k not in ignored))
    mismatched = tuple(
        (k, shape(state[k]), shape(expected[k]))
        for k in sorted(expected)
        if k in state and shape(state[k]) != shape(expected[k])
    )
    return KeyDiff(missing, unexpected, mismatched, ignored)


# --- writing ----------------------------------------------------------------------------


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a flat state dict: ``.safetensors`` by suffix, else a bare ``torch.save`` dict.

    Written to a temporary name and renamed, so an interrupted save never leaves a
    truncated file under the final name.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return path

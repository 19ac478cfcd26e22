"""The exported encoder on disk: file names, the config JSON, and how it is read back.

Two layouts, one config:

- a directory (`salt export RUN --out DIR`, the default): ``model.safetensors`` (weights in
  timm's ViT names, :mod:`salt_vla.models.video_vit`), ``config.json`` (the config below plus
  the weights' name and sha256) and ``README.md`` (a model card);
- a single ``FILE.safetensors`` (`--out FILE.safetensors`), self-contained: the config sits in
  the safetensors metadata under :data:`METADATA_KEY` (a directory's ``model.safetensors``
  carries it there too), with ``FILE.json`` beside it for people.

Config (JSON object): ``format``, ``version``, ``architecture`` (what :class:`~salt_vla.models.
video_vit.VideoViTConfig` needs plus descriptions), ``grid`` (native token grid and order),
``positions`` (where tokens of other clip shapes sit, per axis), ``input`` (formats,
normalisation), ``view`` (the training clips' :class:`~salt_vla.data.view.ViewSpec` as a dict
and its hash), ``dtype``, ``keys`` (the naming), ``provenance`` (run, checkpoint and its
sha256, step, teacher, store identity, training config). Version 1 (a single file, student
key names, ``pos_embed`` ``[N, D]``) is still read.

Reading needs only torch, safetensors and salt_vla: nothing here imports the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from salt_vla.errors import SaltError
from salt_vla.models.video_vit import VideoViTConfig, student_to_vit_keys
from salt_vla.runs.rundir import CONFIG_NAME, ENCODER_SUFFIX, EXPORT_WEIGHTS_NAME

FORMAT = "salt-vla-encoder"
VERSION = 2
METADATA_KEY = "salt_vla_encoder"
POS_EMBED_KEY = "pos_embed"
CARD_NAME = "README.md"
WEIGHTS_NAME = EXPORT_WEIGHTS_NAME
CONFIG_FILE = CONFIG_NAME

# Standard ViT sizes (timm / the ViT paper): name -> (width, depth, heads).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "ViT-Ti": (192, 12, 3),
    "ViT-S": (384, 12, 6),
    "ViT-B": (768, 12, 12),
    "ViT-L": (1024, 24, 16),
    "ViT-H": (1280, 32, 16),
}


class ExportError(SaltError, ValueError):
    """A run that cannot be exported or a path that is not an exported encoder."""


def describe_size(dim: int, depth: int, heads: int, patch: int, tubelet: int) -> str:
    """What the architecture is, by the standard ViT names: a salt-vla size preset is named
    after what it is like, which can mislead ("tiny" is 192 wide like ViT-Ti but 4 blocks)."""
    tube = f"tubelets of {tubelet} frames x {patch} x {patch} px"
    for name, dims in VIT_SIZES.items():
        if dims == (dim, depth, heads):
            return f"{name}/{patch} ({dim} wide, {depth} blocks, {heads} heads) on {tube}"
    like = [n for n, (w, _, h) in VIT_SIZES.items() if (w, h) == (dim, heads)]
    but = (f"; as wide as {like[0]}/{patch}, which has {VIT_SIZES[like[0]][1]} blocks"
           if like else "")
    return (f"{dim} wide, {depth} blocks, {heads} heads on {tube}: not a standard ViT "
            f"size{but}")


def vit_config(config: dict[str, Any], time_positions: str | None = None,
               space_positions: str | None = None) -> VideoViTConfig:
    """The network config of an export config (``None`` modes: the recorded defaults)."""
    a, pos = config["architecture"], config.get("positions", {})
    return VideoViTConfig(
        embed_dim=int(a["embed_dim"]), depth=int(a["depth"]), heads=int(a["num_heads"]),
        num_frames=int(a["num_frames"]), img_size=int(a["img_size"]),
        tubelet=int(a["tubelet_size"]), patch=int(a["patch_size"]),
        mlp_ratio=float(a["mlp_ratio"]), qkv_bias=bool(a["qkv_bias"]),
        time_positions=time_positions or pos.get("time", "scaled"),
        space_positions=space_positions or pos.get("space", "scaled"),
    )


def _config_from_v1(config: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config (``student``: a StudentConfig dict; ``source``) as version 2."""
    s = config["student"]
    arch = {"embed_dim": config["embed_dim"], "depth": config["depth"],
            "num_heads": config["heads"], "num_frames": s["num_frames"],
            "img_size": s["img_size"], "tubelet_size": s["tubelet"], "patch_size": s["patch"],
            "mlp_ratio": s["mlp_ratio"], "qkv_bias": s["qkv_bias"], "student_size": s["size"]}
    return {**config, "version": VERSION, "architecture": arch,
            "provenance": config.get("source", {})}


def _tensors_from_v1(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version-1 weights (student names, ``pos_embed`` ``[N, D]``) under the current names."""
    tensors = student_to_vit_keys(tensors)
    if POS_EMBED_KEY in tensors and tensors[POS_EMBED_KEY].ndim == 2:
        tensors[POS_EMBED_KEY] = tensors[POS_EMBED_KEY][None]
    return tensors


def export_paths(path: Path | str) -> tuple[Path, Path | None]:
    """``(weights file, config.json or None)`` of an export directory or file; the message
    of the error says what the path is instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ExportError(f"{path} holds no {WEIGHTS_NAME}: not an exported encoder "
                              f"directory; make one with `salt export RUN_DIR --out {path}`")
        return weights, path / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"no exported encoder at {path}; make one with `salt export RUN_DIR "
                          f"--out {path}`")
    if path.suffix != ENCODER_SUFFIX:
        raise ExportError(f"{path} is not an exported encoder (a directory, or a "
                          f"*{ENCODER_SUFFIX} file written by `salt export`)")
    return path, None


def _metadata(weights: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for foreign files
        raise ExportError(f"{weights} is not a safetensors file: {e}") from None


def _check_version(config: Any, where: Path) -> dict[str, Any]:
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{where}: not a {FORMAT} config (written by `salt export`)")
    if int(config.get("version", 0)) > VERSION:
        raise ExportError(f"{where}: {FORMAT} version {config.get('version')} is newer than "
                          f"this salt-vla reads ({VERSION}); upgrade salt-vla")
    return config


def read_export_config(path: Path | str) -> dict[str, Any]:
    """The config of an export (directory: its config.json; file: its metadata), upgraded to
    the current version's fields."""
    weights, config_json = export_paths(path)
    if config_json is not None:
        try:
            config = json.loads(config_json.read_text())
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read {config_json}: {e}; re-export the encoder or "
                              "restore the file") from None
        where = config_json
    else:
        meta = _metadata(weights)
        if METADATA_KEY not in meta:
            raise ExportError(f"{weights} holds no {METADATA_KEY} metadata: not written by "
                              "`salt export`")
        config, where = json.loads(meta[METADATA_KEY]), weights
    config = _check_version(config, where)
    return _config_from_v1(config) if int(config["version"]) == 1 else config


def read_export(path: Path | str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """``(config, tensors under the current names, weights file)`` of an export."""
    from safetensors.torch import load_file

    weights, _ = export_paths(path)
    config = read_export_config(path)
    _metadata(weights)  # a clear error for a file that is not safetensors
    tensors = load_file(str(weights), device="cpu")
    if "patch_embed.weight" in tensors:  # version 1
        tensors = _tensors_from_v1(tensors)
    return config, tensors, weights

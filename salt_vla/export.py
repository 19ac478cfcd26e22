"""The trained student encoder, out of a training checkpoint and into a robot-policy codebase.

`salt export RUN_DIR --out encoder.safetensors` writes the student's weights as safetensors
with everything needed to rebuild and feed it (architecture, input format, the view the
training clips were made with, provenance) as JSON, twice: in the file's metadata under
``salt_vla_encoder`` (what :func:`load_encoder` reads) and in a sidecar ``encoder.json`` for
people. The predictor and optimiser state stay behind: a policy needs only the encoder.

:func:`load_encoder` returns a :class:`VideoEncoder`; ``forward(video)`` gives
``(tokens [B, N, D], pooled [B, D])``. ``video`` is either

- ``uint8 [B, T, H, W, 3]`` RGB frames (what a decoder or camera gives; T, H, W must be the
  export's ``num_frames`` and ``img_size``), normalised inside; or
- ``float [B, 3, T, H, W]`` already ImageNet-normalised (``salt_vla.models.pixels.
  frames_to_input``), e.g. when the policy's pipeline normalises itself.

Tokens are time-major (index ``t*h*w + y*w + x`` over the token grid); ``pooled`` is their
mean. See docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salt_vla.errors import SaltError
from salt_vla.files import atomic_path, write_json_atomic
from salt_vla.models.pixels import IMAGENET_MEAN, IMAGENET_STD, frames_to_input
from salt_vla.models.student import Student, StudentConfig
from salt_vla.runs.rundir import (
    CONFIG_NAME,
    ENCODER_NAME,
    ENCODER_SUFFIX,
    RunDirError,
    read_run_config,
    resolve_run_path,
)

FORMAT = "salt-vla-encoder"
VERSION = 1
METADATA_KEY = "salt_vla_encoder"
POS_EMBED_KEY = "pos_embed"  # also stored, so other codebases need not recompute it


class ExportError(SaltError, ValueError):
    """A run that cannot be exported or a file that is not an exported encoder."""


@dataclass(frozen=True)
class ExportResult:
    weights: Path
    sidecar: Path
    config: dict[str, Any]
    num_params: int


def _run_view(cfg: Any, run_dir: Path) -> Any:
    """The view the run trained on: its preset, or the store's own view (``view="store"``)."""
    from salt_vla.cache.format import MANIFEST
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.build import STORE_VIEW, view_spec

    store_view = None
    if cfg.view == STORE_VIEW:
        meta_path = run_dir / CONFIG_NAME
        try:
            cache = read_run_config(run_dir)[1]["data"]["cache"]
            store_view = json.loads((Path(cache) / MANIFEST).read_text())["view"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(
                f"the run trained with view='store' (the cache's own view), but its cache "
                f"cannot be read via {meta_path} ({e}); the encoder's frame count and size "
                "come from there, so put the cache back at its recorded path"
            ) from None
    try:
        return view_spec(cfg, store_view)
    except ConfigError as e:
        raise ExportError(f"run {run_dir}: {e}") from None


def export_encoder(
    run: Path | str, out: Path | str | None = None, dtype: torch.dtype = torch.float32
) -> ExportResult:
    """Export the student of a run directory (its ``ckpt.pt``) or of a checkpoint file to
    ``out`` (default ``RUN_DIR/encoder.safetensors``) plus the ``.json`` sidecar."""
    from safetensors.torch import save_file

    from salt_vla.errors import ConfigError
    from salt_vla.trainer.build import student_config
    from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
    from salt_vla.trainer.experiments import TrainConfig

    try:
        target = resolve_run_path(run, ("run", "checkpoint"))
    except RunDirError as e:
        raise ExportError(f"cannot export {run}: {e}") from None
    ckpt, run_dir = target.file, target.run_dir
    try:
        state = load_checkpoint(ckpt)
        cfg = TrainConfig.from_dict(state["config"])
    except (CheckpointError, ConfigError, KeyError) as e:
        raise ExportError(f"cannot export {ckpt}: {e}") from None
    view = _run_view(cfg, run_dir)
    trained = student_config(cfg, view.num_frames, view.size)
    dim, depth, heads = trained.dims
    # Inference build: no stochastic depth, no checkpointing; dims pinned, not a size preset.
    s_cfg = StudentConfig(size=trained.size, num_frames=trained.num_frames,
                          img_size=trained.img_size, tubelet=trained.tubelet, patch=trained.patch,
                          mlp_ratio=trained.mlp_ratio, qkv_bias=trained.qkv_bias, embed_dim=dim,
                          depth=depth, heads=heads)
    student = Student(s_cfg)
    try:
        student.load_state_dict(state["student"], strict=True)
    except (KeyError, RuntimeError) as e:
        raise ExportError(f"{ckpt}: its student weights do not fit its config: {e}") from None
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in student.state_dict().items()}
    tensors[POS_EMBED_KEY] = student.pos_embed.detach().to(dtype).contiguous()
    grid = s_cfg.grid
    config = {
        "format": FORMAT,
        "version": VERSION,
        "student": asdict(s_cfg),
        "embed_dim": dim,
        "depth": depth,
        "heads": heads,
        "grid": [grid.t, grid.h, grid.w],
        "num_tokens": grid.num_tokens,
        "token_order": "time-major: index = t*h*w + y*w + x",
        "pooled": "mean over tokens",
        "input": {
            "uint8": f"[B, {s_cfg.num_frames}, {s_cfg.img_size}, {s_cfg.img_size}, 3] RGB frames",
            "float": f"[B, 3, {s_cfg.num_frames}, {s_cfg.img_size}, {s_cfg.img_size}] "
                     "ImageNet-normalised ((x/255 - mean) / std)",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "view": {"spec": view.to_dict(), "hash": view.hash()},
        "dtype": str(dtype).removeprefix("torch."),
        "source": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": str(ckpt.resolve()),
            "step": int(state.get("step", 0)),
            "total_steps": int(state.get("total_steps", 0)),
            "exp": cfg.name,
            "train_config": cfg.to_dict(),
        },
    }
    out = Path(out).expanduser() if out is not None else run_dir / ENCODER_NAME
    if out.suffix != ENCODER_SUFFIX:
        raise ExportError(f"--out {out}: name the file *{ENCODER_SUFFIX}")
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(config)})
    sidecar = out.with_suffix(".json")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    write_json_atomic(sidecar, {**config, "weights": out.name, "sha256": digest})
    n = sum(v.numel() for k, v in tensors.items() if k != POS_EMBED_KEY)
    return ExportResult(out, sidecar, config, n)


class VideoEncoder(nn.Module):
    """An exported SALT student: ``forward(video) -> (tokens [B, N, D], pooled [B, D])``
    (input formats in the module docstring). ``config`` is the export's JSON."""

    def __init__(self, student: Student, config: dict[str, Any]) -> None:
        super().__init__()
        self.student = student
        self.config = config

    @property
    def num_frames(self) -> int:
        return self.student.cfg.num_frames

    @property
    def img_size(self) -> int:
        return self.student.cfg.img_size

    @property
    def embed_dim(self) -> int:
        return self.student.embed_dim

    @property
    def num_tokens(self) -> int:
        return self.student.num_tokens

    def preprocess(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` -> normalised ``[B, 3, T, H, W]``; float input passes."""
        if video.dtype == torch.uint8:
            t, s = self.num_frames, self.img_size
            if video.ndim != 5 or tuple(video.shape[1:]) != (t, s, s, 3):
                raise ValueError(
                    f"uint8 video must be [B, {t}, {s}, {s}, 3] RGB frames (this encoder's "
                    f"num_frames and img_size), got {tuple(video.shape)}; sample {t} frames "
                    f"and resize/crop to {s}x{s} as config['view'] describes"
                )
            param = self.student.patch_embed.weight
            return frames_to_input(video.to(param.device), dtype=param.dtype)
        if not video.is_floating_point():
            raise TypeError(f"video must be uint8 frames or float normalised input, got "
                            f"{video.dtype}")
        return video

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, N, D], pooled [B, D])`` for a batch of clips."""
        tokens = self.student.forward_features(self.preprocess(video))
        return tokens, tokens.mean(dim=1)


def read_export_config(path: Path | str) -> dict[str, Any]:
    """The JSON config of an exported encoder (from the safetensors metadata)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"no exported encoder at {path}; make one with `salt export RUN_DIR "
                          f"--out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for foreign files
        raise ExportError(f"{path} is not a safetensors file: {e}") from None
    if METADATA_KEY not in meta:
        raise ExportError(f"{path} holds no {METADATA_KEY} metadata: not written by `salt "
                          "export`")
    config = json.loads(meta[METADATA_KEY])
    if config.get("format") != FORMAT or int(config.get("version", 0)) > VERSION:
        raise ExportError(f"{path}: format {config.get('format')} v{config.get('version')} is "
                          f"not {FORMAT} v<={VERSION}; upgrade salt-vla")
    return config


def load_encoder(
    path: Path | str, device: str | torch.device = "cpu", frozen: bool = True
) -> VideoEncoder:
    """Load an encoder written by `salt export` (see :class:`VideoEncoder`).

    ``frozen`` (default): eval mode, no gradients, as for a frozen policy backbone; pass
    False to fine-tune it.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    config = read_export_config(path)
    student = Student(StudentConfig(**config["student"]))
    tensors = load_file(str(path), device="cpu")
    pos = tensors.pop(POS_EMBED_KEY, None)
    dtype = next(iter(tensors.values())).dtype
    try:
        student.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{path}: weights do not fit the recorded architecture: {e}") from None
    if pos is not None and not torch.allclose(
        pos.float(), student.pos_embed.to(pos.dtype).float(), atol=1e-5
    ):
        raise ExportError(f"{path}: its position table differs from this salt-vla's; use the "
                          "salt-vla version that exported it")
    encoder = VideoEncoder(student, config).to(device=device, dtype=dtype)
    encoder.eval()
    if frozen:
        encoder.requires_grad_(False)
    return encoder

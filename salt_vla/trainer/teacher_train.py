"""Stage 1 of SALT: train the teacher by pixel reconstruction (`salt teacher train`).

The run is the ordinary training loop (``loop.train``) with the :class:`PixelTask`: clips
come straight from the videos through the config's view (:mod:`video_source`), the model is
the VideoMAEv2 encoder + pixel decoder (:mod:`pixel_objective`), and the checkpoint holds
``encoder`` and ``decoder``. Data order, masks, schedules, checkpoints, resume, the console
line and metrics.jsonl are exactly those of `salt train`. When the run reaches its last step
the encoder is exported as ``RUN_DIR/teacher.pth`` (:mod:`teacher_export`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salt_vla.distributed import is_main_process
from salt_vla.errors import ConfigError
from salt_vla.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from salt_vla.models.teacher import TeacherSpec
from salt_vla.runs.rundir import FAILURES_NAME
from salt_vla.trainer.loop import RunSpec, TrainResult, train
from salt_vla.trainer.pixel_objective import PixelModel, trainable_encoder
from salt_vla.trainer.sources import DataSources
from salt_vla.trainer.teacher_experiments import TeacherTrainConfig
from salt_vla.trainer.teacher_export import TeacherExport, export_teacher
from salt_vla.trainer.video_source import open_video_clips, read_failures


def build_pixel_model(cfg: TeacherTrainConfig, num_frames: int, img_size: int) -> PixelModel:
    """Encoder (``cfg.arch``) + pixel decoder for clips of ``num_frames`` x ``img_size``.

    Initialisation draws from torch's global RNG: seed it first for reproducible weights.
    """
    try:
        spec = TeacherSpec(arch=cfg.arch, num_frames=num_frames, img_size=img_size,
                           tubelet=cfg.tubelet, patch=cfg.patch)
        encoder = trainable_encoder(spec)
        dec_cfg = PixelDecoderConfig(
            in_dim=encoder.dim, width=cfg.decoder_width, depth=cfg.decoder_depth,
            heads=cfg.decoder_heads, num_frames=num_frames, img_size=img_size,
            tubelet=cfg.tubelet, patch=cfg.patch, grad_checkpointing=cfg.grad_checkpointing,
        )
        decoder = PixelDecoder(dec_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return PixelModel(encoder, decoder, loss=cfg.loss, norm_pix=cfg.norm_pix,
                      grad_checkpointing=cfg.grad_checkpointing)


class PixelTask:
    """Stage 1 for the loop (see ``task.py``): VideoMAE-style pixel reconstruction."""

    name = "teacher"
    config_type = TeacherTrainConfig

    def open_sources(
        self, cfg: TeacherTrainConfig, run: RunSpec, echo: Callable[[str], None]
    ) -> DataSources:
        if run.data is None:
            raise ConfigError("teacher training reads the videos: give the dataset root (--data)")
        return open_video_clips(cfg, run.data, run.split, Path(run.out) / FAILURES_NAME, echo)

    def build(self, cfg: TeacherTrainConfig, sources: DataSources) -> nn.Module:
        return build_pixel_model(cfg, sources.num_frames, sources.img_size)

    def parts(self, model: nn.Module) -> dict[str, nn.Module]:
        return model.parts()

    def make_teacher(
        self, cfg: TeacherTrainConfig, sources: DataSources, device: torch.device
    ) -> None:
        return None  # the pixels are the targets


PIXEL_TASK = PixelTask()


@dataclass
class TeacherRunResult:
    """The loop's result plus the export (None when the run stopped early, or off rank 0)
    and the videos that could not be decoded."""

    train: TrainResult
    export: TeacherExport | None
    failures: list[dict[str, Any]]


def train_teacher(
    cfg: TeacherTrainConfig,
    run: RunSpec,
    sources: DataSources | None = None,
    echo: Callable[[str], None] = print,
    export: bool = True,
) -> TeacherRunResult:
    """Train the stage-1 teacher per ``cfg`` into ``run.out``; on the last step export the
    encoder to ``RUN_DIR/teacher.pth`` (with ``export``). ``sources`` (tests) replaces
    opening the videos under ``run.data``."""
    result = train(cfg, run, sources, echo, task=PIXEL_TASK)
    main = is_main_process()
    failures = read_failures(Path(run.out) / FAILURES_NAME)
    if main and failures:
        echo(f"warning: {len(failures)} video(s) could not be decoded and were skipped; see "
             f"{Path(run.out) / FAILURES_NAME}")
    exported = None
    if export and main and result.step == result.total_steps:
        exported = export_teacher(run.out)
        echo(f"teacher: {exported.path}  (VideoMAEv2 {exported.spec.arch}, step "
             f"{exported.step}/{exported.total_steps})")
        echo(f"sha256: {exported.sha256}  ({exported.sha_path})")
        echo(f"next: {exported.cache_command(str(run.data or 'DATA_ROOT'))}")
    return TeacherRunResult(result, exported, failures)

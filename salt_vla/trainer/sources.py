"""Where a run's clips and targets come from, checked against its config before step one.

- cached targets (the default): frames tars + memory-mapped latents of a store built by
  ``salt cache build``. The teacher is never built.
- online targets: decode the videos with the config's view, run the teacher on each batch.
- in memory: arrays handed over by tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.cache.latent_store import CacheMismatchError, LatentStore
from salt_vla.errors import ConfigError
from salt_vla.models.grid import TokenGrid
from salt_vla.trainer.build import STORE_VIEW, config_grid, spec_grid, view_spec
from salt_vla.trainer.data import FrameSource, TargetSource
from salt_vla.trainer.experiments import TrainConfig
from salt_vla.trainer.tar_frames import TarFrames


@dataclass
class DataSources:
    """Frames, targets (None: online) and the row list of a run, plus what they describe."""

    frames: FrameSource
    targets: TargetSource | None
    rows: np.ndarray
    num_frames: int
    img_size: int
    grid: TokenGrid
    describe: dict[str, Any] = field(default_factory=dict)
    teacher_factory: Callable[[torch.device], Any] | None = None

    def make_teacher(self, device: torch.device) -> Any:
        """The teacher for online targets (only ever called with ``targets='online'``)."""
        if self.teacher_factory is None:
            raise ConfigError("targets='online' but these sources have no teacher")
        return self.teacher_factory(device)


def store_mismatches(cfg: TrainConfig, meta: dict[str, Any]) -> list[str]:
    """Every way the store (``cache.json`` dict) differs from what ``cfg`` would produce."""
    problems = []
    spec = view_spec(cfg, meta["view"])
    want_hash, have_hash = spec.hash(), meta["view"]["hash"]
    if want_hash != have_hash and cfg.view == STORE_VIEW:
        problems.append(
            f"view: the store records view hash {have_hash} but its spec "
            f"({meta['view'].get('spec')}) hashes to {want_hash} in this version of the "
            "view code: its frames were made by other code; rebuild the cache"
        )
    elif want_hash != have_hash:
        problems.append(
            f"view: the store was built with view hash {have_hash} "
            f"({meta['view'].get('spec')}), the config's view {cfg.view!r} has hash "
            f"{want_hash} ({spec.to_dict()}): the student would not see the teacher's pixels "
            f"(--set view={STORE_VIEW} adopts the store's view)"
        )
    want_grid = list(spec_grid(cfg, spec).as_tuple())
    have_grid = list(meta["latents"]["grid"])
    if want_grid != have_grid:
        problems.append(
            f"token grid: store {tuple(have_grid)} (t, h, w), config {tuple(want_grid)} "
            f"(view {cfg.view!r}, tubelet {cfg.tubelet}, patch {cfg.patch})"
        )
    have_dim = int(meta["teacher"]["dim"])
    if have_dim != cfg.teacher_dim:
        problems.append(
            f"teacher width: store {have_dim} ({meta['teacher'].get('arch')}), config "
            f"teacher_dim={cfg.teacher_dim} (set --set teacher_dim={have_dim} to train on "
            "this store)"
        )
    return problems


def check_store(cfg: TrainConfig, meta: dict[str, Any], where: Path | str) -> None:
    """Refuse a store that does not match the config, naming both values of each mismatch."""
    problems = store_mismatches(cfg, meta)
    if problems:
        raise CacheMismatchError(
            f"the cache at {where} does not match experiment {cfg.name!r}:\n  - "
            + "\n  - ".join(problems)
        )


def open_store(cfg: TrainConfig, cache_dir: Path | str) -> DataSources:
    """Frames + latents of the store at ``cache_dir``, after :func:`check_store`."""
    store = LatentStore(cache_dir)
    check_store(cfg, store.meta, store.root)
    spec = view_spec(cfg, store.meta["view"])
    frames = TarFrames(store.frames_shards())
    rows = np.intersect1d(store.valid_rows, frames.rows)
    if len(rows) < len(store.valid_rows):
        missing = np.setdiff1d(store.valid_rows, frames.rows)[:5].tolist()
        raise CacheMismatchError(
            f"the frames tars of {store.root} lack rows that have latents (e.g. {missing}); "
            "run `salt cache verify`"
        )
    return DataSources(
        frames=frames,
        targets=store,
        rows=rows,
        num_frames=spec.num_frames,
        img_size=spec.size,
        grid=spec_grid(cfg, spec),
        describe={"targets": "cached", "cache": str(store.root), "rows": int(len(rows)),
                  "view_hash": store.view_hash, "teacher": store.teacher},
    )


class VideoFrames:
    """Frames straight from the videos of an SSv2-layout split, through the config's view
    (online targets, and the decode-speed baseline of the loader benchmark)."""

    def __init__(self, root: Path | str, split: str, spec: Any, backend: str = "auto",
                 allow_missing: bool = False) -> None:
        from salt_vla.data.ssv2 import load_split

        self.index = load_split(root, split, allow_missing=allow_missing)
        self.ids = [e.id for e in self.index.entries]
        self.spec = spec
        self.backend = backend

    def __len__(self) -> int:
        return len(self.ids) * self.spec.n_views

    def frames(self, row: int) -> np.ndarray:
        """uint8 ``[T, size, size, 3]``: view ``row % n_views`` of video ``row // n_views``."""
        from salt_vla.data.view import load_view

        video, view = divmod(row, self.spec.n_views)
        vid = self.ids[video]
        return load_view(self.index.video_path(vid), self.spec, vid, view, self.backend)


def open_videos(cfg: TrainConfig, data_root: Path | str, split: str) -> DataSources:
    """Videos decoded on the fly + a teacher factory (``targets='online'``)."""
    spec = view_spec(cfg)
    frames = VideoFrames(data_root, split, spec)

    def make_teacher(device: torch.device) -> Any:
        from salt_vla.models.teacher import TeacherSpec, load_teacher

        tspec = TeacherSpec(
            arch=cfg.teacher_arch, num_frames=spec.num_frames, img_size=spec.size,
            tubelet=cfg.tubelet, patch=cfg.patch, layer=cfg.teacher_layer,
            target_norm=cfg.target_norm,
        )
        teacher = load_teacher(cfg.teacher, tspec, device=device)
        if teacher.dim != cfg.teacher_dim:
            raise ConfigError(
                f"teacher {cfg.teacher} has width {teacher.dim}, config teacher_dim="
                f"{cfg.teacher_dim}; set --set teacher_dim={teacher.dim}"
            )
        return teacher

    return DataSources(
        frames=frames,
        targets=None,
        rows=np.arange(len(frames)),
        num_frames=spec.num_frames,
        img_size=spec.size,
        grid=config_grid(cfg),
        describe={"targets": "online", "data": str(data_root), "split": split,
                  "teacher": cfg.teacher, "view": cfg.view},
        teacher_factory=make_teacher,
    )


def open_sources(cfg: TrainConfig, run: Any, echo: Callable[[str], None] = print
                 ) -> DataSources:
    """The store named by ``run.cache`` (cached targets) or the videos under ``run.data``
    (online targets)."""
    if cfg.targets == "cached":
        if run.cache is None:
            raise ConfigError("cached targets need a cache directory (--cache)")
        return open_store(cfg, run.cache)
    if run.data is None:
        raise ConfigError("targets='online' needs the dataset root (--data)")
    return open_videos(cfg, run.data, run.split)


class MemoryFrames:
    """Frames held in an array ``[rows, T, H, W, 3]`` uint8."""

    def __init__(self, frames: np.ndarray) -> None:
        self.array = frames

    def __len__(self) -> int:
        return len(self.array)

    def frames(self, row: int) -> np.ndarray:
        return self.array[row]


class MemoryTargets:
    """Targets held in an array ``[rows, N, D]``."""

    def __init__(self, targets: np.ndarray) -> None:
        self.array = targets

    def get(self, rows: Sequence[int]) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64)]


def memory_sources(cfg: TrainConfig, frames: np.ndarray, targets: np.ndarray | None,
                   teacher_factory: Callable[[torch.device], Any] | None = None
                   ) -> DataSources:
    """Sources over in-memory arrays shaped for ``cfg``'s view (tests, benchmarks)."""
    spec = view_spec(cfg)
    want = (spec.num_frames, spec.size, spec.size, 3)
    if frames.dtype != np.uint8 or tuple(frames.shape[1:]) != want:
        raise ValueError(f"frames must be uint8 [rows, {want}], got {frames.dtype} "
                         f"{frames.shape}")
    return DataSources(
        frames=MemoryFrames(frames),
        targets=None if targets is None else MemoryTargets(targets),
        rows=np.arange(len(frames)),
        num_frames=spec.num_frames,
        img_size=spec.size,
        grid=config_grid(cfg),
        describe={"targets": "memory" if targets is not None else "online", "rows": len(frames)},
        teacher_factory=teacher_factory,
    )

"""Where a run's clips and targets come from, checked against its config before step one.

- cached targets (the default): frames tars + memory-mapped latents of a store built by
  ``salt cache build``, opened by ``salt_vla.cache.store``; this module only says what the
  config expects of it, and checks the store's structure before training starts
  (:func:`check_store_structure`). The teacher is never built.
- online targets: decode the videos with the config's view, run the teacher on each batch.
- in memory: arrays handed over by tests and benchmarks.

Each source says what data it is (``DataSources.identity``: the store's identity_sha256, view
hash and teacher sha256; for online targets the view hash, plus the teacher's sha256 once it
is built). Checkpoints record it, and a resume on other data is refused
(:func:`check_same_data`) before anything of the run directory is rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_vla.cache.format import SHARD_COMMITTED
from salt_vla.cache.store import Store, StoreExpectation, open_store
from salt_vla.errors import ConfigError, SaltError
from salt_vla.models.grid import TokenGrid
from salt_vla.trainer.build import STORE_VIEW, config_grid, spec_grid, view_spec
from salt_vla.trainer.checkpoint import CheckpointError
from salt_vla.trainer.data import FrameSource, TargetSource
from salt_vla.trainer.experiments import TrainConfig

# What ``DataSources.identity`` compares between a checkpoint and the data of its resume
# (present in both: older checkpoints recorded none). ``kind`` and ``where`` only describe.
IDENTITY_KEYS = ("identity_sha256", "teacher_sha256", "view_hash")


class StoreStructureError(SaltError, ValueError):
    """A store file that is missing or not the size its commit record says: refused before
    step 1 (a batch would otherwise hit it hours into the run)."""


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
    identity: dict[str, Any] = field(default_factory=dict)  # see IDENTITY_KEYS

    def make_teacher(self, device: torch.device) -> Any:
        """The teacher for online targets (only ever called with ``targets='online'``)."""
        if self.teacher_factory is None:
            raise ConfigError("targets='online' but these sources have no teacher")
        return self.teacher_factory(device)


def store_expectation(cfg: TrainConfig, meta: dict[str, Any]) -> StoreExpectation:
    """What ``cfg`` would produce, to check a store (``cache.json`` dict) against, in the
    config's words: each mismatch names the config key and the ``--set`` that fixes it."""
    spec = view_spec(cfg, meta["view"])
    return StoreExpectation(
        view=spec,
        grid=spec_grid(cfg, spec).as_tuple(),
        dim=cfg.teacher_dim,
        adopts_view=cfg.view == STORE_VIEW,
        title=f"experiment {cfg.name!r}",
        by="config",
        view_name=f"the config's view {cfg.view!r}",
        view_fix=f"--set view={STORE_VIEW} adopts the store's view",
        grid_from=f"view {cfg.view!r}, tubelet {cfg.tubelet}, patch {cfg.patch}",
        dim_key="teacher_dim",
        dim_fix="set --set teacher_dim={store} to train on this store",
    )


def check_store_structure(store: Store) -> None:
    """Refuse a store whose committed shards' files are missing or not the size cache.json
    records (one ``stat`` per file, no data read): a truncated or deleted shard file fails
    here, at start, instead of when a batch reaches it.

    The store-structure check of a training start: ``open_store`` already checked the
    frames tars' sizes; this adds the latent shard files."""
    for shard in store.meta["shards"]:
        if shard.get("status") != SHARD_COMMITTED:
            continue
        for part in ("latents", "frames"):
            rec = shard[part]
            path = store.root / rec["path"]
            try:
                have = path.stat().st_size
            except FileNotFoundError:
                raise StoreStructureError(
                    f"{part} shard file {path} (shard {shard['index']}) is missing; run `salt "
                    f"cache verify {store.root}`, then `salt cache build` to rebuild it"
                ) from None
            if have != int(rec["bytes"]):
                raise StoreStructureError(
                    f"{part} shard file {path} (shard {shard['index']}) has {have} bytes, "
                    f"cache.json records {rec['bytes']} (truncated or replaced); run `salt "
                    f"cache verify {store.root}`, then `salt cache build` to rebuild it"
                )


def open_cached(cfg: TrainConfig, cache_dir: Path | str) -> DataSources:
    """Frames + latents of the store at ``cache_dir``, after checking it against ``cfg``
    and checking its structure (:func:`check_store_structure`)."""
    store = open_store(cache_dir, lambda meta: store_expectation(cfg, meta))
    check_store_structure(store)
    spec = view_spec(cfg, store.meta["view"])
    return DataSources(
        frames=store.frames,
        targets=store.latents,
        rows=store.rows,
        num_frames=spec.num_frames,
        img_size=spec.size,
        grid=spec_grid(cfg, spec),
        describe={"targets": "cached", "cache": str(store.root), "rows": int(len(store.rows)),
                  "view_hash": store.view_hash, "teacher": store.teacher},
        identity={"kind": "store", "where": str(store.root),
                  "identity_sha256": store.meta.get("identity_sha256"),
                  "view_hash": store.view_hash, "teacher_sha256": store.teacher.get("sha256")},
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
        identity={"kind": "videos", "where": str(data_root), "view_hash": spec.hash()},
    )


def open_sources(cfg: TrainConfig, run: Any, echo: Callable[[str], None] = print
                 ) -> DataSources:
    """The store named by ``run.cache`` (cached targets) or the videos under ``run.data``
    (online targets)."""
    if cfg.targets == "cached":
        if run.cache is None:
            raise ConfigError("cached targets need a cache directory (--cache)")
        return open_cached(cfg, run.cache)
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


def data_identity(sources: DataSources, teacher: Any = None) -> dict[str, Any]:
    """What data a run trains on (checkpoints record it): the sources' identity, plus the
    sha256 of the teacher that computes targets online (``teacher.sha256``: the checkpoint
    file's, or its ``random:ARCH:SEED`` spelling)."""
    identity = dict(sources.identity)
    if teacher is not None and getattr(teacher, "sha256", None):
        identity["teacher_sha256"] = teacher.sha256
    return identity


def _describe_identity(d: dict[str, Any]) -> str:
    where = d.get("where")
    what = (f"the store at {where}" if d.get("kind") == "store" else
            f"the videos under {where}" if where else "its data")
    facts = [f"{name} {d[k]}" for k, name in (("identity_sha256", "identity"),
                                              ("teacher_sha256", "teacher sha256"),
                                              ("view_hash", "view hash")) if d.get(k)]
    return f"{what} ({', '.join(facts)})" if facts else what


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path | str
                    ) -> None:
    """Refuse to resume ``checkpoint`` (whose ``data.identity`` is ``saved``) on data of
    identity ``now`` when any of :data:`IDENTITY_KEYS` recorded in both differs: another
    store with the same row count, a teacher file replaced at the same path. The message
    names both and how to point the run back at its own data."""
    if not saved:
        return  # a checkpoint from before identities were recorded
    differ = [k for k in IDENTITY_KEYS if saved.get(k) and now.get(k) and saved[k] != now[k]]
    if not differ:
        return
    if saved.get("kind") == "store" and saved.get("where"):
        fix = (f"resume with the store it was trained on (--cache {saved['where']}), or train "
               "on this one in a new run (another --out)")
    else:
        fix = ("restore the teacher checkpoint it was trained with, or start a new run with "
               "another --out")
    raise CheckpointError(
        f"{checkpoint} was trained on {_describe_identity(saved)}, but this run would read "
        f"{_describe_identity(now)}: {', '.join(differ)} differ. A resumed run must see the "
        f"same data; {fix}"
    )

"""Shared pytest fixtures: small data made by the tests themselves, once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Two cores shared with the decoder processes: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- video/view fixtures ---


@dataclass(frozen=True)
class SampleVideo:
    path: Path
    num_frames: int
    height: int
    width: int
    fps: int


def _moving_square(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A textured square sliding over a gradient: every frame differs, left differs from right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // width, y * 255 // height, (x + y) % 64 * 2], -1)
    texture = rng.integers(0, 256, (height // 3, height // 3, 3))
    frames = np.repeat(background[None], num_frames, 0).astype(np.uint8)
    side = texture.shape[0]
    for t in range(num_frames):
        top = (t * 2) % (height - side)
        left = (t * 3) % (width - side)
        frames[t, top : top + side, left : left + side] = texture
    return frames


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SampleVideo]:
    """Tiny VP9 .webm clips at 12 fps, made once per session, by name:
    "clip20" (20 frames, 48x64, a keyframe every 6 frames so decoders must seek),
    "short5" (5 frames, 32x40), "tall12" (12 frames, 64x40, portrait)."""
    from salt_vla.data.video import write_webm

    out = tmp_path_factory.mktemp("sample_videos")
    specs = {"clip20": (20, 48, 64, 6), "short5": (5, 32, 40, None), "tall12": (12, 64, 40, None)}
    videos = {}
    for seed, (name, (t, h, w, keyframes)) in enumerate(specs.items()):
        path = out / f"{name}.webm"
        write_webm(path, _moving_square(t, h, w, seed), fps=12, keyframe_interval=keyframes)
        videos[name] = SampleVideo(path, t, h, w, 12)
    return videos


def ssv2_download_copy(flat: Path, dst: Path, naming: str = "labels") -> Path:
    """Copy the flat SSv2-layout root ``flat`` into ``dst`` laid out as SSv2's download
    unpacks: videos in ``dst/20bn-something-something-v2/``, label files in ``dst/labels/``
    (``naming="labels"``) or named ``something-something-v2-<name>.json`` (``"prefixed"``)."""
    import shutil

    videos = dst / "20bn-something-something-v2"
    videos.mkdir(parents=True)
    for src in [*flat.glob("*.webm"), *(flat / "videos").glob("*.webm")]:
        shutil.copy2(src, videos / src.name)
    labels = dst / "labels" if naming == "labels" else dst
    labels.mkdir(exist_ok=True)
    prefix = "" if naming == "labels" else "something-something-v2-"
    for name in ("labels", "train", "validation", "test"):
        if (flat / f"{name}.json").is_file():
            shutil.copy2(flat / f"{name}.json", labels / f"{prefix}{name}.json")
    return dst


# --- cache fixtures ---

CACHE_BAD_VIDEOS = {"103": "zero-byte", "107": "truncated", "112": "text"}


@pytest.fixture(scope="session")
def cache_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SSv2-layout root: 10 tiny VP9 clips plus 3 corrupt files (zero-byte, truncated, text
    renamed .webm) in train.json, placed so each lands in a different 4-row shard."""
    import json

    from salt_vla.data.video import write_webm

    root = tmp_path_factory.mktemp("cache_data")
    (root / "videos").mkdir()
    classes = ["Pushing something from left to right", "Pushing something from right to left"]
    (root / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(classes)}))
    entries = []
    good = None
    for i in range(13):
        vid = str(101 + i)
        path = root / "videos" / f"{vid}.webm"
        kind = CACHE_BAD_VIDEOS.get(vid)
        if kind is None:
            write_webm(path, _moving_square(10, 48, 64, seed=i), fps=12)
            good = path
        elif kind == "zero-byte":
            path.write_bytes(b"")
        elif kind == "truncated":
            assert good is not None
            data = good.read_bytes()
            path.write_bytes(data[: len(data) // 3])
        else:
            path.write_text("this is not a video\n")
        template = classes[i % 2].replace("something", "[something]")
        entries.append({"id": vid, "label": template.replace("[something]", "a cup"),
                        "template": template, "placeholders": ["a cup"]})
    (root / "train.json").write_text(json.dumps(entries))
    (root / "validation.json").write_text("[]")
    (root / "test.json").write_text("[]")
    return root


CACHE_BUILD_ARGS = ["--split", "train", "--teacher", "random:vit_tiny:0", "--view-preset",
                    "tiny-8x64", "--shard-size", "4", "--batch-size", "3", "--workers", "1",
                    "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="session")
def cache_store(cache_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store `salt cache build <root> CACHE_BUILD_ARGS` makes, built once in-process."""
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import VIEW_PRESETS

    out = tmp_path_factory.mktemp("cache_store") / "store"
    cfg = BuildConfig(data_root=cache_data_root, out=out, teacher="random:vit_tiny:0",
                      view=VIEW_PRESETS["tiny-8x64"], shard_size=4, device="cpu",
                      pipeline=PipelineConfig(batch_size=3, workers=1),
                      command=("salt", "cache", "build", "(test fixture)"),
                      show_progress=False)
    build_cache(cfg, log=lambda msg: None)
    return out


# --- sweep / status / report fixtures ---


@pytest.fixture
def make_run():
    """Fabricate a `salt train` run directory without training: config.json (a real preset's
    resolved config), metrics.jsonl (one record per logged step, as MetricsLogger writes
    them) and heartbeat.json. ``norm_losses`` are the logged normalised losses (loss = 10x);
    ``status`` None writes no heartbeat."""
    import json
    import os
    import time

    from salt_vla.trainer.experiments import resolve

    def make(run_dir: Path, exp: str = "tiny", norm_losses: list[float] | None = None,
             total: int | None = None, status: str | None = "finished", pid: int | None = None,
             heartbeat_age: float = 0.0, log_every: int = 10, sets: list[str] | None = None,
             lr: float = 1e-3) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = resolve(exp, sets or [])
        norm_losses = [0.9, 0.8, 0.7] if norm_losses is None else norm_losses
        total = total if total is not None else log_every * len(norm_losses)
        now = time.time()
        (run_dir / "config.json").write_text(json.dumps(
            {"config": cfg.to_dict(), "task": "salt", "total_steps": total, "world_size": 1,
             "device": "cpu"}))
        n = len(norm_losses)
        with open(run_dir / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 0, "event": f"{exp}: started"}) + "\n")
            for i, v in enumerate(norm_losses):
                step = (i + 1) * log_every
                f.write(json.dumps({
                    "step": step, "time": now - heartbeat_age - 5.0 * (n - 1 - i),
                    "loss": 10 * v, "norm_loss": v, "cos": 1 - v, "lr": lr * (1 - i / (n + 1)),
                    "wd": 0.04, "grad_norm": 1.0, "epoch": step / max(total, 1),
                    # as MetricsLogger writes them: records 5 s apart, log_every steps each
                    "clips": cfg.batch_size * log_every, "interval_s": 5.0,
                    "clips_per_s": cfg.batch_size * log_every / 5.0, "data_wait": 0.1,
                    "eta_s": 5.0 * (n - 1 - i), "skipped": 0}) + "\n")
        if status is not None:
            step = log_every * n
            (run_dir / "heartbeat.json").write_text(json.dumps({
                "pid": os.getpid() if pid is None else pid, "host": __import__("platform").node(),
                "status": status, "step": step, "total": total, "started": now - 100,
                "time": now - heartbeat_age, "ckpt_step": step, "error": None}))
        return run_dir

    return make

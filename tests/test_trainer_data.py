"""The sample stream (ranks, workers, resume), the batch feeder, and metrics logging."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_vla.masking.collator import MaskCollator
from salt_vla.masking.config import MaskConfig
from salt_vla.models.grid import TokenGrid
from salt_vla.runs.rundir import read_metrics
from salt_vla.trainer.data import (
    BatchFeeder,
    ClipDataset,
    StreamBatches,
    StreamLayout,
    epoch_permutation,
    make_loader,
    plan_loader,
)
from salt_vla.trainer.metrics_log import (
    MetricsLogger,
    format_duration,
    has_wandb_key,
    progress_line,
    resolve_wandb_mode,
    start_wandb,
)
from salt_vla.trainer.sources import MemoryFrames, MemoryTargets


def rank_keys(layout: StreamLayout, seed: int, start: int, total: int) -> list[list[tuple]]:
    return [list(StreamBatches(layout, r, seed, start, total)) for r in range(layout.world_size)]


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_every_row_once_per_epoch_across_ranks(world: int, accum: int) -> None:
    rows, batch = 50, 24
    layout = StreamLayout(rows, batch, world, accum)
    total = layout.steps_for(3)  # 3 epochs of positions, the last batch straddling epochs
    per_rank = rank_keys(layout, seed=5, start=0, total=total)
    assert all(len(b) == total * accum for b in per_rank)
    assert all(len(mb) == layout.micro_batch for b in per_rank for mb in b)
    keys = [k for b in per_rank for mb in b for k in mb]
    assert len(keys) == total * batch
    seen = Counter(keys)
    assert max(seen.values()) == 1, "a (epoch, row) was served twice"
    by_epoch: dict[int, list[int]] = {}
    for epoch, row in keys:
        by_epoch.setdefault(epoch, []).append(row)
    full_epochs = total * batch // rows
    for e in range(full_epochs):
        assert sorted(by_epoch[e]) == list(range(rows)), f"epoch {e} dropped rows"


def test_stream_is_a_pure_function_of_the_step() -> None:
    layout = StreamLayout(40, 8, 2, 1)
    full = rank_keys(layout, seed=1, start=0, total=20)
    resumed = rank_keys(layout, seed=1, start=7, total=20)
    for r in range(2):
        assert resumed[r] == full[r][7:]
    # Positions are global: 1 process and 2 processes cover the same samples per step.
    single = rank_keys(StreamLayout(40, 8, 1, 1), seed=1, start=0, total=20)[0]
    for step in range(20):
        assert sorted(single[step]) == sorted(full[0][step] + full[1][step])


def test_permutations_differ_by_epoch_and_seed() -> None:
    a, b = epoch_permutation(100, 0, 0), epoch_permutation(100, 0, 1)
    assert sorted(a) == list(range(100)) and not np.array_equal(a, b)
    assert not np.array_equal(a, epoch_permutation(100, 1, 0))
    assert np.array_equal(a, epoch_permutation(100, 0, 0))


def test_batch_size_must_split_evenly() -> None:
    with pytest.raises(ValueError, match="divisible by processes x grad_accum"):
        StreamLayout(100, 10, world_size=3)


def _loader_batches(num_workers: int, frames: np.ndarray, targets: np.ndarray,
                    threads: int = 0) -> list:
    layout = StreamLayout(len(frames), 4)
    collate = MaskCollator(MaskConfig(strategy="random", ratio=0.5), TokenGrid(2, 2, 2), seed=0)
    loader = make_loader(
        ClipDataset(MemoryFrames(frames), np.arange(len(frames)), threads),
        StreamBatches(layout, 0, 3, 0, 6), collate, num_workers, 2, pin_memory=False,
    )
    feeder = BatchFeeder(loader, MemoryTargets(targets), pin=False)
    try:
        return list(feeder)
    finally:
        feeder.close()


def test_workers_do_not_change_the_batches() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (10, 4, 8, 8, 3), dtype=np.uint8)
    targets = rng.standard_normal((10, 8, 5)).astype(np.float16)
    a = _loader_batches(0, frames, targets)
    b = _loader_batches(2, frames, targets)
    c = _loader_batches(0, frames, targets, threads=3)  # the no-/dev/shm mode
    assert len(a) == len(b) == len(c) == 6
    for x, y in [*zip(a, b, strict=True), *zip(a, c, strict=True)]:
        assert torch.equal(x.rows, y.rows)
        assert torch.equal(x.frames, y.frames)
        assert torch.equal(x.targets, torch.from_numpy(targets[x.rows.numpy()]))
        assert torch.equal(y.targets, x.targets)
        for (c1, t1), (c2, t2) in zip(x.masks, y.masks, strict=True):
            assert torch.equal(c1, c2) and torch.equal(t1, t2)
        assert torch.equal(x.frames, torch.from_numpy(frames[x.rows.numpy()]))


def test_small_dev_shm_switches_to_decode_threads() -> None:
    batch = 32 * 16 * 224 * 224 * 3  # uint8 frames of one batch of 32 clips at 16 x 224
    assert plan_loader(8, 0, 2, batch, shm_free=64 * 2**30) == (8, 0, None)
    workers, threads, warning = plan_loader(8, 0, 2, batch, shm_free=64 * 2**20)
    assert (workers, threads) == (0, 8)
    assert warning is not None and "64 MiB free" in warning and "--shm-size" in warning
    assert plan_loader(0, 4, 2, batch, shm_free=0) == (0, 4, None)


def test_feeder_reraises_source_errors() -> None:
    class Broken:
        def get(self, rows: list[int]) -> np.ndarray:
            raise OSError("shard file vanished")

    frames = np.zeros((8, 4, 8, 8, 3), np.uint8)
    collate = MaskCollator(MaskConfig(strategy="random", ratio=0.5), TokenGrid(2, 2, 2), seed=0)
    loader = make_loader(ClipDataset(MemoryFrames(frames), np.arange(8)),
                         StreamBatches(StreamLayout(8, 4), 0, 0, 0, 2), collate, 0, 2, False)
    feeder = BatchFeeder(loader, Broken(), pin=False)
    with pytest.raises(OSError, match="shard file vanished"):
        next(feeder)
    feeder.close()


def test_wandb_mode_resolution() -> None:
    assert resolve_wandb_mode(None, {}) == "disabled"
    # A key in the environment is no choice: on a node without internet it used to make the
    # run go online, hang ~2 minutes and die.
    assert resolve_wandb_mode(None, {"WANDB_API_KEY": "x"}) == "disabled"
    assert resolve_wandb_mode(None, {"WANDB_MODE": "online"}) == "online"
    assert resolve_wandb_mode(None, {"WANDB_MODE": "offline", "WANDB_API_KEY": "x"}) == "offline"
    assert resolve_wandb_mode(None, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"
    assert resolve_wandb_mode("offline", {"WANDB_MODE": "online"}) == "offline"
    with pytest.raises(ValueError, match="online, offline, disabled"):
        resolve_wandb_mode("cloud", {})


class _FakeRun:
    """What the logger uses of a wandb run."""

    def __init__(self, mode: str) -> None:
        self.mode, self.logged, self.finished = mode, [], False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb_init(monkeypatch: pytest.MonkeyPatch):
    """``wandb.init`` replaced (no network, no files): ``behave[mode]`` is "hang", "raise"
    or "ok"; ``calls`` records each mode tried with its settings' init_timeout."""
    import threading

    wandb = pytest.importorskip("wandb")
    behave: dict[str, str] = {}
    calls: list[tuple[str, float]] = []
    release = threading.Event()

    def init(mode: str, settings: object, **kw: object) -> _FakeRun:
        calls.append((mode, settings.init_timeout))  # type: ignore[attr-defined]
        what = behave.get(mode, "ok")
        if what == "hang":  # as a node without internet: no answer
            release.wait(60)
            raise RuntimeError("released")
        if what == "raise":
            raise wandb.errors.CommError("Timed out while retrying: Post https://api.wandb.ai")
        return _FakeRun(mode)

    monkeypatch.setattr(wandb, "init", init)
    yield behave, calls
    release.set()


def test_wandb_start_never_hangs_or_raises(tmp_path: Path, fake_wandb_init) -> None:
    behave, calls = fake_wandb_init
    key = {"WANDB_API_KEY": "k" * 40}
    warned: list[str] = []
    init = {"project": "p", "dir": str(tmp_path)}
    # online hangs: after the timeout, offline (one warning line)
    behave["online"] = "hang"
    run = start_wandb("online", init, warned.append, timeout=0.5, env=key)
    assert run is not None and run.mode == "offline"
    assert [m for m, _ in calls] == ["online", "offline"] and calls[0][1] == 0.5
    assert len(warned) == 1 and "W&B online did not start" in warned[0]
    assert "no answer after 0.5 s" in warned[0] and "offline" in warned[0]
    # online raises (no network): offline
    behave["online"] = "raise"
    calls.clear(), warned.clear()
    assert start_wandb("online", init, warned.append, timeout=5, env=key).mode == "offline"
    assert len(warned) == 1 and "CommError" in warned[0]
    # offline fails too: W&B off, the run goes on
    behave["offline"] = "raise"
    warned.clear()
    assert start_wandb("online", init, warned.append, timeout=5, env=key) is None
    assert len(warned) == 2 and "W&B is off for this run" in warned[1]


def test_wandb_online_without_a_key_is_one_warning_and_offline(tmp_path: Path,
                                                                fake_wandb_init) -> None:
    behave, calls = fake_wandb_init
    no_key = {"NETRC": str(tmp_path / "no-netrc")}
    assert not has_wandb_key(no_key)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40)
    assert has_wandb_key({"NETRC": str(tmp_path / "netrc")})  # what `wandb login` writes
    assert has_wandb_key({"WANDB_API_KEY": "k"})
    warned: list[str] = []
    run = start_wandb("online", {"dir": str(tmp_path)}, warned.append, env=no_key)
    assert run.mode == "offline" and [m for m, _ in calls] == ["offline"]  # never online
    assert len(warned) == 1 and "no W&B API key" in warned[0] and "wandb login" in warned[0]


def test_logger_with_a_hanging_wandb_logs_to_its_file(tmp_path: Path, fake_wandb_init,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    behave, calls = fake_wandb_init
    behave["online"] = behave["offline"] = "hang"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    lines: list[str] = []
    logger = MetricsLogger(tmp_path, 10, "online", echo=lines.append, wandb_timeout=0.3)
    logger.log(1, {"loss": 1.0, "norm_loss": 0.5, "cos": 0.1, "lr": 1e-3, "data_wait": 0.0})
    logger.close()
    assert [m for m, _ in calls] == ["online", "offline"]
    assert sum(line.startswith("warning: W&B") for line in lines) == 2
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_progress_line_and_jsonl(tmp_path: Path) -> None:
    lines: list[str] = []
    logger = MetricsLogger(tmp_path, total_steps=100, echo=lines.append, batch_size=8)
    m = {"loss": 0.5, "norm_loss": 0.25, "cos": 0.9, "grad_norm": 1.5, "lr": 1e-4,
         "data_wait": 0.1}
    logger.log(10, {**m, "clips": 80, "interval_s": 8.0})  # 10 clips/s
    logger.log(20, {**m, "clips": 80, "interval_s": 2.0})  # 40 clips/s: one fast interval
    logger.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20] and recs[0]["loss"] == 0.5
    assert [r["clips_per_s"] for r in recs] == [10.0, 40.0]
    # The ETA comes from the run's rate (160 clips / 10 s), not the last interval's: 80 steps
    # x 8 clips / 16 clips/s = 40 s (the last interval alone would say 16 s).
    assert recs[0]["eta_s"] == pytest.approx(90 * 8 / 10) and recs[1]["eta_s"] == 40.0
    assert lines[1] == progress_line(20, 100, recs[1], 16.0)
    for part in ("step 20/100", "loss 0.5000", "nloss 0.2500", "gnorm 1.5", "lr 1.00e-04",
                 "40.0 clips/s (run 16.0)", "data wait 10%", "eta 0:00:40"):
        assert part in lines[1], (part, lines[1])
    # A resume at step 10 drops what the killed run logged after its checkpoint, and the
    # run's rate goes on from the records it keeps.
    again = MetricsLogger(tmp_path, 100, resume_step=10, echo=lines.append, batch_size=8)
    assert again.run.clips_per_s == 10.0
    again.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10]
    assert format_duration(2 * 86400 + 5) == "2d00:00:05"
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_tar_index_matches_tarfile_and_reads_exact_frames(tmp_path: Path) -> None:
    import tarfile

    from salt_vla.cache.frames import FramesTarWriter, decode_jpeg, encode_jpeg
    from salt_vla.cache.frames_reader import FramesIndexError, TarFrames, scan_members

    rng = np.random.default_rng(0)
    clips = {r: rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8) for r in (7, 8, 12)}
    path = tmp_path / "shard-000000.tar"
    with open(path, "wb") as f:
        writer = FramesTarWriter(f)
        for r, clip in clips.items():
            writer.add(f"{r:09d}", [encode_jpeg(x) for x in clip],
                       {"row": r, "video_id": str(r), "view": 0, "label": 0})
        writer.close()
    with tarfile.open(path) as tar:
        want = [(m.name.encode(), m.offset_data, m.size) for m in tar if m.isfile()]
    assert scan_members(path) == want
    frames = TarFrames([path])
    assert frames.rows.tolist() == [7, 8, 12]
    for r, clip in clips.items():
        expect = np.stack([decode_jpeg(encode_jpeg(x)) for x in clip])
        assert np.array_equal(frames.frames(r), expect)
    with pytest.raises(FramesIndexError, match="row 9"):
        frames.frames(9)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FramesIndexError, match="cut.tar"):
        TarFrames([cut])

"""The training loop on in-memory clips: resume identity, non-finite stops, gradient
accumulation, batch 64 through DataLoader workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_vla.errors import ConfigError
from salt_vla.runs.rundir import loss_curve, read_heartbeat
from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.loop import NonFiniteLoss, RunSpec, train
from salt_vla.trainer.sources import memory_sources

# A small, fast student/predictor for loop mechanics (the "tiny" preset's data shapes).
SMALL = ["student_dim=64", "student_depth=1", "student_heads=2", "predictor_width=32",
         "predictor_depth=1", "predictor_heads=2", "num_workers=0", "log_every=1",
         "warmup_steps=3"]


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, 8, 64, 64, 3), dtype=np.uint8)
    targets = rng.standard_normal((64, 64, 192)).astype(np.float16)
    return frames, targets


def run(tmp: Path, clips: tuple, sets: list[str], resume: str | None = None, **kw: object):
    cfg = resolve("tiny", SMALL + sets)
    frames, targets = clips
    kw.setdefault("echo", lambda s: None)
    return train(cfg, RunSpec(out=tmp, resume=resume), memory_sources(cfg, frames, targets),
                 **kw)


def test_resume_continues_exactly(tmp_path: Path, clips: tuple) -> None:
    torch.set_num_threads(1)
    sets = ["max_steps=10", "batch_size=4", "limit_rows=24"]
    full = run(tmp_path / "full", clips, sets)
    assert full.step == 10 and len(full.losses) == 10
    assert read_heartbeat(tmp_path / "full")["status"] == "finished"
    part = run(tmp_path / "part", clips, sets + ["stop_at=4"])
    assert part.step == 4 and load_checkpoint(tmp_path / "part" / "ckpt.pt")["step"] == 4
    beat = read_heartbeat(tmp_path / "part")
    assert (beat["status"], beat["step"], beat["ckpt_step"]) == ("stopped", 4, 4)
    rest = run(tmp_path / "part", clips, sets, resume="yes")
    assert rest.start_step == 4 and rest.step == 10
    assert part.losses + rest.losses == full.losses  # bitwise, step by step
    assert loss_curve(tmp_path / "part") == loss_curve(tmp_path / "full")
    full_w = load_checkpoint(tmp_path / "full" / "ckpt.pt")["student"]
    part_w = load_checkpoint(tmp_path / "part" / "ckpt.pt")["student"]
    assert full_w.keys() == part_w.keys()
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


def test_resume_rules(tmp_path: Path, clips: tuple) -> None:
    sets = ["max_steps=2", "batch_size=4", "limit_rows=8"]
    run(tmp_path, clips, sets)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        run(tmp_path, clips, sets)
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.002"):
        run(tmp_path, clips, sets + ["lr=0.002"], resume="yes")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(tmp_path / "empty", clips, sets, resume="yes")
    fresh = run(tmp_path / "auto", clips, sets, resume="auto")
    assert fresh.start_step == 0 and fresh.step == 2
    again = run(tmp_path / "auto", clips, sets + ["log_every=5"], resume="auto")
    assert again.start_step == 2 and again.losses == []  # runtime keys may change


def test_non_finite_loss_stops_with_checkpoint(tmp_path: Path, clips: tuple) -> None:
    frames, targets = clips
    bad = targets.copy()
    bad[:] = np.nan
    with pytest.raises(NonFiniteLoss, match="non-finite loss") as e:
        run(tmp_path, (frames, bad), ["max_steps=3", "batch_size=4"])
    assert "skip_nonfinite=0" in str(e.value)
    saved = list(tmp_path.glob("nonfinite-step*.pt"))
    assert [p.name for p in saved] == ["nonfinite-step1.pt"]
    assert load_checkpoint(saved[0])["step"] == 0
    assert not (tmp_path / "ckpt.pt").exists()
    beat = read_heartbeat(tmp_path)
    assert beat["status"] == "failed" and "NonFiniteLoss" in beat["error"]


def test_skip_nonfinite_tolerates_bad_batches(tmp_path: Path, clips: tuple) -> None:
    frames, targets = clips
    bad = targets.copy()
    bad[3] = np.inf  # one poisoned clip: only batches holding row 3 are skipped
    res = run(tmp_path, (frames, bad), ["max_steps=6", "batch_size=4", "limit_rows=8",
                                         "skip_nonfinite=10"])
    assert res.step == 6
    assert 0 < len(res.losses) < 6
    assert all(np.isfinite(res.losses))


def test_grad_accumulation_matches_one_big_batch(tmp_path: Path, clips: tuple) -> None:
    # Random masks are per-sample (no per-batch block size, no truncation), so two
    # micro-batches of 4 see exactly the masks one batch of 8 sees.
    sets = ["max_steps=3", "batch_size=8", "mask_strategy=random", "grad_clip=0"]
    one = run(tmp_path / "one", clips, sets)
    two = run(tmp_path / "two", clips, sets + ["grad_accum=2"])
    np.testing.assert_allclose(one.losses, two.losses, rtol=1e-4)


def test_batch_64_through_workers(tmp_path: Path, clips: tuple) -> None:
    res = run(tmp_path, clips, ["max_steps=2", "batch_size=64", "num_workers=2"])
    assert res.step == 2 and all(np.isfinite(res.losses))
    recs = loss_curve(tmp_path)
    assert [s for s, _ in recs] == [1, 2]


def test_sigterm_stops_with_a_checkpoint(tmp_path: Path, clips: tuple) -> None:
    def echo(line: str) -> None:
        if line.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster preemption would

    res = run(tmp_path, clips, ["max_steps=8", "batch_size=4"], echo=echo)
    assert 2 <= res.step < 8
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == res.step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    rest = run(tmp_path, clips, ["max_steps=8", "batch_size=4"], resume="yes")
    assert rest.start_step == res.step and rest.step == 8

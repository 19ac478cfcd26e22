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
from salt_vla.runs.rundir import checkpoints, loss_curve, read_heartbeat
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
    # every file the message names exists (it used to name a ckpt.pt never written)
    assert "no regular checkpoint was written before it" in str(e.value)
    assert str(tmp_path / "ckpt.pt") not in str(e.value)
    beat = read_heartbeat(tmp_path)
    assert beat["status"] == "failed" and "NonFiniteLoss" in beat["error"]


def test_non_finite_stop_names_the_last_checkpoint_that_exists(tmp_path: Path,
                                                               clips: tuple) -> None:
    frames, targets = clips
    sets = ["max_steps=8", "batch_size=4", "limit_rows=16"]
    run(tmp_path, clips, sets + ["stop_at=3"])  # a regular checkpoint at step 3
    bad = targets.copy()
    bad[:] = np.nan  # then the data turns bad
    with pytest.raises(NonFiniteLoss) as e:
        run(tmp_path, (frames, bad), sets, resume="yes")
    msg = str(e.value)
    named = [w.rstrip(".;,") for w in msg.split() if w.startswith(str(tmp_path))]
    assert len(named) == 2 and all(Path(p).is_file() for p in named), msg
    assert f"the last regular checkpoint is {tmp_path / 'ckpt.pt'}" in msg


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


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_with_a_checkpoint_and_its_exit_code(tmp_path: Path, clips: tuple,
                                                            sig: signal.Signals, code: int
                                                            ) -> None:
    def echo(line: str) -> None:
        if line.startswith("step 2/"):
            os.kill(os.getpid(), sig)  # as a cluster preemption (or Ctrl-C) would

    previous = signal.getsignal(sig)
    res = run(tmp_path, clips, ["max_steps=8", "batch_size=4"], echo=echo)
    assert 2 <= res.step < 8
    assert res.stopped_by == sig.name and res.exit_code == code  # not 0: it did not finish
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == res.step
    assert read_heartbeat(tmp_path)["status"] == "stopped"
    assert signal.getsignal(sig) is previous  # handlers restored
    rest = run(tmp_path, clips, ["max_steps=8", "batch_size=4"], resume="yes")
    assert rest.start_step == res.step and rest.step == 8 and rest.exit_code == 0
    planned = run(tmp_path / "planned", clips, ["max_steps=8", "batch_size=4", "stop_at=3"])
    assert planned.step == 3 and planned.exit_code == 0  # stop_at is the plan, not a stop


def test_resume_falls_back_past_a_damaged_checkpoint_and_stays_exact(tmp_path: Path,
                                                                      clips: tuple) -> None:
    """ckpt.pt (and its step file) damaged: the resume takes the kept checkpoint before it,
    says which it skipped and why, removes partial temp files, and the losses of the steps it
    redoes are those of an uninterrupted run."""
    torch.set_num_threads(1)
    sets = ["max_steps=8", "batch_size=4", "limit_rows=16", "ckpt_every=2"]
    full = run(tmp_path / "full", clips, sets)
    part_dir = tmp_path / "part"
    part = run(part_dir, clips, sets + ["stop_at=6"])
    assert [s for s, _ in checkpoints(part_dir)] == [2, 4, 6]  # keep_checkpoints=2 + latest
    with open(part_dir / "ckpt.pt", "r+b") as f:  # damaged in place (ckpt-000006.pt too)
        f.truncate(1000)
    stale = part_dir / ".ckpt.pt.tmp-4242-abcd"  # left by a checkpoint write a kill cut short
    stale.write_bytes(b"\0" * 4096)
    lines: list[str] = []
    rest = run(part_dir, clips, sets, resume="yes", echo=lines.append)
    assert not stale.exists()
    assert any(str(stale) in line and "removed" in line for line in lines)
    warned = [line for line in lines if line.startswith("warning: skipped")]
    assert len(warned) == 1 and str(part_dir / "ckpt.pt") in warned[0]
    assert "truncated" in warned[0] and "ckpt-000004.pt" in warned[0]
    assert rest.start_step == 4 and rest.step == 8
    assert part.losses[:4] + rest.losses == full.losses  # bitwise, step by step
    assert loss_curve(part_dir) == loss_curve(tmp_path / "full")
    assert load_checkpoint(part_dir / "ckpt.pt")["step"] == 8  # rewritten as the run went on


def test_keep_checkpoints_and_snapshots(tmp_path: Path, clips: tuple) -> None:
    run(tmp_path, clips, ["max_steps=12", "batch_size=4", "limit_rows=16", "ckpt_every=2",
                          "keep_checkpoints=1", "snapshot_every=3"])
    # checkpoints at 2, 4, 6, 8, 10, 12 and the snapshots 3, 6, 9, 12; kept: the snapshots,
    # the latest (12) and the one before it (10)
    assert [s for s, _ in checkpoints(tmp_path)] == [3, 6, 9, 10, 12]
    assert all(load_checkpoint(p)["step"] == s for s, p in checkpoints(tmp_path))


def test_a_run_that_dies_while_starting_shows_as_failed(tmp_path: Path, clips: tuple,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat is written before the logger (W&B) starts: a start that dies is a failed
    run in `salt status`, not a live one without a heartbeat."""
    from salt_vla.runs.status import run_status
    from salt_vla.trainer import loop

    def dies(*a: object, **k: object) -> None:
        raise RuntimeError("the logger died while starting")

    monkeypatch.setattr(loop, "MetricsLogger", dies)
    with pytest.raises(RuntimeError, match="died while starting"):
        run(tmp_path, clips, ["max_steps=2", "batch_size=4"])
    st = run_status(tmp_path)
    assert st.state == "failed" and "died while starting" in st.message and st.exit_code == 1

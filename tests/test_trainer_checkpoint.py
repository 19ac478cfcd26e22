"""Atomic checkpoints, safe loading, RNG capture."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_vla.trainer import checkpoint as ckpt
from salt_vla.trainer.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ckpt.pt", {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
        "rng": [capture_rng()], "config": {"lr": 1e-3, "betas": [0.9, 0.95]},
    })
    state = load_checkpoint(path)  # uses weights_only=True
    assert state["step"] == 7
    assert torch.equal(state["model"]["weight"], model.weight)
    assert not list(tmp_path.glob(".*tmp*"))


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})

    def broken_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_unreadable_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng()
    want = (random.random(), np.random.randn(), torch.rand(3))
    path = save_checkpoint(tmp_path / "r.pt", {"rng": state})
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])


# --- why a checkpoint does not load, in words (never torch's `weights_only=False` advice) ---


def _real_checkpoint(path: Path) -> Path:
    model = torch.nn.Linear(8, 8)
    return save_checkpoint(path, {"model": model.state_dict(), "step": 3})


def test_each_unloadable_file_says_what_it_is(tmp_path: Path) -> None:
    import argparse

    good = _real_checkpoint(tmp_path / "good.pt")
    cases = {
        "empty.pt": (b"", "empty file (0 bytes)"),
        "garbage.pt": (b"this is not a checkpoint", "not a torch zip archive"),
        "truncated.pt": (good.read_bytes()[: good.stat().st_size // 2], "truncated"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    # A pickle with objects besides tensors: torch.load(weights_only=True) refuses it, and its
    # message suggests weights_only=False, which would run whatever code the file holds.
    torch.save({"format": 1, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")
    cases["pickled.pt"] = (b"", "holds Python objects besides tensors")
    for name, (_, want) in cases.items():
        with pytest.raises(ckpt.UnreadableCheckpoint) as e:
            load_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert want in msg and str(tmp_path / name) in msg, f"{name}: {msg}"
        assert "weights_only" not in msg, f"{name}: the message passes on torch's unsafe advice"
    state_dict = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), state_dict)
    with pytest.raises(CheckpointError, match="not a checkpoint written by salt-vla"):
        load_checkpoint(state_dict)


# --- kept checkpoints: rotation, snapshots, the fallback of a resume ---------------------------


def test_rotation_keeps_the_last_k_plus_the_latest_and_snapshots(tmp_path: Path) -> None:
    from salt_vla.runs.rundir import checkpoint_path, checkpoints, step_checkpoint_path

    for step in range(1, 11):
        ckpt.save_run_checkpoint(tmp_path, step, {"step": step}, keep=2, snapshot_every=4)
    assert [s for s, _ in checkpoints(tmp_path)] == [4, 8, 9, 10]
    assert checkpoints(tmp_path)[-1][1] == step_checkpoint_path(tmp_path, 10)
    assert step_checkpoint_path(tmp_path, 10).name == "ckpt-000010.pt"
    latest = checkpoint_path(tmp_path)
    assert latest.samefile(step_checkpoint_path(tmp_path, 10))  # one file, two names
    assert load_checkpoint(latest)["step"] == 10
    assert not list(tmp_path.glob(".*tmp*"))
    # keep=0: only the latest (and snapshots) stay
    for step in range(11, 14):
        ckpt.save_run_checkpoint(tmp_path, step, {"step": step}, keep=0, snapshot_every=4)
    assert [s for s, _ in checkpoints(tmp_path)] == [4, 8, 12, 13]


def test_resume_candidates_fall_back_to_the_newest_that_loads(tmp_path: Path) -> None:
    from salt_vla.runs.rundir import checkpoint_path, step_checkpoint_path

    for step in (2, 4, 6):
        ckpt.save_run_checkpoint(tmp_path, step, {"step": step}, keep=2)
    latest = checkpoint_path(tmp_path)
    # ckpt.pt and ckpt-000006.pt are one file: tried once
    assert ckpt.resume_candidates(tmp_path) == [
        latest, step_checkpoint_path(tmp_path, 4), step_checkpoint_path(tmp_path, 2)]
    with open(latest, "r+b") as f:  # damaged in place: both names of step 6
        f.truncate(100)
    state, used, skipped = ckpt.load_first(ckpt.resume_candidates(tmp_path))
    assert state["step"] == 4 and used == step_checkpoint_path(tmp_path, 4)
    assert [(p, "truncated" in why) for p, why in skipped] == [(latest, True)]
    # ckpt.pt replaced by another (empty) file: step 6's own file still loads
    latest.unlink()
    latest.write_bytes(b"")
    state, used, skipped = ckpt.load_first(ckpt.resume_candidates(tmp_path))
    assert state["step"] == 4  # step 6's file is the truncated one
    assert [p.name for p, _ in skipped] == ["ckpt.pt", "ckpt-000006.pt"]
    assert "empty file" in skipped[0][1]
    for p in ckpt.resume_candidates(tmp_path):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError) as e:
        ckpt.load_first(ckpt.resume_candidates(tmp_path))
    msg = str(e.value)
    for name in ("ckpt.pt", "ckpt-000006.pt", "ckpt-000004.pt", "ckpt-000002.pt"):
        assert str(tmp_path / name) in msg and (tmp_path / name).exists()
    assert "another --out" in msg and "weights_only" not in msg

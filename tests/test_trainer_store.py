"""`salt train` on a real (tiny) store: overfitting, store checks, the teacher never built,
resume after SIGKILL, 2-process DDP, online targets."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salt_vla.cache.latent_store import LatentStore
from salt_vla.cache.store import CacheMismatchError, check_store
from salt_vla.cli import app
from salt_vla.runs.rundir import loss_curve
from salt_vla.trainer.checkpoint import load_checkpoint
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.loop import RunSpec, train
from salt_vla.trainer.sources import open_cached, store_expectation

# Fast model for mechanics tests (the store's shapes are the tiny preset's).
SMALL = ["student_dim=64", "student_depth=1", "student_heads=2", "predictor_width=32",
         "predictor_depth=1", "predictor_heads=2", "warmup_steps=3"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-video synthetic SSv2 root (32 train videos, 16 frames at 64x64)."""
    from salt_vla.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("trainer_data") / "data"
    generate_dataset(root, SynthConfig(videos=40, classes=4, frames=16, height=64, width=64,
                                       splits=(0.8, 0.1, 0.1)), workers=1)
    return root


@pytest.fixture(scope="module")
def store(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny store `salt cache build` makes from ``synth_root`` (vit_tiny random teacher,
    view tiny-8x64, 32 rows in two shards)."""
    out = build_store(synth_root, tmp_path_factory.mktemp("trainer_store") / "cache",
                      "random:vit_tiny:0")
    assert len(LatentStore(out).valid_rows) == 32
    return out


def build_store(root: Path, out: Path, teacher: str) -> Path:
    """`salt cache build` of ``root`` into ``out``: view tiny-8x64, vit_tiny ``teacher``,
    16-row shards."""
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import VIEW_PRESETS

    build_cache(BuildConfig(data_root=root, out=out, teacher=teacher, teacher_arch="vit_tiny",
                            view=VIEW_PRESETS["tiny-8x64"], shard_size=16, device="cpu",
                            show_progress=False, pipeline=PipelineConfig(batch_size=8, workers=1)),
                log=lambda msg: None)
    return out


def test_tiny_run_overfits_32_clips(store: Path, tmp_path: Path) -> None:
    # Well within the 200-step budget: 120 steps of 8 clips over the store's 32 rows.
    cfg = resolve("tiny", SMALL + ["max_steps=120", "limit_rows=32", "batch_size=8",
                                   "num_workers=0", "log_every=40", "lr=2e-3",
                                   "warmup_steps=10"])
    res = train(cfg, RunSpec(out=tmp_path, cache=store), echo=lambda s: None)
    first = float(np.mean(res.norm_losses[:5]))
    last = float(np.mean(res.norm_losses[-10:]))
    assert last <= 0.7 * first, f"normalised loss {first:.3f} -> {last:.3f}: < 30% lower"
    assert last < 1.0, f"normalised loss {last:.3f}: no better than predicting the mean"
    assert (tmp_path / "config.json").exists() and (tmp_path / "ckpt.pt").exists()


def test_cached_training_never_builds_a_teacher(store: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import salt_vla.models.teacher as teacher_mod

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the teacher was constructed during cached training")

    monkeypatch.setattr(teacher_mod, "load_teacher", boom)
    monkeypatch.setattr(teacher_mod.Teacher, "__init__", boom)
    cfg = resolve("tiny", SMALL + ["max_steps=3", "num_workers=1"])
    res = train(cfg, RunSpec(out=tmp_path, cache=store), echo=lambda s: None)
    assert res.step == 3


def test_store_mismatches_are_refused_naming_both_values(store: Path, tmp_path: Path) -> None:
    meta = LatentStore(store).meta
    check_store(meta, store_expectation(resolve("tiny"), meta), store)  # the matching config passes
    with pytest.raises(CacheMismatchError) as e:
        check_store(meta, store_expectation(resolve("tiny", ["teacher_dim=768"]), meta), store)
    assert "store 192" in str(e.value) and "teacher_dim=768" in str(e.value)
    with pytest.raises(CacheMismatchError) as e:
        check_store(meta, store_expectation(resolve("tiny", ["patch=8"]), meta), store)
    assert "store (4, 4, 4)" in str(e.value) and "config (4, 8, 8)" in str(e.value)
    with pytest.raises(CacheMismatchError) as e:
        open_cached(resolve("tiny", ["view=tiny-8x64-mv2"]), store)
    msg = str(e.value)
    assert meta["view"]["hash"] in msg and "'tiny-8x64-mv2'" in msg
    from salt_vla.data.view import VIEW_PRESETS
    assert VIEW_PRESETS["tiny-8x64-mv2"].hash() in msg
    # A cache built with custom view flags: view=store adopts its spec (still hash-checked).
    assert open_cached(resolve("tiny", ["view=store"]), store).grid.as_tuple() == (4, 4, 4)
    # And through the CLI, before any training step.
    result = CliRunner().invoke(app, ["train", "--exp", "tiny", "--cache", str(store),
                                      "--out", str(tmp_path / "r"), "--set", "teacher_dim=384"])
    assert result.exit_code == 1
    assert "teacher width: store 192" in result.output and "teacher_dim=384" in result.output
    assert not (tmp_path / "r" / "ckpt.pt").exists()


def test_failed_rows_are_skipped(cache_store: Path, tmp_path: Path) -> None:
    """The shared cache fixture has 3 undecodable videos: training uses the other rows."""
    src = open_cached(resolve("tiny"), cache_store)
    assert len(src.rows) == len(LatentStore(cache_store).valid_rows) < len(LatentStore(
        cache_store))
    cfg = resolve("tiny", SMALL + ["max_steps=3", "batch_size=4", "num_workers=0"])
    res = train(cfg, RunSpec(out=tmp_path, cache=cache_store), echo=lambda s: None)
    assert res.step == 3 and all(np.isfinite(res.losses))


def _cli_child(args: list[str], env: dict[str, str]) -> None:
    """Run `salt ARGS` in a forked child (no re-import of torch: seconds instead of tens)."""
    os.environ.update(env)
    code = 1
    try:
        app(args, standalone_mode=False)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def fork_cli(args: list[str], env: dict[str, str] | None = None) -> mp.process.BaseProcess:
    proc = mp.get_context("fork").Process(target=_cli_child, args=(args, env or {}))
    proc.start()
    return proc


def train_args(store: Path, out: Path, sets: list[str]) -> list[str]:
    args = ["train", "--exp", "tiny", "--cache", str(store), "--out", str(out),
            "--wandb", "disabled"]
    for s in sets:
        args += ["--set", s]
    return args


def test_resume_after_sigkill_is_exact(store: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sets = SMALL + ["max_steps=40", "ckpt_every=4", "log_every=1", "num_workers=1",
                    "batch_size=4"]
    killed = tmp_path / "killed"
    proc = fork_cli(train_args(store, killed, sets))
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.is_alive():
            if (killed / "metrics.jsonl").exists() and max(
                    [s for s, _ in loss_curve(killed)], default=0) >= 10:
                break
            time.sleep(0.01)
        assert proc.is_alive(), f"the run ended (exit {proc.exitcode}) before the kill"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join()
    before_kill = dict(loss_curve(killed))
    saved_step = load_checkpoint(killed / "ckpt.pt")["step"]
    assert 4 <= saved_step <= max(before_kill) < 40

    result = CliRunner().invoke(app, train_args(store, killed, sets) + ["--resume"])
    assert result.exit_code == 0, result.output
    assert f"resumed from {killed / 'ckpt.pt'} at step {saved_step}" in result.output

    ref = tmp_path / "ref"
    train(resolve("tiny", sets), RunSpec(out=ref, cache=store), echo=lambda s: None)
    got, want = loss_curve(killed), loss_curve(ref)
    assert [s for s, _ in got] == list(range(1, 41))
    assert got == want  # bitwise-identical losses at every step
    # The steps the killed run did after its checkpoint were redone identically.
    assert all(dict(got)[s] == loss for s, loss in before_kill.items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_one_process(store: Path, tmp_path: Path) -> None:
    """Two gloo ranks with the environment torchrun sets (forked, so no re-import of torch:
    seconds instead of the ~30 s a `torchrun --nproc_per_node 2 -m salt_vla train` launch
    takes on a loaded 2-core CI box), vs one process."""
    torch.set_num_threads(1)
    # Random masks are per sample, so 2 ranks x 4 clips see what 1 process x 8 clips sees.
    sets = SMALL + ["max_steps=4", "log_every=1", "num_workers=1", "batch_size=8",
                    "mask_strategy=random", "ckpt_every=2"]
    port = str(free_port())
    ranks = [fork_cli(train_args(store, tmp_path / "ddp", sets),
                      {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    for p in ranks:
        p.join(timeout=300)
    assert [p.exitcode for p in ranks] == [0, 0]
    single = train(resolve("tiny", sets), RunSpec(out=tmp_path / "one", cache=store),
                   echo=lambda s: None)
    ddp = [loss for _, loss in loss_curve(tmp_path / "ddp")]
    np.testing.assert_allclose(ddp, single.losses, rtol=1e-4)
    state = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    one = load_checkpoint(tmp_path / "one" / "ckpt.pt")
    for name, w in state["student"].items():
        torch.testing.assert_close(w, one["student"][name], rtol=1e-3, atol=1e-5)


def test_online_targets_run_the_teacher_on_videos(synth_root: Path, tmp_path: Path) -> None:
    cfg = resolve("tiny", SMALL + ["max_steps=2", "batch_size=4", "num_workers=1",
                                   "targets=online", "teacher=random:vit_tiny:0"])
    res = train(cfg, RunSpec(out=tmp_path, data=synth_root), echo=lambda s: None)
    assert res.step == 2 and all(np.isfinite(res.losses))


# --- a run bound to its data; the store checked at start; exit codes -------------------------


@pytest.fixture(scope="module")
def other_store(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same videos, view and row count as ``store``, another (random) teacher."""
    return build_store(synth_root, tmp_path_factory.mktemp("trainer_store_b") / "cache",
                       "random:vit_tiny:1")


def test_resume_on_another_store_is_refused_and_changes_nothing(
        store: Path, other_store: Path, tmp_path: Path) -> None:
    from salt_vla.cache.format import read_manifest
    from salt_vla.trainer.checkpoint import CheckpointError

    a, b = read_manifest(store), read_manifest(other_store)
    assert a["rows"]["count"] == b["rows"]["count"] and a["identity_sha256"] != b["identity_sha256"]
    sets = SMALL + ["max_steps=4", "stop_at=2", "batch_size=4", "num_workers=0"]
    train(resolve("tiny", sets), RunSpec(out=tmp_path, cache=store), echo=lambda s: None)
    ident = load_checkpoint(tmp_path / "ckpt.pt")["data"]["identity"]
    assert ident["identity_sha256"] == a["identity_sha256"]
    assert ident["teacher_sha256"] == "random:vit_tiny:0"
    assert ident["view_hash"] == a["view"]["hash"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError) as e:
        train(resolve("tiny", sets), RunSpec(out=tmp_path, cache=other_store, resume="yes"),
              echo=lambda s: None)
    msg = str(e.value)
    for fact in (a["identity_sha256"], b["identity_sha256"], str(store), str(other_store),
                 "random:vit_tiny:0", "random:vit_tiny:1", f"--cache {store}"):
        assert fact in msg, (fact, msg)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # config.json (and everything else) as it was
    # its own store still resumes
    res = train(resolve("tiny", sets[:-3] + ["batch_size=4", "num_workers=0"]),
                RunSpec(out=tmp_path, cache=store, resume="yes"), echo=lambda s: None)
    assert res.start_step == 2 and res.step == 4


def test_online_runs_record_the_teacher_file_sha256(synth_root: Path, tmp_path: Path) -> None:
    """A teacher checkpoint replaced at the same path (same config) is another teacher."""
    from salt_vla.models.teacher import TeacherSpec, load_teacher
    from salt_vla.trainer.checkpoint import CheckpointError

    spec = TeacherSpec(arch="vit_tiny", num_frames=8, img_size=64, tubelet=2, patch=16)
    path = tmp_path / "teacher.pth"
    first = load_teacher("random:vit_tiny:0", spec, device="cpu")
    first.save_checkpoint(path)
    sets = SMALL + ["max_steps=2", "stop_at=1", "batch_size=4", "num_workers=0",
                    "targets=online", f"teacher={path}", "teacher_arch=vit_tiny"]
    out = tmp_path / "run"
    train(resolve("tiny", sets), RunSpec(out=out, data=synth_root), echo=lambda s: None)
    sha = load_checkpoint(out / "ckpt.pt")["data"]["identity"]["teacher_sha256"]
    assert sha == load_teacher(path, spec, device="cpu").sha256 and len(sha) == 64
    load_teacher("random:vit_tiny:1", spec, device="cpu").save_checkpoint(path)
    config = (out / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match="teacher_sha256 differ") as e:
        train(resolve("tiny", sets), RunSpec(out=out, data=synth_root, resume="yes"),
              echo=lambda s: None)
    assert sha in str(e.value) and load_teacher(path, spec, device="cpu").sha256 in str(e.value)
    assert (out / "config.json").read_bytes() == config


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_shard_file_is_refused_before_step_one(store: Path, tmp_path: Path,
                                                         damage: str) -> None:
    import shutil

    from salt_vla.trainer.sources import StoreStructureError

    copy = tmp_path / "cache"
    shutil.copytree(store, copy)
    shard = copy / "latents.zarr" / "c" / "1" / "0" / "0"
    if damage == "truncate":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size - 100)
    else:
        shard.unlink()
    out = tmp_path / "run"
    with pytest.raises(StoreStructureError) as e:
        train(resolve("tiny", SMALL + ["max_steps=4", "batch_size=4", "num_workers=0"]),
              RunSpec(out=out, cache=copy), echo=lambda s: None)
    msg = str(e.value)
    assert str(shard) in msg and f"salt cache verify {copy}" in msg
    assert ("truncated" in msg) if damage == "truncate" else ("missing" in msg)
    assert not out.exists()  # refused before anything was written, let alone step 1
    result = CliRunner().invoke(app, train_args(copy, out, SMALL + ["max_steps=4"]))
    assert result.exit_code == 1 and str(shard) in result.output


def test_cli_exits_143_after_a_sigterm_checkpoint(store: Path, tmp_path: Path) -> None:
    """A scheduler (or `salt train && salt export`) tells a preempted run from a finished one."""
    import threading

    out = tmp_path / "run"

    def preempt() -> None:  # once the loop runs (its handler is installed), as SLURM would
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not loss_curve(out):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=preempt)
    t.start()
    result = CliRunner().invoke(app, train_args(store, out, SMALL + [
        "max_steps=200", "batch_size=4", "num_workers=0", "log_every=1"]))
    t.join()
    assert result.exit_code == 143, result.output
    assert "SIGTERM received" in result.output
    step = load_checkpoint(out / "ckpt.pt")["step"]
    assert 1 <= step < 200


def test_cli_wandb_online_without_a_key_warns_and_trains(store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    modes: list[str] = []

    class Run:
        def log(self, *a: object, **k: object) -> None: ...

        def finish(self) -> None: ...

    def init(mode: str, **kw: object) -> Run:
        modes.append(mode)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    args = train_args(store, tmp_path / "run", SMALL + ["max_steps=2", "batch_size=4",
                                                        "num_workers=0"])
    args[args.index("--wandb") + 1] = "online"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert modes == ["offline"]
    warnings = [line for line in result.output.splitlines() if "W&B API key" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --wandb online")
    assert "Traceback" not in result.output

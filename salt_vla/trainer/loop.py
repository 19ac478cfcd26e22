"""The SALT training loop, top to bottom.

    setup -> resume? -> data -> models -> optimiser -> for each step:
        schedules -> (micro-batches: frames -> [teacher] -> student/predictor -> backward)
        -> clip -> AdamW step unless non-finite -> [read stats, log] -> checkpoint

The step never waits for the accelerator: its statistics and the non-finite decision stay on
the device (``step_stats.py``, ``optim.step_unless``) and the host reads them every
``log_every`` steps, before a checkpoint and at the end. Under torchrun the ranks also agree
on a stop request (Ctrl-C, SIGTERM) there, so a stop waits for the next such step.

Everything that decides *what* is computed (data order, masks, schedules) is a pure function
of (config, step), and the checkpoint holds the rest (weights, optimiser, RNG), so a resumed
run continues exactly where the checkpoint left it.

What is trained comes from a ``Task`` (``task.py``): stage 2's student + predictor by
default; the stage-1 pixel teacher reuses this loop unchanged. Rank 0 writes config.json,
metrics.jsonl, heartbeat.json (``runs/heartbeat.py``: alive / finished / stopped / failed)
and the checkpoints, under the names of the run-directory contract (``runs/rundir.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from salt_vla import __version__
from salt_vla import distributed as dist_utils
from salt_vla.errors import ConfigError, SaltError
from salt_vla.masking.collator import MaskCollator
from salt_vla.models.pixels import frames_to_input
from salt_vla.paths import absolute
from salt_vla.runs.heartbeat import Heartbeat
from salt_vla.runs.rundir import (
    CLIPS_KEY,
    INTERVAL_KEY,
    checkpoint_path,
    checkpoint_temps,
    git_state,
    nonfinite_path,
    resume_command,
    write_run_config,
)
from salt_vla.trainer.build import mask_config
from salt_vla.trainer.checkpoint import (
    CheckpointError,
    capture_rng,
    load_first,
    restore_rng,
    resume_candidates,
    save_checkpoint,
    save_run_checkpoint,
)
from salt_vla.trainer.data import (
    BatchFeeder,
    ClipDataset,
    StreamBatches,
    StreamLayout,
    make_loader,
    plan_loader,
    shm_free_bytes,
)
from salt_vla.trainer.interrupt import StopRequest, exit_code_for
from salt_vla.trainer.loop_config import EXTEND_KEYS, RESUME_KEYS, LoopConfig, diff
from salt_vla.trainer.metrics_log import MetricsLogger
from salt_vla.trainer.optim import build_optimizer, set_schedules, step_unless
from salt_vla.trainer.sources import DataSources, check_same_data, data_identity
from salt_vla.trainer.step_stats import DeviceStats
from salt_vla.trainer.task import SALT_TASK, Task


class NonFiniteLoss(SaltError, RuntimeError):
    """Training stopped on a non-finite loss or gradient (after ``skip_nonfinite`` skips)."""


@dataclass(frozen=True)
class RunSpec:
    """Where a run reads and writes.

    ``resume``: None (refuse a run dir that already has a checkpoint), ``"auto"`` (resume if
    there is one), ``"yes"`` (there must be one) or a checkpoint file path. ``command``: the
    command line that started this session (recorded in config.json).
    """

    out: Path
    cache: Path | None = None
    data: Path | None = None
    split: str = "train"
    resume: str | None = None
    wandb: str = "disabled"
    command: tuple[str, ...] = ()

    def absolute(self) -> RunSpec:
        """The same spec with absolute paths, so config.json works from any directory."""
        def opt(p: Path | None) -> Path | None:
            return None if p is None else absolute(p)

        resume = self.resume
        if resume not in (None, "auto", "yes"):
            resume = str(absolute(str(resume)))
        return replace(self, out=absolute(self.out), cache=opt(self.cache),
                       data=opt(self.data), resume=resume)


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)  # per step, this process's view
    norm_losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_by: str = ""  # the signal that stopped the run ("SIGTERM", ...); "" otherwise

    @property
    def exit_code(self) -> int:
        """What `salt train` exits with: 0 when the run ended as planned (all steps, or
        ``stop_at``), 128 + the signal number when a signal stopped it after its
        checkpoint (130 SIGINT, 143 SIGTERM), so a scheduler or ``salt train && salt
        export`` tells a preempted run from a finished one."""
        return exit_code_for(self.stopped_by) if self.stopped_by else 0


def find_resume(run: RunSpec) -> list[Path]:
    """The checkpoints to try, newest first, per ``run.resume`` (see :class:`RunSpec`): []
    for a fresh start; for a resume of the run directory its ``ckpt.pt`` and the step
    checkpoints kept before it (the first that loads is used); for a file, that file."""
    found = resume_candidates(run.out)
    if run.resume is None:
        if found:
            raise CheckpointError(
                f"{run.out} already holds a checkpoint ({found[0]}); pass --resume to "
                "continue that run, or choose another --out"
            )
        return []
    if run.resume == "auto":
        return found
    if run.resume == "yes":
        if not found:
            raise CheckpointError(
                f"--resume: no checkpoint in {run.out}; use --resume auto to start fresh "
                "when there is none"
            )
        return found
    path = Path(run.resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file")
    return [path]


def schedule_legs(
    state: dict[str, Any], total: int, resume_from: Path | None, cfg: LoopConfig
) -> list[tuple[int, int]]:
    """The schedule legs (``schedules.py``) of a resumed run: its checkpoint's, plus one from
    the resumed step when a longer ``epochs``/``max_steps`` grew the run's total (the rest of
    each cosine is stretched over the new total). A shorter total, or a length key changed to
    no effect, is refused: the schedule of the steps already taken cannot be undone."""
    saved_total, step = int(state["total_steps"]), int(state["step"])
    legs = [(int(a), int(b)) for a, b in state.get("schedule") or [(0, saved_total)]]
    if total == saved_total:
        saved = type(cfg).from_dict(state["config"])
        moved = [f"{k}: {getattr(saved, k)} -> {getattr(cfg, k)}" for k in sorted(EXTEND_KEYS)
                 if getattr(saved, k) != getattr(cfg, k)]
        if moved:
            raise ConfigError(
                f"{', '.join(moved)} leaves the run at {total} steps (max_steps > 0 sets the "
                "length, else epochs): to extend it raise the one that counts")
        return legs
    if total < saved_total:
        raise ConfigError(
            f"{resume_from} is a run of {saved_total} steps and this config makes it {total}: "
            "a resumed run can only be extended (a longer epochs or max_steps); to stop it "
            "early, --set stop_at=N")
    return legs + [(step, total)]


def autocast_for(cfg: LoopConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights stay fp32), nothing on CPU."""
    if device.type == "cuda" and cfg.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cfg.precision == "bf16" and device.type != "cuda":
        raise ConfigError("precision='bf16' needs CUDA; on CPU training runs in fp32")
    return contextlib.nullcontext()


def train(
    cfg: LoopConfig,
    run: RunSpec,
    sources: DataSources | None = None,
    echo: Callable[[str], None] = print,
    task: Task[Any] = SALT_TASK,
) -> TrainResult:
    """Train per ``cfg`` (an instance of ``task.config_type``: a :class:`TrainConfig` for the
    default SALT task; the loop itself reads only the :class:`LoopConfig` keys); see the module
    docstring. ``sources`` (tests, benchmarks) replaces opening the store/videos named by
    ``run``; ``task`` says what is trained (see ``task.py``)."""
    info = dist_utils.setup_distributed(cfg.device)
    try:
        return _train(cfg, run.absolute(), sources, echo if info.is_main else (lambda s: None),
                      info, task)
    finally:
        dist_utils.teardown_distributed()


def _train(
    cfg: LoopConfig,
    run: RunSpec,
    sources: DataSources | None,
    echo: Callable[[str], None],
    info: dist_utils.DistInfo,
    task: Task[Any],
) -> TrainResult:
    device = info.device
    run_dir = Path(run.out)
    if device.type == "cuda":  # fp32 leftovers outside autocast may use TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if info.is_main:  # partial files of a checkpoint write a kill interrupted
        for tmp in checkpoint_temps(run_dir):
            size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            echo(f"removed {tmp} ({size / 2**20:.1f} MiB): a checkpoint write that never "
                 "finished")

    # --- resume: the checkpoint fixes the config (runtime keys may change, the length grow)
    state, resume_from, skipped = None, None, []
    candidates = find_resume(run)
    if candidates:
        state, resume_from, skipped = load_first(candidates)
    for path, why in skipped:
        echo(f"warning: skipped {path}: {why}; resuming from the newest checkpoint that loads "
             f"({resume_from})")
    if state is not None:
        saved = task.config_type.from_dict(state["config"])
        changed = diff(saved, cfg, RESUME_KEYS)
        if changed:
            raise ConfigError(
                f"{resume_from} was trained with a different config ({'; '.join(changed)}); "
                f"resume without --exp/--config to continue with its saved config "
                f"(`{resume_command(run_dir, task.name)}`; --set may then change runtime keys "
                "and extend epochs/max_steps), or start a new run with another --out"
            )

    # --- data: store (or videos for online targets), checked against the config
    if sources is None:
        sources = task.open_sources(cfg, run, echo)
    rows = sources.rows[: cfg.limit_rows] if cfg.limit_rows else sources.rows
    layout = StreamLayout(len(rows), cfg.batch_size, info.world_size, cfg.grad_accum)
    total = cfg.max_steps or layout.steps_for(cfg.epochs)
    if total <= 0:
        raise ConfigError(
            f"{cfg.epochs} epoch(s) of {len(rows)} rows at batch_size={cfg.batch_size} is no "
            "optimiser step; lower batch_size or set max_steps"
        )
    if state is not None and state["data"]["num_rows"] != len(rows):
        raise CheckpointError(
            f"{resume_from} was trained on {state['data']['num_rows']} rows but the data now "
            f"has {len(rows)}; resume needs the same store (and limit_rows)"
        )
    legs = schedule_legs(state, total, resume_from, cfg) if state is not None else [(0, total)]

    # --- models: same init on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.seed)
    model = task.build(cfg, sources).to(device)
    parts = task.parts(model)  # e.g. student + predictor: optimised and checkpointed by name
    optimizer = build_optimizer(parts.values(), cfg, device)
    start_step = 0
    if state is not None:
        missing = [name for name in parts if name not in state]
        if missing:
            raise CheckpointError(
                f"{resume_from} has no {missing} weights: it was written by another kind of "
                f"run ({state.get('task', 'salt')!r}, this is {task.name!r})"
            )
        for name, module in parts.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        rngs = state["rng"]
        restore_rng(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    else:
        torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank stream (drop path)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else model
    forward = torch.compile(ddp, dynamic=True) if cfg.compile else ddp
    params = [p for p in model.parameters() if p.requires_grad]
    teacher = task.make_teacher(cfg, sources, device)  # online targets only
    identity = data_identity(sources, teacher)
    if state is not None:  # before config.json is rewritten: a refused resume changes nothing
        check_same_data(state["data"].get("identity"), identity, resume_from)

    # --- the batch stream from the resume position on
    collate = MaskCollator(mask_config(cfg), sources.grid, seed=cfg.seed)
    end = min(total, cfg.stop_at) if cfg.stop_at else total
    batches = StreamBatches(layout, info.rank, cfg.seed, start_step, end)
    clip_bytes = sources.num_frames * sources.img_size**2 * 3
    workers, threads, shm_warning = plan_loader(
        cfg.num_workers, cfg.decode_threads, cfg.prefetch_factor,
        layout.micro_batch * clip_bytes, shm_free_bytes(),
    )
    if shm_warning:
        echo(f"warning: {shm_warning}")
    loader = make_loader(
        ClipDataset(sources.frames, rows, threads), batches, collate, workers,
        cfg.prefetch_factor, pin_memory=device.type == "cuda",
    )

    logger = heartbeat = None
    result = TrainResult(run_dir, start_step, start_step, total)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, cfg, {
            "task": task.name, "data": sources.describe,
            "inputs": {"cache": run.cache and str(run.cache), "data": run.data and str(run.data),
                       "split": run.split},
            "world_size": info.world_size, "device": str(device),
            "micro_batch": layout.micro_batch, "total_steps": total,
            "schedule": [list(leg) for leg in legs], "rows": len(rows),
            "loader": {"workers": workers, "decode_threads": threads},
            "argv": list(run.command), "cwd": os.getcwd(), "version": __version__,
            "git": git_state(Path(__file__).resolve().parent),
            "torch": torch.__version__, "host": platform.node(),
        })
        # Before the logger (W&B may take long to start, or fail): a run that dies from
        # here on shows as failed in `salt status`, not as a live run without a heartbeat.
        heartbeat = Heartbeat(run_dir, total)
        heartbeat.start(start_step)

    def checkpoint(step: int, path: Path | None = None) -> Path:
        """The state after ``step`` steps: the run's next checkpoint (rotated), or the file
        ``path`` (the state before a non-finite stop)."""
        rngs = dist_utils.gather_objects(capture_rng(), info)  # every rank calls this
        if info.is_main:
            ckpt = {
                **{name: module.state_dict() for name, module in parts.items()},
                "task": task.name,
                "optimizer": optimizer.state_dict(),
                "step": step,
                "total_steps": total,
                "schedule": [list(leg) for leg in legs],
                "config": cfg.to_dict(),
                "rng": rngs,
                "world_size": info.world_size,
                "data": {"position": step * cfg.batch_size, "epoch": layout.epoch_at(step),
                         "num_rows": len(rows), "seed": cfg.seed, "identity": identity},
            }
            if path is not None:
                return save_checkpoint(path, ckpt)
            return save_run_checkpoint(run_dir, step, ckpt, cfg.keep_checkpoints,
                                       cfg.snapshot_every)
        return path or checkpoint_path(run_dir)

    # Per-step statistics stay on the device and are read every `log_every` steps (before a
    # checkpoint, at the end): `step_stats.py`. Host side: sums since the last log of loss,
    # normalised loss, cosine and pre-clip gradient norm over the applied steps.
    stats_buf = DeviceStats(cfg.log_every, cfg.skip_nonfinite, device, info)
    sums = torch.zeros(4, dtype=torch.float64)
    n_logged, nonfinite, logged_at = 0, 0, start_step

    def read_steps(now_at: int) -> None:
        """Bring the buffered steps to the host (at step ``now_at``) and replay the skip rule
        the device applied: log each skipped step; stop at the one past ``skip_nonfinite``."""
        nonlocal n_logged, nonfinite
        for rec in stats_buf.drain():
            if rec.finite:
                result.losses.append(rec.values[0])
                result.norm_losses.append(rec.values[1])
                sums.add_(torch.tensor(rec.values, dtype=torch.float64))
                n_logged += 1
                continue
            nonfinite += 1
            what = f"non-finite loss/gradient (loss {rec.values[0]}) at step {rec.step}"
            if nonfinite > cfg.skip_nonfinite:
                # The device applied no update from this step on: the weights and optimiser
                # are those before it; put its schedule back and save them as they were.
                set_schedules(optimizer, rec.step - 1, total, cfg, legs)
                result.step = rec.step - 1
                path = checkpoint(rec.step - 1, nonfinite_path(run_dir, rec.step))
                rows = rec.rows.tolist()[:8] if rec.rows is not None else "?"
                latest = checkpoint_path(run_dir)
                last = (f"the last regular checkpoint is {latest}" if latest.is_file()
                        else "no regular checkpoint was written before it")
                raise NonFiniteLoss(
                    f"{what}, rows {rows}...: stopped after {nonfinite} such step(s) "
                    f"(skip_nonfinite={cfg.skip_nonfinite}; read at step {now_at} with the steps "
                    f"before it). Saved the state before that step to {path}; {last}. Lower "
                    "lr, keep grad_clip on, or check the store with `salt cache verify`."
                )
            if logger:
                logger.event(rec.step, f"{what}: step skipped ({nonfinite}/"
                             f"{cfg.skip_nonfinite} tolerated)")

    feeder = None
    model.train()
    try:
        if info.is_main:
            logger = MetricsLogger(
                run_dir, total, run.wandb, cfg.to_dict(), cfg.wandb_project, cfg.wandb_run,
                resume_step=start_step, echo=echo, batch_size=cfg.batch_size,
            )
            what = f"resumed from {resume_from} at step {start_step}" if state else "started"
            if skipped:
                what += " (skipped " + "; ".join(f"{p.name}: {why}" for p, why in skipped) + ")"
            logger.event(start_step, f"{cfg.name}: {what}; {total} steps of {cfg.batch_size} "
                         f"clips ({layout.micro_batch} per micro-batch x {cfg.grad_accum} accum "
                         f"x {info.world_size} procs) on {device}; run dir {run_dir}")
        # Started last: from here on its thread and workers run ahead of the steps.
        feeder = BatchFeeder(loader, None if teacher else sources.targets, device.type == "cuda")
        t_last, wait = time.perf_counter(), 0.0
        with StopRequest() as stop:
            for step in range(start_step, end):
                lr, wd = set_schedules(optimizer, step, total, cfg, legs)
                stats = torch.zeros(3, device=device)
                for micro in range(cfg.grad_accum):
                    t0 = time.perf_counter()
                    batch = next(feeder).to(device)
                    wait += time.perf_counter() - t0
                    x = frames_to_input(batch.frames)
                    targets = teacher.targets(x) if teacher is not None else batch.targets
                    sync = micro == cfg.grad_accum - 1 or not info.enabled
                    with contextlib.nullcontext() if sync else ddp.no_sync():
                        with autocast_for(cfg, device):
                            loss, s = forward(x, batch.masks, targets)
                        (loss / cfg.grad_accum).backward()
                    stats += s.float() / cfg.grad_accum
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                )
                done = step + 1
                # Decided on the device: no host read in the step (see step_stats.py).
                step_unless(optimizer, stats_buf.record(done, stats, grad_norm, batch.rows))
                optimizer.zero_grad(set_to_none=True)
                result.step = done
                if heartbeat:
                    heartbeat.beat(done)

                boundary = (done % cfg.log_every == 0 or done % cfg.ckpt_every == 0
                            or done == end or stats_buf.full)
                if info.enabled:  # the ranks agree on a stop where they read the device
                    go_on = not boundary or bool(
                        dist_utils.all_min([int(not stop.requested)], info)[0])
                else:
                    go_on = not stop.requested
                if boundary or not go_on:
                    read_steps(done)  # raises NonFiniteLoss past skip_nonfinite
                if n_logged and (done % cfg.log_every == 0 or done == end or not go_on):
                    means = dist_utils.all_reduce_mean(sums.to(device) / n_logged, info).tolist()
                    now = time.perf_counter()
                    elapsed = now - t_last
                    if logger:
                        record = {
                            "loss": means[0], "norm_loss": means[1], "cos": means[2],
                            "grad_norm": means[3], "lr": lr, "wd": wd,
                            "epoch": round(layout.epoch_at(done), 4),
                            # every step of the interval, skipped ones too, took its time
                            CLIPS_KEY: cfg.batch_size * (done - logged_at),
                            INTERVAL_KEY: elapsed,
                            "data_wait": min(wait / elapsed, 1.0),
                            "skipped": nonfinite,
                        }
                        if device.type == "cuda":
                            record["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                        logger.log(done, record)
                    sums.zero_()
                    n_logged, t_last, wait, logged_at = 0, now, 0.0, done
                snapshot = cfg.snapshot_every > 0 and done % cfg.snapshot_every == 0
                if done % cfg.ckpt_every == 0 or snapshot or done == end or not go_on:
                    result.checkpoint = checkpoint(done)
                    if heartbeat:
                        heartbeat.checkpoint(done)
                if not go_on:
                    # a rank whose peer got the signal stops too, and exits as if it had
                    result.stopped_by = stop.signal_name or "SIGTERM"
                    if logger:
                        logger.event(done, f"{stop.signal_name or 'signal'} received: stopped "
                                     f"at step {done}/{total} with a checkpoint; continue with "
                                     f"`{resume_command(run_dir, task.name)}`")
                    break
        finished = result.step == total
        if logger:
            peak = (torch.cuda.max_memory_allocated(device) / 2**30
                    if device.type == "cuda" else float("nan"))
            logger.event(result.step, f"{'done' if finished else 'stopped'}: step "
                         f"{result.step}/{total}; checkpoint {checkpoint_path(run_dir)}"
                         + (f"; peak GPU memory {peak:.2f} GiB" if device.type == "cuda" else ""))
        if heartbeat:
            heartbeat.end("finished" if finished else "stopped", result.step)
    except BaseException as e:
        if heartbeat:  # `salt status` / `salt sweep` tell a failed run from a live one
            heartbeat.end("failed", result.step, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if feeder is not None:
            feeder.close()
        if logger:
            logger.close()
    return result

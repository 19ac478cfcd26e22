"""Where training metrics go: a console progress line, ``metrics.jsonl`` (always) and wandb
(when enabled). Only rank 0 constructs a logger. The file's name, reader and resume
truncation are the run-directory contract's (:mod:`salt_vla.runs.rundir`); this is its writer.

The console line::

    step 120/1000 | loss 0.4123 | nloss 0.6210 | cos 0.512 | gnorm 1.84 | lr 2.9e-04 |
    41.3 clips/s (run 40.8) | data wait 3% | eta 0:06:12

``loss`` is the mean over the interval's steps, ``nloss`` the normalised loss (loss / the loss
of predicting the mean target; 1.0 = no better than the mean), ``cos`` the cosine between
predictions and targets, ``gnorm`` the mean total gradient norm before clipping. Throughput
is the interval's clips over its wall time, then the run's (the same figure `salt status` and
`salt report` show: :func:`~salt_vla.runs.rundir.throughput`); the ETA is the steps left at
the run's rate, so it does not swing with one slow interval.

wandb mode: ``--wandb online|offline|disabled``; without the option it is disabled unless
``WANDB_MODE`` or ``WANDB_API_KEY`` is set (then wandb's own environment rules apply).
Offline mode writes under the run directory and needs no network.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from salt_vla.errors import ConfigError
from salt_vla.runs.rundir import (
    METRICS_NAME,
    WANDB_ID_NAME,
    Throughput,
    read_metrics,
    throughput,
    truncate_metrics,
)

WANDB_MODES = ("online", "offline", "disabled")


def resolve_wandb_mode(option: str | None, env: dict[str, str] | None = None) -> str:
    """The wandb mode from the option, else the environment, else ``disabled``."""
    env = dict(os.environ) if env is None else env
    if option:
        if option not in WANDB_MODES:
            raise ConfigError(f"--wandb {option!r}: choose one of {', '.join(WANDB_MODES)}")
        return option
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("disabled", "off"):
        return "disabled"
    if mode == "online" or env.get("WANDB_API_KEY"):
        return "online"
    return "disabled"


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; days shown as ``2d03:00:00``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}d{h:02d}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}")


def _rate(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"


def progress_line(step: int, total: int, m: dict[str, Any], run_rate: float | None) -> str:
    """The console line (see the module docstring); ``run_rate``: the run's clips/s."""
    gnorm = m.get("grad_norm")
    return (
        f"step {step}/{total} | loss {m['loss']:.4f} | nloss {m['norm_loss']:.4f} | "
        f"cos {m['cos']:.3f} | gnorm {'?' if gnorm is None else f'{gnorm:.3g}'} | "
        f"lr {m['lr']:.2e} | {_rate(m.get('clips_per_s'))} clips/s (run {_rate(run_rate)}) | "
        f"data wait {100 * m['data_wait']:.0f}% | eta {format_duration(m.get('eta_s', math.nan))}"
    )


class MetricsLogger:
    """Writes each logged step to the console, ``run_dir/metrics.jsonl`` and wandb."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        wandb_mode: str = "disabled",
        config: dict[str, Any] | None = None,
        project: str = "salt-vla",
        run_name: str = "",
        resume_step: int = 0,
        echo: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
        batch_size: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.batch_size = batch_size  # clips per step, for the ETA
        self.path = self.run_dir / METRICS_NAME
        self.echo = echo or (lambda s: print(s, file=stream or sys.stdout, flush=True))
        self.run = Throughput(0, 0.0)  # the run's so far, earlier sessions included
        if resume_step:
            truncate_metrics(self.path, resume_step)
            self.run = throughput(read_metrics(self.path))
        elif self.path.exists():
            # A fresh run in a directory whose earlier run left no checkpoint: keep its log.
            self.path.rename(self.path.with_suffix(f".{int(time.time())}.jsonl"))
        self._file = open(self.path, "a", buffering=1)
        self._wandb = None
        if wandb_mode != "disabled":
            import wandb  # imported lazily: slow, and unused by most test runs

            self._wandb = wandb.init(
                project=project,
                name=run_name or self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                mode=wandb_mode,
                resume="allow",
                id=_wandb_id(self.run_dir),
            )

    def log(self, step: int, metrics: dict[str, Any], console: bool = True) -> None:
        """Record ``metrics`` for optimiser step ``step`` (1-based count of steps done).

        An interval's ``clips`` and ``interval_s`` give its ``clips_per_s`` and add to the
        run's throughput, whose rate gives ``eta_s`` (both filled in here)."""
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        interval = throughput([rec])
        if interval.clips:
            self.run = Throughput(self.run.clips + interval.clips,
                                  self.run.seconds + interval.seconds)
            rec["clips_per_s"] = interval.clips_per_s
            eta = self.run.eta_s((self.total_steps - step) * self.batch_size)
            if eta is not None:
                rec["eta_s"] = eta
        self._file.write(json.dumps(rec) + "\n")
        if console and "loss" in metrics:
            self.echo(progress_line(step, self.total_steps, rec, self.run.clips_per_s))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if _is_number(v)}, step=step)

    def event(self, step: int, message: str, **extra: Any) -> None:
        """A one-off event (resume, checkpoint, stop) in the JSONL and on the console."""
        self._file.write(json.dumps({"step": step, "event": message, **extra}) + "\n")
        self.echo(message)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run directory, so a resumed run continues its wandb run."""
    path = run_dir / WANDB_ID_NAME
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
    return run_id

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

wandb mode: what the user chose, ``--wandb online|offline|disabled``, else ``WANDB_MODE``,
else disabled; a ``WANDB_API_KEY`` in the environment never turns it on (on a node without
internet that made every run wait for a server it cannot reach). Offline mode writes under
the run directory and needs no network. W&B never stops or hangs a run
(:func:`start_wandb`): ``wandb.init`` gets :data:`WANDB_INIT_TIMEOUT_S`, and any failure
(no API key for online, no network, wandb not installed, a timeout) is one warning line and
a fallback, online to offline, offline to off; a failing ``log`` or ``finish`` turns W&B off
with one warning. metrics.jsonl always has every logged value.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from salt_vla.errors import ConfigError
from salt_vla.files import write_text_atomic
from salt_vla.runs.rundir import (
    METRICS_NAME,
    WANDB_ID_NAME,
    Throughput,
    read_metrics,
    throughput,
    truncate_metrics,
)

WANDB_MODES = ("online", "offline", "disabled")
WANDB_INIT_TIMEOUT_S = 30.0  # longest wait for wandb.init (then: offline, then off)
WANDB_FINISH_TIMEOUT_S = 30.0  # longest wait for wandb's finish (an online upload)


def resolve_wandb_mode(option: str | None, env: dict[str, str] | None = None) -> str:
    """The wandb mode the user chose: the option, else ``WANDB_MODE``, else ``disabled``.
    An API key alone (``WANDB_API_KEY``) chooses nothing."""
    env = dict(os.environ) if env is None else env
    if option:
        if option not in WANDB_MODES:
            raise ConfigError(f"--wandb {option!r}: choose one of {', '.join(WANDB_MODES)}")
        return option
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "online":
        return "online"
    return "disabled"


def has_wandb_key(env: dict[str, str] | None = None) -> bool:
    """Whether W&B could log in without asking: ``WANDB_API_KEY`` (or an identity token
    file) in the environment, or a ``~/.netrc`` (``$NETRC``) entry for the W&B host (what
    `wandb login` writes). Checked before an online start, because wandb without a key
    raises or, at a terminal, waits for one to be typed."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(env.get("NETRC") or "~/.netrc").expanduser()
    try:
        return bool(host) and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, or TimeoutError when it has not returned after ``seconds`` (it is left to
    finish in a daemon thread: W&B's network calls cannot be cancelled from outside)."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=call, name="salt-wandb", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer after {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _short(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def start_wandb(mode: str, init: dict[str, Any], warn: Callable[[str], None],
                timeout: float = WANDB_INIT_TIMEOUT_S,
                env: dict[str, str] | None = None) -> Any | None:
    """A wandb run in ``mode`` (``init``: the other ``wandb.init`` arguments), or None (W&B
    off). Never raises and never waits longer than ``timeout`` per attempt: online without a
    key starts offline, an online start that fails or times out falls back to offline, an
    offline one to off; each fallback is one ``warn`` line."""
    if mode == "disabled":
        return None
    try:
        import wandb  # imported lazily: slow, and unused by most test runs
    except ImportError:
        warn("W&B is not installed (pip install wandb): W&B is off for this run; "
             "metrics.jsonl has every logged value")
        return None
    tries = [mode]
    if mode == "online":
        if has_wandb_key(env):
            tries.append("offline")
        else:
            warn("--wandb online but no W&B API key (set WANDB_API_KEY or run `wandb login`): "
                 f"logging offline under {init.get('dir')}/wandb instead (`wandb sync` uploads "
                 "it later)")
            tries = ["offline"]
    for i, attempt in enumerate(tries):
        try:
            settings = wandb.Settings(init_timeout=timeout)
            return within(timeout, lambda m=attempt, s=settings: wandb.init(mode=m, settings=s,
                                                                            **init))
        except Exception as e:  # noqa: BLE001 - W&B must never stop a run
            then = ("logging offline instead (`wandb sync` uploads it later)"
                    if i + 1 < len(tries) else
                    "W&B is off for this run; metrics.jsonl has every logged value")
            warn(f"W&B {attempt} did not start ({_short(e)}): {then}")
    return None


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
        wandb_timeout: float = WANDB_INIT_TIMEOUT_S,
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
            self._wandb = start_wandb(wandb_mode, {
                "project": project, "name": run_name or self.run_dir.name,
                "dir": str(self.run_dir), "config": config, "resume": "allow",
                "id": _wandb_id(self.run_dir),
            }, self._warn, wandb_timeout)

    def _warn(self, message: str) -> None:
        self.echo(f"warning: {message}")

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
            try:
                self._wandb.log({k: v for k, v in metrics.items() if _is_number(v)}, step=step)
            except Exception as e:  # noqa: BLE001 - W&B must never stop a run
                self._warn(f"W&B log failed ({_short(e)}): W&B is off for the rest of this "
                           "session; metrics.jsonl has every logged value")
                self._wandb = None

    def event(self, step: int, message: str, **extra: Any) -> None:
        """A one-off event (resume, checkpoint, stop) in the JSONL and on the console."""
        self._file.write(json.dumps({"step": step, "event": message, **extra}) + "\n")
        self.echo(message)

    def close(self) -> None:
        self._file.close()
        run, self._wandb = self._wandb, None
        if run is not None:
            try:
                within(WANDB_FINISH_TIMEOUT_S, run.finish)
            except Exception as e:  # noqa: BLE001 - W&B must never stop a run
                self._warn(f"W&B finish failed ({_short(e)}); metrics.jsonl has every logged "
                           "value")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run directory, so a resumed run continues its wandb run."""
    path = run_dir / WANDB_ID_NAME
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    write_text_atomic(path, run_id + "\n")
    return run_id

"""Is a run healthy? Reads a run directory (heartbeat, metrics.jsonl, config.json, ckpt.pt)
and says alive / stalled / dead / finished, how far, how fast, and what the loss does.

Also the reading and smoothing of a run's logged metrics that `salt sweep` and `salt report`
share: a decision or a table built on one noisy batch misleads, so everything here works on
means over the last ``K`` logged records (each record is itself a mean over ``log_every``
steps).

Exit codes (`salt status`): 0 healthy (running, or finished with finite losses); 1 stalled,
dead, failed, stopped or never started; 2 ended with a non-finite loss.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.trainer.heartbeat import pid_alive, read_heartbeat, this_host

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CKPT_NAME = "ckpt.pt"
DEFAULT_WINDOW = 20  # logged records averaged for "smoothed" values
MIN_STALL_S = 600.0  # never call a run stalled sooner (startup, compile, a slow first batch)

EXIT_OK, EXIT_UNHEALTHY, EXIT_NONFINITE = 0, 1, 2


class RunStatusError(SaltError, ValueError):
    """A path that is not a run directory, sweep directory or a folder of them."""


# --- reading a run -------------------------------------------------------------------------


@dataclass
class RunFiles:
    """What a run directory holds, parsed: ``records`` are the metric lines (with a loss),
    ``events`` the one-off lines (start, resume, stop)."""

    run_dir: Path
    config: dict[str, Any]  # the TrainConfig dict ({} without config.json)
    meta: dict[str, Any]  # the rest of config.json (total_steps, data, world_size, ...)
    records: list[dict[str, Any]]
    events: list[dict[str, Any]]
    heartbeat: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def total(self) -> int:
        """Total optimiser steps (heartbeat, else config.json; 0 when unknown)."""
        if self.heartbeat and self.heartbeat.get("total"):
            return int(self.heartbeat["total"])
        return int(self.meta.get("total_steps") or self.config.get("max_steps") or 0)

    @property
    def last_step(self) -> int:
        """Steps done, as far as the files tell."""
        steps = [int(r["step"]) for r in self.records]
        if self.heartbeat:
            steps.append(int(self.heartbeat.get("step", 0)))
        return max(steps, default=0)

    def values(self, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` of ``key`` over the logged records that have it."""
        return [(int(r["step"]), float(r[key])) for r in self.records
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a `salt train` run directory."""
    return path.is_dir() and any(
        (path / n).exists() for n in (CONFIG_NAME, METRICS_NAME, CKPT_NAME, "heartbeat.json")
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run(run_dir: Path | str) -> RunFiles:
    """Parse a run directory; missing files give empty parts (a run that never started
    has none), torn JSONL lines are skipped."""
    run_dir = Path(run_dir)
    meta = _load_json(run_dir / CONFIG_NAME)
    config = meta.pop("config", {}) if isinstance(meta.get("config"), dict) else {}
    records: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    path = run_dir / METRICS_NAME
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            (events if "event" in rec else records).append(rec)
    return RunFiles(run_dir, config, meta, records, events, read_heartbeat(run_dir))


def smoothed(
    points: list[tuple[int, float]], window: int = DEFAULT_WINDOW, up_to: int | None = None
) -> tuple[float, int, int] | None:
    """Mean of the last ``window`` values at steps ``<= up_to`` (all when None), as
    ``(mean, values used, last step used)``; None when there are none. A non-finite value
    in the window makes the mean non-finite, on purpose: such a run must not look good."""
    pts = [p for p in points if up_to is None or p[0] <= up_to]
    if not pts:
        return None
    tail = pts[-max(1, window):]
    return math.fsum(v for _, v in tail) / len(tail), len(tail), tail[-1][0]


def rolling_best(
    points: list[tuple[int, float]], window: int = DEFAULT_WINDOW
) -> tuple[float, int] | None:
    """Lowest mean over any ``window`` consecutive values (fewer at the start) and the step
    it ends at; None without values. Windows holding a non-finite value are skipped."""
    best: tuple[float, int] | None = None
    for i in range(len(points)):
        tail = points[max(0, i - window + 1): i + 1]
        if len(tail) < min(window, len(points)):
            continue
        mean = math.fsum(v for _, v in tail) / len(tail)
        if math.isfinite(mean) and (best is None or mean < best[0]):
            best = (mean, points[i][0])
    return best


def has_nonfinite(run: RunFiles) -> bool:
    """Any logged loss that is NaN/inf, or a ``nonfinite-step*.pt`` left by the trainer."""
    for key in ("loss", "norm_loss"):
        if any(not math.isfinite(v) for _, v in run.values(key)):
            return True
    return any(run.run_dir.glob("nonfinite-step*.pt"))


# --- status of one run ---------------------------------------------------------------------


@dataclass
class RunStatus:
    """Health and progress of one run (``to_dict`` is the `--json` form)."""

    run_dir: str
    name: str
    state: str  # running | finished | stalled | dead | failed | stopped | not started
    exit_code: int
    message: str
    exp: str = ""
    pid: int | None = None
    host: str | None = None
    heartbeat_age_s: float | None = None
    stall_after_s: float | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    loss_smoothed: float | None = None
    norm_loss: float | None = None
    norm_loss_smoothed: float | None = None
    window: int = DEFAULT_WINDOW
    clips_per_s: float | None = None
    eta_s: float | None = None
    checkpoint: dict[str, Any] | None = None
    gpu_peak_gib: float | None = None
    nonfinite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_safe(v) for k, v in asdict(self).items()}


def _json_safe(v: Any) -> Any:
    """NaN/inf are not JSON: write them as strings so every JSON parser reads the output."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def auto_stall_after(run: RunFiles) -> float:
    """Default stall limit: 5x the median time between logged records, at least 10 min."""
    times = [float(r["time"]) for r in run.records[-50:] if isinstance(r.get("time"), (int, float))]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return max(MIN_STALL_S, 5 * statistics.median(gaps)) if gaps else MIN_STALL_S


def _rate_eta(run: RunFiles, step: int, total: int, window: int) -> float | None:
    """Seconds left from the step rate over the last logged records."""
    recs = [r for r in run.records[-window:] if isinstance(r.get("time"), (int, float))]
    if len(recs) >= 2 and recs[-1]["time"] > recs[0]["time"] and recs[-1]["step"] > recs[0]["step"]:
        rate = (recs[-1]["step"] - recs[0]["step"]) / (recs[-1]["time"] - recs[0]["time"])
        return max(0.0, (total - step) / rate)
    if recs and isinstance(recs[-1].get("eta_s"), (int, float)):
        return float(recs[-1]["eta_s"])
    return None


def _checkpoint_info(run: RunFiles, step: int, total: int, now: float) -> dict[str, Any] | None:
    path = run.run_dir / CKPT_NAME
    if not path.is_file():
        return None
    hb = run.heartbeat or {}
    ckpt_step, how = hb.get("ckpt_step"), "heartbeat"
    last_event = str(run.events[-1].get("event", "")) if run.events else ""
    if ckpt_step is None and last_event.startswith(("stopped:", "done:")):
        ckpt_step, how = int(run.events[-1]["step"]), "the run's last event"
    if ckpt_step is None:  # no record of it: the last multiple of ckpt_every
        every = int(run.config.get("ckpt_every") or 0)
        ckpt_step = total if total and step >= total else (step // every * every if every else None)
        how = "inferred from ckpt_every"
    return {"path": str(path), "step": ckpt_step, "step_from": how,
            "age_s": round(now - path.stat().st_mtime, 1)}


def run_status(
    run_dir: Path | str,
    stall_after: float | None = None,
    window: int = DEFAULT_WINDOW,
    now: float | None = None,
) -> RunStatus:
    """Health of the run in ``run_dir`` (see the module docstring for states and codes).

    ``stall_after``: seconds without a heartbeat after which a live process counts as
    stalled (None: :func:`auto_stall_after`).
    """
    now = time.time() if now is None else now
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    hb = run.heartbeat
    limit = float(stall_after) if stall_after else auto_stall_after(run)
    step, total = run.last_step, run.total
    st = RunStatus(str(run_dir), run.name, "running", EXIT_OK, "",
                   exp=str(run.config.get("name", "")), step=step, total=total,
                   stall_after_s=limit, window=window)
    st.nonfinite = has_nonfinite(run)

    for key, last_attr, smooth_attr in (("loss", "loss", "loss_smoothed"),
                                        ("norm_loss", "norm_loss", "norm_loss_smoothed")):
        pts = run.values(key)
        if pts:
            setattr(st, last_attr, pts[-1][1])
            setattr(st, smooth_attr, smoothed(pts, window)[0])  # type: ignore[index]
    speeds = [v for _, v in run.values("clips_per_s")][-window:]
    st.clips_per_s = statistics.fmean(speeds) if speeds else None
    gpu = run.values("gpu_peak_gib")
    st.gpu_peak_gib = gpu[-1][1] if gpu else None
    st.checkpoint = _checkpoint_info(run, step, total, now)

    if hb is not None:
        st.pid, st.host = hb.get("pid"), hb.get("host")
        st.heartbeat_age_s = round(now - float(hb.get("time", 0.0)), 1)
        status = hb.get("status", "running")
        if status == "running":
            same_host = st.host == this_host()
            if same_host and not pid_alive(int(st.pid or 0), hb.get("proc_start")):
                st.state, st.exit_code = "dead", EXIT_UNHEALTHY
                st.message = (f"process {st.pid} is gone but never reported an end (killed: OOM, "
                              f"SIGKILL, node loss?); resume with `salt train ... --out {run_dir} "
                              "--resume`")
            elif st.heartbeat_age_s > limit:
                st.state, st.exit_code = "stalled", EXIT_UNHEALTHY
                where = (f"process {st.pid} is alive" if same_host
                         else f"on host {st.host}: its pid cannot be checked from here")
                st.message = (f"no heartbeat for {st.heartbeat_age_s:.0f} s (> {limit:.0f} s); "
                              f"{where}. A hung data loader or collective? See its log")
            else:
                st.message = f"alive: pid {st.pid} on {st.host}"
        elif status == "finished":
            st.state = "finished"
            st.message = "finished all steps"
        elif status == "stopped":
            st.state, st.exit_code = "stopped", EXIT_UNHEALTHY
            st.message = (f"stopped by a signal at step {step}/{total} with a checkpoint; continue "
                          f"with `salt train ... --out {run_dir} --resume`")
        else:
            st.state, st.exit_code = "failed", EXIT_UNHEALTHY
            st.message = f"failed: {hb.get('error') or 'unknown error (see the run log)'}"
    elif not (run.records or run.events or run.config):
        st.state, st.exit_code = "not started", EXIT_UNHEALTHY
        st.message = "nothing logged yet"
    elif total and step >= total:
        st.state, st.message = "finished", "finished all steps (no heartbeat file)"
    elif run.events and str(run.events[-1].get("event", "")).startswith("stopped:"):
        # The trainer's last words after a graceful stop (SIGTERM/Ctrl-C), with a checkpoint.
        st.state, st.exit_code = "stopped", EXIT_UNHEALTHY
        st.message = (f"stopped at step {step}/{total} with a checkpoint (no heartbeat file); "
                      f"continue with `salt train ... --out {run_dir} --resume`")
    else:
        metrics = run_dir / METRICS_NAME
        age = now - metrics.stat().st_mtime if metrics.exists() else math.inf
        st.heartbeat_age_s = round(age, 1) if math.isfinite(age) else None
        if age > limit:
            st.state, st.exit_code = "stalled", EXIT_UNHEALTHY
            st.message = (f"no heartbeat file and metrics.jsonl unchanged for {age:.0f} s: "
                          "stalled or dead")
        else:
            st.message = "no heartbeat file; metrics.jsonl is recent, so probably alive"

    if st.state in ("finished", "failed", "stopped") and st.nonfinite:
        st.exit_code = EXIT_NONFINITE
        st.message += "; a logged loss is non-finite (NaN/inf)"
    if st.state == "running" and total:
        st.eta_s = _rate_eta(run, step, total, window)
    elif st.state == "finished":
        st.eta_s = 0.0
    return st


# --- several runs --------------------------------------------------------------------------


def combined_exit_code(codes: list[int]) -> int:
    """The worst of several: 2 (non-finite) over 1 (unhealthy) over 0."""
    return max(codes, default=EXIT_OK)


def status_of(
    path: Path | str, stall_after: float | None = None, window: int = DEFAULT_WINDOW
) -> dict[str, Any]:
    """Status of a run directory, a sweep directory or a folder holding either, as
    ``{"kind": "run"|"sweep"|"folder", "path", "exit_code", "runs": [RunStatus...], ...}``."""
    from salt_vla.trainer.sweep import is_sweep_dir, sweep_status

    path = Path(path)
    if not path.is_dir():
        raise RunStatusError(f"{path}: no such directory; pass a run directory (`salt train "
                             "--out`) or a sweep directory (`salt sweep --dir`)")
    if is_sweep_dir(path):
        return sweep_status(path, stall_after, window)
    if is_run_dir(path):
        st = run_status(path, stall_after, window)
        return {"kind": "run", "path": str(path), "exit_code": st.exit_code, "runs": [st]}
    children = sorted(p for p in path.iterdir() if is_sweep_dir(p) or is_run_dir(p))
    if not children:
        raise RunStatusError(
            f"{path} is not a run directory (no config.json, metrics.jsonl, ckpt.pt or "
            "heartbeat.json), not a sweep directory and holds neither"
        )
    parts = [status_of(c, stall_after, window) for c in children]
    runs = [r for p in parts for r in p["runs"]]
    return {"kind": "folder", "path": str(path), "parts": parts, "runs": runs,
            "exit_code": combined_exit_code([p["exit_code"] for p in parts])}


def status_json(result: dict[str, Any]) -> dict[str, Any]:
    """``status_of``'s result with statuses as plain dicts (for ``--json``)."""
    out = {k: v for k, v in result.items() if k not in ("runs", "parts")}
    out["runs"] = [r.to_dict() for r in result["runs"]]
    if "parts" in result:
        out["parts"] = [status_json(p) for p in result["parts"]]
    return _json_safe(out)


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def format_run(st: RunStatus) -> list[str]:
    """Human-readable lines for one run."""
    from salt_vla.trainer.metrics_log import format_duration

    pct = f" ({100 * st.step / st.total:.1f}%)" if st.total else ""
    lines = [f"{st.name}: {st.state.upper()} — {st.message}",
             f"  dir {st.run_dir}" + (f"  exp {st.exp}" if st.exp else ""),
             f"  step {st.step}/{st.total or '?'}{pct}"
             + (f"  eta {format_duration(st.eta_s)}" if st.eta_s is not None else "")
             + (f"  {st.clips_per_s:.1f} clips/s" if st.clips_per_s is not None else "")]
    if st.loss is not None:
        lines.append(f"  loss {_num(st.loss)} (mean of last {st.window}: "
                     f"{_num(st.loss_smoothed)})  norm loss {_num(st.norm_loss)} "
                     f"(mean: {_num(st.norm_loss_smoothed)})")
    if st.heartbeat_age_s is not None:
        what = "last heartbeat" if st.pid else "metrics.jsonl written"
        lines.append(f"  {what} {st.heartbeat_age_s:.0f} s ago"
                     + (f" (pid {st.pid} on {st.host})" if st.pid else "")
                     + f"; stalled after {st.stall_after_s:.0f} s")
    if st.checkpoint:
        c = st.checkpoint
        lines.append(f"  checkpoint {c['path']} step {c['step']} ({c['age_s']:.0f} s old)")
    if st.gpu_peak_gib is not None:
        lines.append(f"  peak GPU memory {st.gpu_peak_gib:.2f} GiB")
    return lines


def format_status(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`status_of`'s result."""
    if result["kind"] == "folder":
        lines: list[str] = []
        for part in result["parts"]:
            lines += format_status(part)
        return lines
    if result["kind"] == "sweep":
        from salt_vla.trainer.sweep import format_sweep_status

        return format_sweep_status(result)
    return [line for st in result["runs"] for line in format_run(st)]

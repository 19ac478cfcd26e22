"""Is a run healthy? Reads a run directory (heartbeat, metrics.jsonl, config.json, ckpt.pt,
through :mod:`salt_vla.runs.rundir`) and says alive / stalled / dead / finished, how far, how
fast, and what the loss does; for a sweep directory, the same for every stage plus whether
the sweep process still runs.

Exit codes (`salt status`): 0 healthy (running, or finished with finite losses); 1 stalled,
dead, failed, stopped or never started; 2 ended with a non-finite loss. `salt train` itself
exits 0 when a run ends as planned, 1 on an error, and 130 / 143 when SIGINT / SIGTERM stopped
it after its checkpoint (its heartbeat then says ``stopped``: 1 here).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.runs.heartbeat import pid_alive, this_host
from salt_vla.runs.rundir import (
    MARKERS_TEXT,
    METRICS_NAME,
    NONFINITE_GLOB,
    RunFiles,
    checkpoint_path,
    checkpoints,
    is_run_dir,
    read_run,
    resume_command,
    throughput,
)
from salt_vla.runs.smoothing import DEFAULT_WINDOW, smoothed
from salt_vla.runs.sweep_dir import is_sweep_dir, read_state
from salt_vla.trainer.metrics_log import format_duration

MIN_STALL_S = 600.0  # never call a run stalled sooner (startup, compile, a slow first batch)

EXIT_OK, EXIT_UNHEALTHY, EXIT_NONFINITE = 0, 1, 2


class RunStatusError(SaltError, ValueError):
    """A path that is not a run directory, sweep directory or a folder of them."""


def has_nonfinite(run: RunFiles) -> bool:
    """Any logged loss that is NaN/inf, or a ``nonfinite-step*.pt`` left by the trainer."""
    for key in ("loss", "norm_loss"):
        if any(not math.isfinite(v) for _, v in run.values(key)):
            return True
    return any(run.run_dir.glob(NONFINITE_GLOB))


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
    clips_per_s: float | None = None  # the run's: clips trained / wall time of its intervals
    clips: int = 0  # clips trained, as far as the metrics tell
    train_s: float = 0.0  # wall time they took (the logged intervals)
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


def _rate_eta(run: RunFiles, step: int, total: int) -> float | None:
    """Seconds left at the run's rate (the console's ETA); the last logged ``eta_s`` for runs
    that did not log their throughput."""
    batch = run.config.get("batch_size")
    if isinstance(batch, int):
        eta = throughput(run.records).eta_s((total - step) * batch)
        if eta is not None:
            return eta
    last = run.records[-1].get("eta_s") if run.records else None
    return float(last) if isinstance(last, (int, float)) else None


def _checkpoint_info(run: RunFiles, step: int, total: int, now: float) -> dict[str, Any] | None:
    path = checkpoint_path(run.run_dir)
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
            "age_s": round(now - path.stat().st_mtime, 1),
            "kept_steps": [s for s, _ in checkpoints(run.run_dir)]}


def _resume(run: RunFiles) -> str:
    """The command that continues ``run`` with its saved config, as it works when typed."""
    return resume_command(run.run_dir, run.meta.get("task"))


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
    rate = throughput(run.records)
    st.clips_per_s, st.clips, st.train_s = rate.clips_per_s, rate.clips, round(rate.seconds, 3)
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
                              f"SIGKILL, node loss?); resume with `{_resume(run)}`")
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
                          f"with `{_resume(run)}`")
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
                      f"continue with `{_resume(run)}`")
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
        st.eta_s = _rate_eta(run, step, total)
    elif st.state == "finished":
        st.eta_s = 0.0
    return st


# --- a sweep ------------------------------------------------------------------------------


def _pending_status(name: str, run_dir: Path | None, message: str) -> RunStatus:
    return RunStatus(str(run_dir or ""), name, "pending", EXIT_OK, message)


def sweep_status(
    sweep_dir: Path | str, stall_after: float | None = None, window: int = DEFAULT_WINDOW
) -> dict[str, Any]:
    """Status of every stage of a sweep (`salt status SWEEP_DIR`)."""
    sweep_dir = Path(sweep_dir)
    state = read_state(sweep_dir) or {}
    runs = []
    for stage, rec in state.get("stages", {}).items():
        run_dir = Path(rec["run_dir"]) if rec.get("run_dir") else None
        if run_dir is not None and run_dir.exists():
            st = run_status(run_dir, stall_after, window)
        else:
            st = _pending_status(rec.get("name", stage), run_dir, "not launched yet")
        st.extra = {"stage": stage, "queue_status": rec.get("status"),
                    "decision": rec.get("decision", "")}
        runs.append(st)
    alive = bool(state.get("pid")) and state.get("host") == this_host() and \
        pid_alive(int(state["pid"]))
    codes = [r.exit_code for r in runs]
    if not state.get("finished") and not alive:
        codes.append(EXIT_UNHEALTHY)  # the queue stopped before its end
    return {"kind": "sweep", "path": str(sweep_dir), "name": state.get("spec_name", ""),
            "sweep_pid": state.get("pid"), "sweep_host": state.get("host"),
            "sweep_alive": alive, "finished": bool(state.get("finished")),
            "exit_code": combined_exit_code(codes), "runs": runs}


def format_sweep_status(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`sweep_status`'s result."""
    if result["finished"]:
        head = "finished"
    elif result["sweep_alive"]:
        head = f"running (pid {result['sweep_pid']})"
    else:
        head = (f"NOT running (pid {result['sweep_pid']} on {result['sweep_host']} is gone); "
                "re-run the same `salt sweep` command to resume")
    lines = [f"sweep {result['name']} in {result['path']}: {head}"]
    for st in result["runs"]:
        stage = st.extra.get("stage", "")
        if st.state == "pending":
            lines.append(f"[{stage}] {st.name}: pending")
            continue
        body = format_run(st)
        lines.append(f"[{stage}] {body[0]}")
        if st.extra.get("decision"):
            lines.append(f"  decision: {st.extra['decision']}")
        lines += body[1:]
    return lines


# --- several runs --------------------------------------------------------------------------


def combined_exit_code(codes: list[int]) -> int:
    """The worst of several: 2 (non-finite) over 1 (unhealthy) over 0."""
    return max(codes, default=EXIT_OK)


def path_kind(path: Path | str) -> str:
    """What a path given to `salt status` or `salt report` names: ``"sweep"``, ``"run"`` or
    ``"folder"`` (a directory holding runs or sweeps); anything else raises
    :class:`RunStatusError` naming what to pass."""
    path = Path(path)
    if not path.is_dir():
        raise RunStatusError(f"{path}: no such directory; pass a run directory (`salt train "
                             "--out`), a sweep directory (`salt sweep --dir`) or a folder of "
                             "either")
    if is_sweep_dir(path):
        return "sweep"
    if is_run_dir(path):
        return "run"
    if not folder_children(path):
        raise RunStatusError(
            f"{path} is not a run directory (no {MARKERS_TEXT}), not a sweep directory and "
            "holds neither"
        )
    return "folder"


def folder_children(path: Path) -> list[Path]:
    """The run and sweep directories directly inside ``path``, sorted."""
    return sorted(p for p in path.iterdir() if is_sweep_dir(p) or is_run_dir(p))


def status_of(
    path: Path | str, stall_after: float | None = None, window: int = DEFAULT_WINDOW
) -> dict[str, Any]:
    """Status of a run directory, a sweep directory or a folder holding either, as
    ``{"kind": "run"|"sweep"|"folder", "path", "exit_code", "runs": [RunStatus...], ...}``."""
    path = Path(path)
    kind = path_kind(path)
    if kind == "sweep":
        return sweep_status(path, stall_after, window)
    if kind == "run":
        st = run_status(path, stall_after, window)
        return {"kind": "run", "path": str(path), "exit_code": st.exit_code, "runs": [st]}
    parts = [status_of(c, stall_after, window) for c in folder_children(path)]
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


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else format_duration(s)


def format_run(st: RunStatus) -> list[str]:
    """Human-readable lines for one run."""
    pct = f" ({100 * st.step / st.total:.1f}%)" if st.total else ""
    lines = [f"{st.name}: {st.state.upper()} — {st.message}",
             f"  dir {st.run_dir}" + (f"  exp {st.exp}" if st.exp else ""),
             f"  step {st.step}/{st.total or '?'}{pct}"
             + (f"  eta {format_duration(st.eta_s)}" if st.eta_s is not None else "")
             + (f"  {st.clips_per_s:.1f} clips/s over the run ({st.clips} clips in "
                f"{_seconds(st.train_s)} of training)" if st.clips_per_s is not None else "")]
    if st.loss is not None:
        lines.append(f"  loss {_num(st.loss)} (mean of last {st.window}: "
                     f"{_num(st.loss_smoothed)})  nloss {_num(st.norm_loss)} "
                     f"(mean: {_num(st.norm_loss_smoothed)})")
    if st.heartbeat_age_s is not None:
        what = "last heartbeat" if st.pid else "metrics.jsonl written"
        lines.append(f"  {what} {st.heartbeat_age_s:.0f} s ago"
                     + (f" (pid {st.pid} on {st.host})" if st.pid else "")
                     + f"; stalled after {st.stall_after_s:.0f} s")
    if st.checkpoint:
        c = st.checkpoint
        lines.append(f"  checkpoint {c['path']} step {c['step']} ({c['age_s']:.0f} s old)"
                     + (f"; kept: steps {', '.join(map(str, c['kept_steps']))}"
                        if c.get("kept_steps") else ""))
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
        return format_sweep_status(result)
    return [line for st in result["runs"] for line in format_run(st)]

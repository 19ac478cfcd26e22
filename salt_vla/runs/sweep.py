"""`salt sweep`: a queue of training runs with decision rules, resumable after a crash.

The spec (stages: runs, references, branches, best-of) is :mod:`salt_vla.runs.sweep_spec`;
the queue state and its lock are :mod:`salt_vla.runs.sweep_dir`.

Decisions read a smoothed metric, never one batch: the mean of the last ``window`` logged
values of ``norm_loss`` (or ``loss``), lower is better, or the probe top-1 in
``RUN/probe.json`` (``metric = "probe_top1"``, higher is better; the sweep runs `salt eval
probe` after each run when ``probe = [...]`` gives its arguments). With ``align =
"common_step"`` (default) two runs of different lengths are compared at the same step: the
shorter run's last logged step.

Runs are `salt train` subprocesses (``launcher`` prefixes them, e.g. ``torchrun
--nproc_per_node 8``; GPU settings and the environment pass through), always with ``--resume
auto``: a run the sweep (or the machine) lost half way continues from its checkpoint. The
queue state is ``SWEEP/sweep.json`` (atomic writes); re-running the same command resumes the
queue. A run still alive from a killed sweep (its heartbeat says so) is waited for, not
duplicated. A decision is fixed once the run it chose has been launched.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salt_vla.errors import ConfigError
from salt_vla.runs.heartbeat import pid_alive, process_start, this_host
from salt_vla.runs.rundir import (
    PROBE_LOG_NAME,
    TRAIN_LOG_NAME,
    checkpoint_path,
    read_run,
)
from salt_vla.runs.smoothing import smoothed
from salt_vla.runs.status import (
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_UNHEALTHY,
    format_run,
    run_status,
)
from salt_vla.runs.sweep_dir import (
    STATE_FORMAT,
    SweepError,
    read_state,
    save_state,
    state_path,
    sweep_lock,
)
from salt_vla.runs.sweep_spec import RunDef, Stage, SweepSpec
from salt_vla.trainer.experiments import TrainConfig, get_preset, valid_keys
from salt_vla.trainer.interrupt import STOP_EXIT_CODES

EXIT_INTERRUPTED = 130  # the sweep itself stopped by Ctrl-C (SIGTERM: 143), as `salt train`


# --- queue state ---------------------------------------------------------------------------


def new_state(spec: SweepSpec) -> dict[str, Any]:
    """The state of a queue not started yet: every stage pending."""
    return {
        "format": STATE_FORMAT, "spec_name": spec.name, "source": spec.source,
        "identity": spec.identity(), "pid": None, "host": None, "updated": time.time(),
        "finished": False,
        "stages": {s.name: {"status": "pending", "attempts": 0} for s in spec.stages},
    }


def check_resumable(spec: SweepSpec, state: dict[str, Any], sweep_dir: Path) -> None:
    """Refuse a spec whose already-launched stages (or global overrides) differ from the
    ones the state recorded: those runs would no longer be what the spec says."""
    old = state.get("identity", {})
    started = [n for n, s in state["stages"].items() if s.get("status") != "pending"]
    problems = []
    if started and old.get("sets") != list(spec.sets):
        problems.append(f"set = {old.get('sets')} became {list(spec.sets)}")
    for name in started:
        new = spec.identity()["stages"].get(name)
        if new != old.get("stages", {}).get(name):
            problems.append(f"stage {name!r} changed or was removed")
    if problems:
        raise SweepError(
            f"{sweep_dir} holds a sweep whose launched runs do not match this spec ("
            f"{'; '.join(problems)}). Re-run with the original spec and options, or use "
            "another --dir for the new sweep"
        )
    for s in spec.stages:
        state["stages"].setdefault(s.name, {"status": "pending", "attempts": 0})
    state["identity"] = spec.identity()


# --- metrics and decisions -----------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """A run's decision metric: ``value`` from ``n`` logged values up to ``step``."""

    run: str
    value: float
    n: int
    step: int

    def text(self, metric: str) -> str:
        if metric == "probe_top1":
            return f"{self.run} probe top-1 {100 * self.value:.2f}%"
        return f"{self.run} {metric} {self.value:.4f} (mean of {self.n} logged up to step " \
               f"{self.step})"


def run_finished(run_dir: Path) -> bool:
    """Whether a run completed all its steps (heartbeat, else its logged steps)."""
    run = read_run(run_dir)
    if run.heartbeat is not None:
        return run.heartbeat.get("status") == "finished"
    return bool(run.total) and run.last_step >= run.total


def last_logged_step(run_dir: Path, metric: str) -> int:
    pts = read_run(run_dir).values(metric)
    return pts[-1][0] if pts else 0


def read_metric(
    spec: SweepSpec, name: str, run_dir: Path, up_to: int | None = None
) -> Reading | None:
    """The smoothed decision metric of a run (None when it logged none)."""
    if spec.metric == "probe_top1":
        # Imported here: the probe module pulls in torch, which reading losses does not need.
        from salt_vla.eval.probe_run import read_probe_result

        record = read_probe_result(run_dir / spec.probe_file)
        return None if record is None else Reading(name, float(record["top1"]), 1, 0)
    got = smoothed(read_run(run_dir).values(spec.metric), spec.window, up_to)
    return None if got is None else Reading(name, got[0], got[1], got[2])


def _better(spec: SweepSpec, a: float, b: float) -> bool:
    """``a`` strictly better than ``b``; NaN is never better (nor is a tie)."""
    return a > b if spec.higher_is_better else a < b


def _common_step(spec: SweepSpec, dirs: list[Path]) -> int | None:
    if spec.metric == "probe_top1" or spec.align == "end":
        return None
    return min(last_logged_step(d, spec.metric) for d in dirs)


@dataclass
class Planned:
    """A stage made concrete: which run it launches (or reads) and why."""

    stage: str
    name: str
    exp: str
    sets: tuple[str, ...]
    run_dir: Path
    kind: str
    decision: str = ""


class Undecided(Exception):
    """A decision whose inputs have not finished yet (dry runs)."""


def decide(spec: SweepSpec, stage: Stage, known: dict[str, Planned]) -> tuple[RunDef, str]:
    """The run a branch or best-of stage launches, with the decision in words. Raises
    :class:`Undecided` when a run it reads has not finished."""
    refs = ([stage.cond.run] + ([stage.cond.beats] if stage.cond.beats else [])
            if stage.kind == "branch" else list(stage.best_of))
    waiting = [r for r in refs if r not in known or not run_finished(known[r].run_dir)]
    if waiting:
        raise Undecided(f"waits for {', '.join(waiting)} to finish")
    dirs = [known[r].run_dir for r in refs]
    up_to = _common_step(spec, dirs)
    readings = []
    for r in refs:
        got = read_metric(spec, known[r].name, known[r].run_dir, up_to)
        if got is None:
            what = spec.probe_file if spec.metric == "probe_top1" else f"no {spec.metric} values"
            raise SweepError(f"run {r} ({known[r].run_dir}) has {what}"
                             + (f" up to step {up_to}" if up_to else "")
                             + "; the decision needs it")
        readings.append(got)
    if stage.kind == "branch":
        c = stage.cond
        a = readings[0]
        if c.beats:
            b = readings[1]
            yes = _better(spec, a.value, b.value)
            why = f"{a.text(spec.metric)} vs {b.text(spec.metric)}: {c.run} " \
                  f"{'beats' if yes else 'does not beat'} {c.beats}"
        else:
            bound = c.below if c.below is not None else c.above
            yes = a.value < bound if c.below is not None else a.value > bound
            rel = "below" if c.below is not None else "above"
            why = f"{a.text(spec.metric)} is {'' if yes else 'not '}{rel} {bound}"
        chosen = stage.then if yes else stage.otherwise
        return chosen, f"{why} -> {chosen.name}"  # type: ignore[union-attr]
    finite = [g for g in readings if math.isfinite(g.value)]
    if not finite:
        raise SweepError(f"stage {stage.name}: every candidate's {spec.metric} is non-finite")
    best = finite[0]
    for g in finite[1:]:
        if _better(spec, g.value, best.value):
            best = g
    winner = next(known[r] for r in refs if known[r].name == best.run)
    if not winner.exp:
        raise SweepError(f"stage {stage.name}: the best run is {winner.name} ({winner.run_dir}), "
                         "whose config.json does not name a preset, so it cannot be rerun")
    base = RunDef(stage.name, winner.exp, winner.sets + stage.sets)
    listing = "; ".join(g.text(spec.metric) for g in readings)
    sets = f" --set {' --set '.join(stage.sets)}" if stage.sets else ""
    return base, (f"best of [{listing}] is {best.run} -> its config (exp {winner.exp}"
                  f"{' + its overrides' if winner.sets else ''}){sets}")


def plan(
    spec: SweepSpec, sweep_dir: Path, state: dict[str, Any] | None = None
) -> list[Planned | str]:
    """Each stage made concrete, or a line saying what it waits for. Recorded decisions
    (stages already launched) are kept; the others are taken from the finished runs."""
    known: dict[str, Planned] = {}
    out: list[Planned | str] = []
    stages = (state or {}).get("stages", {})
    for stage in spec.stages:
        rec = stages.get(stage.name, {})
        p = planned_stage(spec, stage, sweep_dir, known, rec)
        if isinstance(p, str):
            out.append(p)
            continue
        known[stage.name] = p
        known[p.name] = p
        out.append(p)
    return out


def planned_stage(
    spec: SweepSpec, stage: Stage, sweep_dir: Path, known: dict[str, Planned],
    rec: dict[str, Any],
) -> Planned | str:
    if stage.kind == "reference":
        exp, sets = reference_config(stage.run_dir)  # type: ignore[arg-type]
        return Planned(stage.name, stage.name, exp, sets, stage.run_dir, "reference")  # type: ignore[arg-type]
    if stage.kind == "run":
        d = stage.run
        return Planned(stage.name, d.name, d.exp, d.sets, sweep_dir / d.name, "run")  # type: ignore[union-attr]
    if rec.get("status", "pending") != "pending" and rec.get("exp"):
        return Planned(stage.name, rec["name"], rec["exp"], tuple(rec.get("sets", [])),
                       Path(rec["run_dir"]), stage.kind, rec.get("decision", ""))
    try:
        d, why = decide(spec, stage, known)
    except Undecided as e:
        return f"{stage.name}: undecided, {e}"
    return Planned(stage.name, d.name, d.exp, d.sets, sweep_dir / d.name, stage.kind, why)


def _set_text(v: Any) -> str:
    """A config value as `--set` text (the inverse of overrides.parse_value)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(_set_text(x) for x in v)
    return str(v)


def reference_config(run_dir: Path) -> tuple[str, tuple[str, ...]]:
    """The preset and `--set` overrides that reproduce a run's config (so a reference run
    can win a best-of); ``("", ())`` when its config.json is missing or not a preset's."""
    try:
        cfg = TrainConfig.from_dict(read_run(run_dir).config)
        base = get_preset(cfg.name)
    except (ConfigError, TypeError):
        return "", ()
    skip = {"name", "notes", "wandb_run", "stop_at"}
    return cfg.name, tuple(f"{k}={_set_text(getattr(cfg, k))}" for k in valid_keys()
                           if k not in skip and getattr(cfg, k) != getattr(base, k))


# --- launching -----------------------------------------------------------------------------


def salt_entry() -> list[str]:
    """How a launcher (torchrun, srun) starts `salt`: the console script beside this Python."""
    script = Path(sys.executable).parent / "salt"
    found = str(script) if script.is_file() else shutil.which("salt")
    if not found:
        raise SweepError("launcher set but no `salt` script found next to "
                         f"{sys.executable} or on PATH; install the package (pip install -e .)")
    return [found]


def train_command(spec: SweepSpec, p: Planned) -> list[str]:
    """The `salt train` command of a planned run (always ``--resume auto``)."""
    head = list(spec.launcher) + salt_entry() if spec.launcher else \
        [sys.executable, "-m", "salt_vla"]
    cmd = head + ["train", "--exp", p.exp, "--out", str(p.run_dir), "--resume", "auto"]
    if spec.cache:
        cmd += ["--cache", spec.cache]
    if spec.data:
        cmd += ["--data", spec.data]
    for s in list(spec.sets) + list(p.sets):
        cmd += ["--set", s]
    return cmd


def probe_command(spec: SweepSpec, p: Planned) -> list[str]:
    return [sys.executable, "-m", "salt_vla", "eval", "probe", "--encoder", str(p.run_dir),
            "--out", str(p.run_dir / spec.probe_file), *spec.probe]


class _Signals:
    """While the sweep waits on a run: the first SIGINT/SIGTERM asks the run to checkpoint
    and stop (one SIGTERM), a second kills its process group."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None  # the first signal's number
        self.proc: subprocess.Popen | None = None
        self.orphan: int | None = None  # a run adopted from an earlier sweep (not our child)
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        if self.proc is not None and self.proc.poll() is None:
            pid = self.proc.pid
        elif self.orphan is not None:
            pid = self.orphan
        else:
            return
        try:
            if self.count == 1:
                os.kill(pid, signal.SIGTERM)
            else:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> _Signals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _progress(run_dir: Path, echo: Callable[[str], None]) -> None:
    st = run_status(run_dir)
    if st.loss is None:
        echo(f"  {st.name}: starting, nothing logged yet")
        return
    echo("  " + " | ".join(x.strip() for x in format_run(st)[2:4]))


def _run_process(
    cmd: list[str], env: dict[str, str], log: Path, run_dir: Path, poll: float,
    echo: Callable[[str], None], signals: _Signals,
    started: Callable[[int], object] | None = None,
) -> int:
    """Start ``cmd`` in its own session (so a dying sweep does not take it along) with output
    appended to ``log``; wait, printing progress every ``poll`` s. Returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, start_new_session=True)
    signals.proc = proc
    if started is not None:
        started(proc.pid)
    last = time.monotonic()
    try:
        while True:
            try:
                return proc.wait(timeout=min(poll, 1.0))
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - last >= poll:
                last = time.monotonic()
                _progress(run_dir, echo)
    finally:
        signals.proc = None


def _wait_orphan(pid: int, start: int | None, run_dir: Path, poll: float,
                 echo: Callable[[str], None], signals: _Signals) -> None:
    """Wait for a run left alive by an earlier sweep (not our child: poll its pid)."""
    last = time.monotonic()
    signals.orphan = pid
    try:
        # After a signal (forwarded to it), keep waiting so its checkpoint completes.
        while pid_alive(pid, start):
            time.sleep(min(poll, 1.0))
            if time.monotonic() - last >= poll:
                last = time.monotonic()
                _progress(run_dir, echo)
    finally:
        signals.orphan = None


def run_sweep(
    spec: SweepSpec, sweep_dir: Path | str, echo: Callable[[str], None] = print,
    poll: float = 60.0,
) -> int:
    """Run (or resume) the queue; returns 0 when every stage finished, 1 when a run failed
    or stopped (the state says which; re-running resumes), 130 / 143 when the sweep itself
    was interrupted by SIGINT / SIGTERM (the running run checkpoints and stops first)."""
    sweep_dir = Path(sweep_dir).resolve()
    with sweep_lock(sweep_dir), _Signals() as signals:
        state = read_state(sweep_dir)
        if state is None:
            state = new_state(spec)
            echo(f"sweep {spec.name}: new queue in {sweep_dir}")
        else:
            check_resumable(spec, state, sweep_dir)
            echo(f"sweep {spec.name}: resuming the queue in {sweep_dir}")
        state.update(pid=os.getpid(), host=this_host(), finished=False)
        save_state(sweep_dir, state)
        known: dict[str, Planned] = {}
        for stage in spec.stages:
            rec = state["stages"][stage.name]
            p = planned_stage(spec, stage, sweep_dir, known, rec)
            assert not isinstance(p, str), p  # earlier stages all finished
            known[stage.name] = known[p.name] = p
            if rec.get("status") == "done":
                continue
            if signals.count:
                return _interrupted(rec, sweep_dir, state, echo, p, signals)
            if p.kind == "reference":
                if not run_finished(p.run_dir):
                    raise SweepError(f"reference run {p.run_dir} (stage {stage.name}) has not "
                                     "finished; finish it or point run_dir at a finished run")
                rec.update(status="done", name=p.name, exp="", sets=[], run_dir=str(p.run_dir))
                save_state(sweep_dir, state)
                echo(f"[{stage.name}] reference run {p.run_dir}")
                continue
            code = _run_stage(spec, stage, p, rec, sweep_dir, state, echo, poll, signals)
            if code != EXIT_OK:
                return code
        state["finished"] = True
        save_state(sweep_dir, state)
        dirs = dict.fromkeys(str(p.run_dir) for p in known.values())  # unique, in order
        echo(f"sweep {spec.name}: every stage finished; compare them with `salt report "
             f"{' '.join(dirs)}`")
        return EXIT_OK


def _run_stage(
    spec: SweepSpec, stage: Stage, p: Planned, rec: dict[str, Any], sweep_dir: Path,
    state: dict[str, Any], echo: Callable[[str], None], poll: float, signals: _Signals,
) -> int:
    if p.decision:
        echo(f"[{stage.name}] decision: {p.decision}")
    st = run_status(p.run_dir) if p.run_dir.exists() else None
    if st is not None and st.exit_code == EXIT_NONFINITE:
        rec.update(status="failed")
        save_state(sweep_dir, state)
        raise SweepError(f"run {p.name} ({p.run_dir}) ended with a non-finite loss: resuming "
                         "would replay it. Inspect it (`salt status`), then delete the run "
                         "directory to train it afresh, or change the spec and use a new --dir")
    cmd = train_command(spec, p)
    rec.update(status="running", name=p.name, exp=p.exp, sets=list(p.sets),
               run_dir=str(p.run_dir), decision=p.decision, command=cmd,
               started=time.time(), attempts=int(rec.get("attempts", 0)) + 1)
    save_state(sweep_dir, state)
    # A run left alive by a killed sweep: its heartbeat's pid, else the child pid we recorded.
    orphan: tuple[int, int | None] | None = None
    if st is not None and st.state == "running" and st.pid and st.host == this_host():
        orphan = int(st.pid), (read_run(p.run_dir).heartbeat or {}).get("proc_start")
    elif rec.get("pid") and rec.get("host") == this_host() and \
            pid_alive(int(rec["pid"]), rec.get("proc_start")):
        orphan = int(rec["pid"]), rec.get("proc_start")
    elif st is not None and st.pid and st.state in ("running", "stalled"):
        raise SweepError(f"run {p.name} ({p.run_dir}) looks {st.state}: {st.message}. Stop it "
                         "(or wait), then re-run the sweep")
    if orphan is not None:
        echo(f"[{stage.name}] {p.name} is still running (pid {orphan[0]}, left by an "
             "earlier sweep): waiting for it")
        _wait_orphan(*orphan, p.run_dir, poll, echo, signals)
        if signals.count and not run_finished(p.run_dir):
            return _interrupted(rec, sweep_dir, state, echo, p, signals)
    if not run_finished(p.run_dir):
        how = "resuming" if checkpoint_path(p.run_dir).exists() else "starting"
        echo(f"[{stage.name}] {how} {p.name}: {shlex.join(cmd)}")
        log = p.run_dir / TRAIN_LOG_NAME
        echo(f"[{stage.name}] log: {log}")
        rc = _run_process(cmd, spec.env, log, p.run_dir, poll, echo,
                          signals, lambda pid: (rec.update(pid=pid, host=this_host(),
                                                           proc_start=process_start(pid)),
                                                save_state(sweep_dir, state)))
        rec.update(rc=rc, ended=time.time())
        if signals.count and not run_finished(p.run_dir):
            return _interrupted(rec, sweep_dir, state, echo, p, signals)
        if not run_finished(p.run_dir):
            st = run_status(p.run_dir)
            rec.update(status="failed")
            save_state(sweep_dir, state)
            # 130/143: stopped by a signal sent to the run itself (not through the sweep)
            how = (f"was stopped by {signal.Signals(rc - 128).name} (exit code {rc})"
                   if rc in STOP_EXIT_CODES else f"did not finish (exit code {rc})")
            echo(f"[{stage.name}] {p.name} {how}; {st.state}: {st.message}. See {log}; re-run "
                 "the sweep to resume it")
            return EXIT_UNHEALTHY
    if spec.probe:
        out = p.run_dir / spec.probe_file
        ckpt = checkpoint_path(p.run_dir)
        if not out.exists() or (ckpt.exists() and out.stat().st_mtime < ckpt.stat().st_mtime):
            pcmd = probe_command(spec, p)
            echo(f"[{stage.name}] probe: {shlex.join(pcmd)}")
            rc = _run_process(pcmd, spec.env, p.run_dir / PROBE_LOG_NAME, p.run_dir, poll,
                              lambda s: None, signals)
            if signals.count:
                return _interrupted(rec, sweep_dir, state, echo, p, signals)
            if rc != 0 or not out.exists():
                rec.update(status="failed")
                save_state(sweep_dir, state)
                echo(f"[{stage.name}] probe of {p.name} failed (exit code {rc}); see "
                     f"{p.run_dir / PROBE_LOG_NAME}")
                return EXIT_UNHEALTHY
    rec.update(status="done", ended=time.time())
    save_state(sweep_dir, state)
    got = read_metric(spec, p.name, p.run_dir)
    echo(f"[{stage.name}] {p.name} finished" + (f": {got.text(spec.metric)}" if got else ""))
    return EXIT_OK


def _interrupted(rec: dict[str, Any], sweep_dir: Path, state: dict[str, Any],
                 echo: Callable[[str], None], p: Planned, signals: _Signals) -> int:
    rec.update(status="interrupted")
    save_state(sweep_dir, state)
    echo(f"interrupted at {p.name} (a running run is asked to checkpoint and stop first); "
         "re-run the same `salt sweep` command to resume the queue")
    return 128 + signals.first if signals.first else EXIT_INTERRUPTED


# --- dry run and status --------------------------------------------------------------------


def format_plan(spec: SweepSpec, sweep_dir: Path | str) -> list[str]:
    """`--dry-run`: every stage, its run directory and command, and the decision each rule
    takes given the runs finished so far. Launches nothing, writes nothing."""
    sweep_dir = Path(sweep_dir).resolve()
    state = read_state(sweep_dir)
    lines = [f"sweep {spec.name} ({spec.source}) in {sweep_dir}",
             f"metric: {spec.metric} ({'higher' if spec.higher_is_better else 'lower'} wins; "
             + (f"probe file {spec.probe_file}" if spec.metric == "probe_top1" else
                f"mean of the last {spec.window} logged values, align {spec.align}") + ")",
             f"queue state: {state_path(sweep_dir)} "
             + ("(none yet)" if state is None else "(resuming)")]
    if state is not None:
        check_resumable(spec, state, sweep_dir)
    stages = (state or {}).get("stages", {})
    for i, item in enumerate(plan(spec, sweep_dir, state)):
        if isinstance(item, str):
            lines.append(f"{i + 1}. {item}")
            continue
        status = stages.get(item.stage, {}).get("status", "pending")
        done = run_finished(item.run_dir) if item.run_dir.exists() else False
        head = f"{i + 1}. [{item.stage}] {item.name}"
        if item.kind == "reference":
            lines.append(f"{head}: reference run {item.run_dir} "
                         f"({'finished' if done else 'NOT finished'})")
            continue
        lines.append(f"{head}: exp {item.exp}"
                     + (f" --set {' --set '.join(item.sets)}" if item.sets else "")
                     + f" ({status}{', run finished' if done and status != 'done' else ''})")
        if item.decision:
            lines.append(f"     decision: {item.decision}")
        lines.append(f"     $ {shlex.join(train_command(spec, item))}")
    return lines

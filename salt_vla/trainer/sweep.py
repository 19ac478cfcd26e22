"""`salt sweep`: a queue of training runs with decision rules, resumable after a crash.

A spec (TOML, or YAML when PyYAML is installed) lists stages in order. Each stage is one of

- a run:       ``{name, exp, set = [...]}`` — `salt train --exp EXP` into ``SWEEP/NAME``;
- a reference: ``{name, run_dir}`` — an existing finished run, read, never launched;
- a branch:    ``{name, if = {run = A, beats = B} | {run = A, below = X} | {run = A,
  above = X}, then = {exp, name?, set?}, else = {...}}`` — runs ``then`` or ``else``;
- a best-of:   ``{name, best_of = [A, B, ...], set = [...]}`` — reruns the best of those
  runs' configs with extra overrides (e.g. more epochs) into ``SWEEP/NAME``.

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

import fcntl
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.files import write_json_atomic
from salt_vla.trainer.heartbeat import pid_alive, process_start, this_host
from salt_vla.trainer.run_status import (
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_UNHEALTHY,
    RunStatus,
    combined_exit_code,
    format_run,
    read_run,
    run_status,
    smoothed,
)

STATE_NAME = "sweep.json"
LOCK_NAME = ".sweep.lock"
STATE_FORMAT = 1
METRICS = {"norm_loss": False, "loss": False, "probe_top1": True}  # name -> higher is better
ALIGNS = ("common_step", "end")
EXIT_INTERRUPTED = 130
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

SEED_SPEC = """\
# The seed sweep (the user's notes, made one tool): the baseline is the reference; run exp1;
# run exp3 if exp1 beats the baseline, else exp2; then train the best config for longer.
# Copy this file (`salt sweep seed --show-spec > my.toml`), edit it, `salt sweep my.toml`.
name = "seed"
metric = "norm_loss"   # norm_loss | loss (lower wins) | probe_top1 (higher; needs probe = [...])
window = 20            # decisions use the mean of the last 20 logged values, never one batch
align = "common_step"  # compare two runs at the shorter one's last step (same training budget)
launcher = ""          # e.g. "torchrun --nproc_per_node 8"
cache = ""             # --cache of every run ("": salt train's default)
data = ""              # --data of every run
set = []               # --set overrides of every run, e.g. ["num_workers=16"]
probe = []             # `salt eval probe` args after each run, e.g. ["--data", "/mnt/ssv2"]

[[stage]]
name = "baseline"
exp = "baseline"       # or: run_dir = "/path/to/an/existing/baseline/run"

[[stage]]
name = "exp1"
exp = "exp1"

[[stage]]
name = "next"
if = { run = "exp1", beats = "baseline" }
then = { exp = "exp3" }
else = { exp = "exp2" }

[[stage]]
name = "final"
best_of = ["baseline", "exp1", "next"]
set = ["epochs=@FINAL_EPOCHS@"]
"""


class SweepError(SaltError, ValueError):
    """A bad spec, a sweep directory in an inconsistent state, or a run the sweep cannot
    continue past; the message names the file or run and the fix."""


# --- spec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDef:
    """A training run: preset ``exp`` with ``sets`` overrides, in ``SWEEP/name``."""

    name: str
    exp: str
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    run: str
    beats: str | None = None
    below: float | None = None
    above: float | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # run | reference | branch | best
    run: RunDef | None = None
    run_dir: Path | None = None
    cond: Condition | None = None
    then: RunDef | None = None
    otherwise: RunDef | None = None
    best_of: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    stages: tuple[Stage, ...]
    metric: str = "norm_loss"
    window: int = 20
    align: str = "common_step"
    launcher: tuple[str, ...] = ()
    cache: str = ""
    data: str = ""
    sets: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    probe: tuple[str, ...] = ()
    probe_file: str = "probe.json"
    source: str = ""

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    def identity(self) -> dict[str, Any]:
        """What finished runs depend on: stored in the state, compared on resume."""
        return {"sets": list(self.sets), "stages": {s.name: s.raw for s in self.stages}}


def seed_spec_text(final_epochs: int = 15) -> str:
    """The built-in ``seed`` spec as TOML, with the final run's epoch count filled in."""
    if final_epochs < 1:
        raise SweepError(f"--final-epochs {final_epochs}: must be >= 1")
    return SEED_SPEC.replace("@FINAL_EPOCHS@", str(int(final_epochs)))


def _parse_text(text: str, where: str) -> dict[str, Any]:
    if where.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SweepError(f"{where}: YAML specs need PyYAML (pip install pyyaml); or write "
                             "the spec as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepError(f"{where}: not valid YAML: {e}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise SweepError("TOML specs need Python >= 3.11 or `pip install tomli`") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SweepError(f"{where}: not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{where}: expected a table/mapping at the top level")
    return data


def load_spec(
    source: str | Path,
    final_epochs: int | None = None,
    reference: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> SweepSpec:
    """Parse a spec file, or the built-in ``seed`` spec.

    ``final_epochs`` / ``reference`` (seed only): epochs of the final run; an existing
    finished baseline run to use instead of training one. ``overrides``: top-level keys
    (``launcher``, ``cache``, ``data``, ``set``, ...) replacing the spec's, e.g. from the CLI.
    """
    if str(source) == "seed":
        where = "seed (built-in)"
        data = _parse_text(seed_spec_text(final_epochs or 15), "seed.toml")
        if reference is not None:
            data["stage"][0] = {"name": "baseline", "run_dir": str(reference)}
    else:
        if final_epochs is not None or reference is not None:
            raise SweepError("--final-epochs and --reference apply to the built-in `seed` "
                             f"spec only; edit {source} instead")
        path = Path(source).expanduser()
        if not path.is_file():
            raise SweepError(f"sweep spec {path}: no such file (or use the built-in `seed`)")
        where = str(path)
        data = _parse_text(path.read_text(), path.name)
    for key, value in (overrides or {}).items():
        if value not in (None, "", [], ()):
            data[key] = list(data.get("set", [])) + list(value) if key == "set" else value
    return parse_spec(data, where)


def _str_list(v: Any, what: str, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(shlex.split(v)) if what.endswith("launcher") else (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise SweepError(f"{where}: {what} must be a list of strings, got {v!r}")
    return tuple(v)


def _check_keys(d: dict[str, Any], allowed: set[str], what: str, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SweepError(f"{where}: {what} has unknown keys {unknown}; valid: {sorted(allowed)}")


def _run_def(d: Any, default_name: str | None, what: str, where: str) -> RunDef:
    if not isinstance(d, dict) or not isinstance(d.get("exp"), str):
        raise SweepError(f"{where}: {what} must be a table with exp = \"PRESET\", got {d!r}")
    _check_keys(d, {"name", "exp", "set"}, what, where)
    return RunDef(str(d.get("name") or default_name or d["exp"]), d["exp"],
                  _str_list(d.get("set", []), f"{what}.set", where))


def parse_spec(data: dict[str, Any], where: str = "spec") -> SweepSpec:
    """Validate a parsed spec (see the module docstring); every problem names ``where``."""
    top = {"name", "metric", "window", "align", "launcher", "cache", "data", "set", "env",
           "probe", "probe_file", "stage"}
    _check_keys(data, top, "the spec", where)
    metric = data.get("metric", "norm_loss")
    if metric not in METRICS:
        raise SweepError(f"{where}: metric = {metric!r}; choose one of {', '.join(METRICS)}")
    align = data.get("align", "common_step")
    if align not in ALIGNS:
        raise SweepError(f"{where}: align = {align!r}; choose one of {', '.join(ALIGNS)}")
    window = data.get("window", 20)
    if not isinstance(window, int) or window < 1:
        raise SweepError(f"{where}: window = {window!r}; must be an integer >= 1")
    env = data.get("env", {})
    if not isinstance(env, dict):
        raise SweepError(f"{where}: env must be a table of NAME = \"value\"")
    raw_stages = data.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise SweepError(f"{where}: no stages; add [[stage]] tables (see `salt sweep seed "
                         "--show-spec`)")
    stages: list[Stage] = []
    names: set[str] = set()  # run names double as directory names: unique, path-safe

    def claim(name: str, what: str) -> None:
        if not NAME_RE.match(name):
            raise SweepError(f"{where}: {what} name {name!r}: use letters, digits, . _ -")
        if name in names:
            raise SweepError(f"{where}: name {name!r} is used twice; names are run directories")
        names.add(name)

    for i, d in enumerate(raw_stages):
        what = f"stage {i + 1}"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise SweepError(f"{where}: {what} needs name = \"...\"")
        name = d["name"]
        what = f"stage {name!r}"
        claim(name, what)
        sets = _str_list(d.get("set", []), f"{what}.set", where)
        if "best_of" in d:
            _check_keys(d, {"name", "best_of", "set"}, what, where)
            cands = _str_list(d["best_of"], f"{what}.best_of", where)
            _refs(cands, names, what, where)
            stages.append(Stage(name, "best", best_of=cands, sets=sets, raw=d))
        elif "if" in d:
            _check_keys(d, {"name", "if", "then", "else"}, what, where)
            c = d["if"]
            if not isinstance(c, dict):
                raise SweepError(f"{where}: {what}.if must be a table like {{run = \"exp1\", "
                                 "beats = \"baseline\"}")
            _check_keys(c, {"run", "beats", "below", "above"}, f"{what}.if", where)
            tests = [k for k in ("beats", "below", "above") if k in c]
            if "run" not in c or len(tests) != 1:
                raise SweepError(f"{where}: {what}.if needs run = NAME and exactly one of "
                                 "beats = NAME, below = NUMBER, above = NUMBER")
            for k in ("below", "above"):
                if k in c and not isinstance(c[k], (int, float)):
                    raise SweepError(f"{where}: {what}.if.{k} must be a number")
            cond = Condition(str(c["run"]), c.get("beats"), c.get("below"), c.get("above"))
            _refs([cond.run] + ([cond.beats] if cond.beats else []), names, what, where)
            if "then" not in d or "else" not in d:
                raise SweepError(f"{where}: {what} needs both then = {{exp = ...}} and "
                                 "else = {exp = ...}")
            then = _run_def(d["then"], None, f"{what}.then", where)
            other = _run_def(d["else"], None, f"{what}.else", where)
            claim(then.name, f"{what}.then")
            claim(other.name, f"{what}.else")
            stages.append(Stage(name, "branch", cond=cond, then=then, otherwise=other, raw=d))
        elif "run_dir" in d:
            _check_keys(d, {"name", "run_dir"}, what, where)
            path = Path(str(d["run_dir"])).expanduser().resolve()
            raw = {**d, "run_dir": str(path)}
            stages.append(Stage(name, "reference", run_dir=path, raw=raw))
        elif "exp" in d:
            stages.append(Stage(name, "run", run=_run_def(d, name, what, where), raw=d))
        else:
            raise SweepError(f"{where}: {what} needs one of exp, run_dir, if, best_of")
    spec = SweepSpec(
        name=str(data.get("name") or Path(where).stem.split(" ")[0]),
        stages=tuple(stages), metric=metric, window=window, align=align,
        launcher=_str_list(data.get("launcher", ""), "launcher", where),
        cache=str(data.get("cache", "")), data=str(data.get("data", "")),
        sets=_str_list(data.get("set", []), "set", where),
        env={str(k): str(v) for k, v in env.items()},
        probe=_str_list(data.get("probe", []), "probe", where),
        probe_file=str(data.get("probe_file", "probe.json")), source=where,
    )
    if metric == "probe_top1" and not spec.probe:
        raise SweepError(f"{where}: metric = \"probe_top1\" needs probe = [...], the arguments "
                         "of `salt eval probe` (at least --data) run after each training run")
    _check_configs(spec)
    return spec


def _refs(refs: Any, known: set[str], what: str, where: str) -> None:
    for r in refs:
        if r not in known:
            raise SweepError(f"{where}: {what} refers to {r!r}, which no earlier stage defines")


def _check_configs(spec: SweepSpec) -> None:
    """Resolve every run's config now: a typo must not surface after days of training."""
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.experiments import resolve

    defs = []
    for s in spec.stages:
        defs += [d for d in (s.run, s.then, s.otherwise) if d is not None]
    for d in defs:
        try:
            resolve(d.exp, list(spec.sets) + list(d.sets))
        except ConfigError as e:
            raise SweepError(f"{spec.source}: run {d.name!r}: {e}") from None


# --- state ---------------------------------------------------------------------------------


def state_path(sweep_dir: Path | str) -> Path:
    return Path(sweep_dir) / STATE_NAME


def is_sweep_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a sweep's queue state."""
    return state_path(path).is_file()


def read_state(sweep_dir: Path | str) -> dict[str, Any] | None:
    path = state_path(sweep_dir)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise SweepError(f"{path} is unreadable ({e}); it is written atomically, so something "
                         "else damaged it: move it away to start the queue afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SweepError(f"{path} is not a salt sweep state (format {STATE_FORMAT})")
    return state


def new_state(spec: SweepSpec) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT, "spec_name": spec.name, "source": spec.source,
        "identity": spec.identity(), "pid": None, "host": None, "updated": time.time(),
        "finished": False,
        "stages": {s.name: {"status": "pending", "attempts": 0} for s in spec.stages},
    }


def save_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    state["updated"] = time.time()
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path(sweep_dir), state)


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


@contextmanager
def sweep_lock(sweep_dir: Path):
    """One `salt sweep` per directory: an exclusive lock, released when the process dies."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(sweep_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = read_state(sweep_dir) or {}
            raise SweepError(f"another `salt sweep` (pid {state.get('pid')} on "
                             f"{state.get('host')}) is running the queue in {sweep_dir}; "
                             f"watch it with `salt status {sweep_dir}`") from None
        yield
    finally:
        f.close()


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
        path = run_dir / spec.probe_file
        try:
            top1 = float(json.loads(path.read_text())["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Reading(name, top1, 1, 0)
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
    """A config value as `--set` text (the inverse of experiments.parse_value)."""
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
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.experiments import TrainConfig, get_preset, valid_keys

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
        self.proc: subprocess.Popen | None = None
        self.orphan: int | None = None  # a run adopted from an earlier sweep (not our child)
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
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
    or stopped (the state says which; re-running resumes), 130 when interrupted."""
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
                return _interrupted(rec, sweep_dir, state, echo, p)
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
            return _interrupted(rec, sweep_dir, state, echo, p)
    if not run_finished(p.run_dir):
        how = "resuming" if (p.run_dir / "ckpt.pt").exists() else "starting"
        echo(f"[{stage.name}] {how} {p.name}: {shlex.join(cmd)}")
        echo(f"[{stage.name}] log: {p.run_dir / 'train.log'}")
        rc = _run_process(cmd, spec.env, p.run_dir / "train.log", p.run_dir, poll, echo,
                          signals, lambda pid: (rec.update(pid=pid, host=this_host(),
                                                           proc_start=process_start(pid)),
                                                save_state(sweep_dir, state)))
        rec.update(rc=rc, ended=time.time())
        if signals.count and not run_finished(p.run_dir):
            return _interrupted(rec, sweep_dir, state, echo, p)
        if not run_finished(p.run_dir):
            st = run_status(p.run_dir)
            rec.update(status="failed")
            save_state(sweep_dir, state)
            echo(f"[{stage.name}] {p.name} did not finish (exit code {rc}; {st.state}: "
                 f"{st.message}). See {p.run_dir / 'train.log'}; re-run the sweep to resume it")
            return EXIT_UNHEALTHY
    if spec.probe:
        out = p.run_dir / spec.probe_file
        ckpt = p.run_dir / "ckpt.pt"
        if not out.exists() or (ckpt.exists() and out.stat().st_mtime < ckpt.stat().st_mtime):
            pcmd = probe_command(spec, p)
            echo(f"[{stage.name}] probe: {shlex.join(pcmd)}")
            rc = _run_process(pcmd, spec.env, p.run_dir / "probe.log", p.run_dir, poll,
                              lambda s: None, signals)
            if signals.count:
                return _interrupted(rec, sweep_dir, state, echo, p)
            if rc != 0 or not out.exists():
                rec.update(status="failed")
                save_state(sweep_dir, state)
                echo(f"[{stage.name}] probe of {p.name} failed (exit code {rc}); see "
                     f"{p.run_dir / 'probe.log'}")
                return EXIT_UNHEALTHY
    rec.update(status="done", ended=time.time())
    save_state(sweep_dir, state)
    got = read_metric(spec, p.name, p.run_dir)
    echo(f"[{stage.name}] {p.name} finished" + (f": {got.text(spec.metric)}" if got else ""))
    return EXIT_OK


def _interrupted(rec: dict[str, Any], sweep_dir: Path, state: dict[str, Any],
                 echo: Callable[[str], None], p: Planned) -> int:
    rec.update(status="interrupted")
    save_state(sweep_dir, state)
    echo(f"interrupted at {p.name} (a running run is asked to checkpoint and stop first); "
         "re-run the same `salt sweep` command to resume the queue")
    return EXIT_INTERRUPTED


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


def _pending_status(name: str, run_dir: Path | None, message: str) -> RunStatus:
    return RunStatus(str(run_dir or ""), name, "pending", EXIT_OK, message)


def sweep_status(
    sweep_dir: Path | str, stall_after: float | None = None, window: int = 20
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

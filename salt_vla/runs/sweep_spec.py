"""`salt sweep` specs: the file format, its validation and the built-in ``seed`` spec.

A spec (TOML, or YAML when PyYAML is installed) lists stages in order. Each stage is one of

- a run:       ``{name, exp, set = [...]}`` — `salt train --exp EXP` into ``SWEEP/NAME``;
- a reference: ``{name, run_dir}`` — an existing finished run, read, never launched;
- a branch:    ``{name, if = {run = A, beats = B} | {run = A, below = X} | {run = A,
  above = X}, then = {exp, name?, set?}, else = {...}}`` — runs ``then`` or ``else``;
- a best-of:   ``{name, best_of = [A, B, ...], set = [...]}`` — reruns the best of those
  runs' configs with extra overrides (e.g. more epochs) into ``SWEEP/NAME``.

Top-level keys (``metric``, ``window``, ``align``, ``launcher``, ``cache``, ``data``, ``set``,
``env``, ``probe``, ``probe_file``) apply to every run; see ``salt sweep seed --show-spec``.
Every run's config is resolved at parse time, so a typo fails before days of training.
How the queue runs is :mod:`salt_vla.runs.sweep`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import ConfigError
from salt_vla.runs.rundir import PROBE_NAME
from salt_vla.runs.sweep_dir import SweepError
from salt_vla.trainer.config_file import parse_config_text
from salt_vla.trainer.experiments import resolve

METRICS = {"norm_loss": False, "loss": False, "probe_top1": True}  # name -> higher is better
ALIGNS = ("common_step", "end")
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
    probe_file: str = PROBE_NAME
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
    """The spec's top-level table (TOML, or YAML by suffix): the parser of config files."""
    try:
        return parse_config_text(text, where)
    except ConfigError as e:
        raise SweepError(str(e)) from None


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
        probe_file=str(data.get("probe_file", PROBE_NAME)), source=where,
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
    defs = []
    for s in spec.stages:
        defs += [d for d in (s.run, s.then, s.otherwise) if d is not None]
    for d in defs:
        try:
            resolve(d.exp, list(spec.sets) + list(d.sets))
        except ConfigError as e:
            raise SweepError(f"{spec.source}: run {d.name!r}: {e}") from None

"""The run directory: what `salt train` (and the commands after it) leave in ``--out``, named,
written and read in one place.

    RUN_DIR/
      config.json            the resolved config (under ``"config"``) and the run's facts: task,
                             data source, inputs (absolute --cache/--data, split), world size,
                             total steps and schedule legs, argv, cwd, package version, git
                             commit, torch version, host (write_run_config)
      metrics.jsonl          one JSON object a line: logged steps (with ``loss``) and one-off
                             events (with ``event``); written by the trainer's MetricsLogger
                             (an older run's log, kept by a fresh start: metrics.<time>.jsonl)
      wandb_id.txt           the wandb run id, so a resumed run continues its wandb run
      heartbeat.json         who trains, how far, how it ended (``runs/heartbeat.py``)
      ckpt.pt                the latest checkpoint (``trainer/checkpoint.py``)
      ckpt-000350.pt         the checkpoint of step 350: the latest (the same file as ckpt.pt,
                             a hard link), the ``keep_checkpoints`` before it, and every
                             ``snapshot_every``-th step kept for good (``checkpoints``)
      nonfinite-stepN.pt     the state before the non-finite step that stopped a run
      decode_failures.jsonl  videos a stage-1 run could not decode
      probe*.json            probe results (`salt eval probe`; schema in eval/probe_run.py)
      intphys.json           the intuitive-physics result (`salt eval intphys`)
      intphys-control.json   the same for the run's architecture at random init (--random-init)
      encoder/               `salt export`'s default output: model.safetensors, config.json,
                             README.md (an exported encoder; docs/export.md)
      teacher.pth            `salt teacher export`'s default output
      train.log, probe.log   output of the processes a sweep launches

Status, sweep, report, eval and export read runs only through this module, so a name or the
layout changes here and nowhere else. It imports nothing of the trainer (the trainer imports
it to write the directory); readers are tolerant where a half-written run is normal (torn
JSONL lines, no heartbeat yet) and strict where guessing would mislead.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.files import write_json_atomic, write_text_atomic

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
HEARTBEAT_NAME = "heartbeat.json"
CKPT_NAME = "ckpt.pt"
STEP_CKPT_GLOB = "ckpt-*.pt"
_STEP_CKPT = re.compile(r"ckpt-(\d+)\.pt")
NONFINITE_GLOB = "nonfinite-step*.pt"
FAILURES_NAME = "decode_failures.jsonl"
PROBE_NAME = "probe.json"  # `salt eval probe RUN_DIR`'s default (attentive probe)
PROBE_GLOB = "probe*.json"  # every probe result of a run (other kinds, the teacher's)
INTPHYS_NAME = "intphys.json"
INTPHYS_CONTROL_NAME = "intphys-control.json"  # the random-init control (chance level)
ENCODER_NAME = "encoder"  # `salt export`'s default output directory, inside the run
EXPORT_WEIGHTS_NAME = "model.safetensors"  # what makes a directory an exported encoder
TEACHER_EXPORT_NAME = "teacher.pth"
WANDB_ID_NAME = "wandb_id.txt"
TRAIN_LOG_NAME = "train.log"
PROBE_LOG_NAME = "probe.log"
# Any one of these makes a folder a run directory (a run that just started has only some).
RUN_MARKERS = (CONFIG_NAME, METRICS_NAME, CKPT_NAME, HEARTBEAT_NAME)
MARKERS_TEXT = f"{', '.join(RUN_MARKERS[:-1])} or {RUN_MARKERS[-1]}"
ENCODER_SUFFIX = ".safetensors"


class RunDirError(SaltError, ValueError):
    """A run directory, checkpoint or exported encoder that is not there or not readable;
    the message names the path and what to pass instead."""


def checkpoint_path(run_dir: Path | str) -> Path:
    """Where a run keeps its latest checkpoint."""
    return Path(run_dir) / CKPT_NAME


def step_checkpoint_path(run_dir: Path | str, step: int) -> Path:
    """Where a run keeps the checkpoint of step ``step`` (``ckpt-000350.pt``)."""
    return Path(run_dir) / f"ckpt-{int(step):06d}.pt"


def checkpoints(run_dir: Path | str) -> list[tuple[int, Path]]:
    """``(step, path)`` of every step-addressed checkpoint of a run, oldest first: the latest
    (also reachable as ``ckpt.pt``), the ones kept before it and the snapshots. Runs written
    before step-addressed checkpoints existed have none (only ``ckpt.pt``)."""
    found = []
    for p in Path(run_dir).glob(STEP_CKPT_GLOB):
        m = _STEP_CKPT.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_temps(run_dir: Path | str) -> list[Path]:
    """Partial checkpoint files a killed run left: the atomic writer's temp files
    (``.ckpt.pt.tmp-PID-XXXX``, ``.ckpt-000350.pt.tmp-...``, ``.nonfinite-step7.pt.tmp-...``;
    see ``salt_vla.files``). Only the trainer writes ``*.pt`` files in a run directory."""
    return sorted(p for p in Path(run_dir).glob(".*.pt.tmp-*") if p.is_file())


def nonfinite_path(run_dir: Path | str, step: int) -> Path:
    """Where a run stopped by non-finite losses keeps the state before step ``step``."""
    return Path(run_dir) / f"nonfinite-step{step}.pt"


def heartbeat_path(run_dir: Path | str) -> Path:
    """Where a run keeps its heartbeat."""
    return Path(run_dir) / HEARTBEAT_NAME


def is_export_dir(path: Path | str) -> bool:
    """Whether ``path`` is an exported encoder directory (``model.safetensors``, no
    checkpoint); its ``config.json`` is the export's, not a run's."""
    path = Path(path)
    return (path / EXPORT_WEIGHTS_NAME).is_file() and not checkpoint_path(path).exists()


def is_run_dir(path: Path | str) -> bool:
    """Whether ``path`` looks like a `salt train` run directory (holds any run marker)."""
    path = Path(path)
    return (path.is_dir() and any((path / n).exists() for n in RUN_MARKERS)
            and not is_export_dir(path))


# --- config.json ---------------------------------------------------------------------------


def write_run_config(run_dir: Path | str, cfg: Any, extra: dict[str, Any]) -> Path:
    """``run_dir/config.json``: the resolved config (``cfg.to_dict()``) plus ``extra`` (where
    the run got its data, world size, total steps, versions)."""
    return write_json_atomic(Path(run_dir) / CONFIG_NAME, {"config": cfg.to_dict(), **extra})


# The command that trains each kind of run (config.json's ``task``), for hints that must work
# as printed.
TRAIN_COMMANDS = {"salt": "salt train", "teacher": "salt teacher train"}


def resume_command(run_dir: Path | str, task: str | None = None) -> str:
    """The command that continues the run in ``run_dir`` with its saved config."""
    train = TRAIN_COMMANDS.get(task or "salt", TRAIN_COMMANDS["salt"])
    return f"{train} --out {shlex.quote(str(run_dir))} --resume"


def git_state(where: Path | str) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``where`` (the package's
    source), or None when there is none: no checkout, no git on PATH, git failing or slow.
    Recording provenance must never stop a run, so nothing here raises."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def saved_inputs(meta: dict[str, Any]) -> dict[str, Any]:
    """What a run read, as config.json's ``inputs`` records it: ``cache`` and ``data``
    (absolute paths or None) and ``split``; for runs written before it was recorded, what
    their ``data`` entry names (possibly relative), else ``{}``."""
    inputs = meta.get("inputs")
    if isinstance(inputs, dict):
        return inputs
    data = meta.get("data")  # older runs: what the data source described
    if isinstance(data, dict) and data.get("targets") in ("cached", "online", "pixels"):
        return {k: data.get(k) for k in ("cache", "data", "split") if data.get(k)}
    return {}


def read_run_config(run_dir: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, meta)`` of ``run_dir/config.json``: the config dict under ``"config"`` and
    the rest; ``({}, {})`` when the run has no config.json yet. A file that is there but not
    a JSON object raises :class:`RunDirError` (it is written atomically, so something else
    damaged it)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {path}: {e}; restore it or re-run `salt train` with "
                          "--resume to rewrite it") from e
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object (a `salt train` config.json)")
    config = data.pop("config", {})
    return (config if isinstance(config, dict) else {}), data


# --- metrics.jsonl -------------------------------------------------------------------------


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Every JSON object of a ``metrics.jsonl``, logged steps and events alike (torn lines,
    left by a kill, skipped); ``[]`` when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def truncate_metrics(path: Path | str, last_step: int) -> None:
    """Drop records after ``last_step`` (the part of a killed run that a resume redoes), so
    the file holds each step once. Rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line torn by a kill
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= last_step:
            keep.append(line)
    write_text_atomic(path, "".join(k + "\n" for k in keep))


def metric_values(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` over the records that have it as a number (events and
    records without it are skipped; non-finite values are kept: they must stay visible)."""
    return [(int(r["step"]), float(r[key])) for r in records
            if "step" in r and isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]


def loss_curve(run_dir: Path | str, key: str = "loss") -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` (default the loss) logged in a run's metrics.jsonl."""
    return metric_values(read_metrics(Path(run_dir) / METRICS_NAME), key)


# --- throughput: one definition for the console line, `salt status` and `salt report` ------

CLIPS_KEY = "clips"  # clips trained in a logged interval (all processes)
INTERVAL_KEY = "interval_s"  # wall seconds of that interval


@dataclass(frozen=True)
class Throughput:
    """Clips trained over the wall time they took, summed over logged intervals.

    An interval runs from one logged record to the next (the first from the session's first
    step); its wall time includes waiting for data, the optimiser step and checkpoint
    writes. Start-up before a session's first step (building the models, opening the store)
    and the time between a stop and its resumption are in no interval."""

    clips: int
    seconds: float

    @property
    def clips_per_s(self) -> float | None:
        return self.clips / self.seconds if self.clips and self.seconds > 0 else None

    def eta_s(self, clips_left: int) -> float | None:
        """Seconds to train ``clips_left`` more clips at this rate."""
        rate = self.clips_per_s
        return max(0, clips_left) / rate if rate else None


def throughput(records: Iterable[dict[str, Any]]) -> Throughput:
    """The :class:`Throughput` of the logged records that carry ``clips`` and
    ``interval_s`` (one record: that interval's rate; a run's records: the run's rate)."""
    clips, seconds = 0, 0.0
    for r in records:
        c, t = r.get(CLIPS_KEY), r.get(INTERVAL_KEY)
        if isinstance(c, (int, float)) and isinstance(t, (int, float)) and t > 0:
            clips += int(c)
            seconds += float(t)
    return Throughput(clips, seconds)


# --- heartbeat.json ------------------------------------------------------------------------


def read_heartbeat(run_dir: Path | str) -> dict[str, Any] | None:
    """The run's last heartbeat, or None when it has none (or it is unreadable: it is
    rewritten every few seconds without fsync, so a power cut may leave it empty)."""
    try:
        data = json.loads(heartbeat_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the whole directory -------------------------------------------------------------------


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
        return metric_values(self.records, key)


def read_run(run_dir: Path | str) -> RunFiles:
    """Parse a run directory; missing files give empty parts (a run that never started has
    none) and so does a damaged config.json: status must still report on such a run."""
    run_dir = Path(run_dir)
    try:
        config, meta = read_run_config(run_dir)
    except RunDirError:
        config, meta = {}, {}
    records: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for rec in read_metrics(run_dir / METRICS_NAME):
        if "step" in rec:
            (events if "event" in rec else records).append(rec)
    return RunFiles(run_dir, config, meta, records, events, read_heartbeat(run_dir))


# --- what a path names ---------------------------------------------------------------------

RUN_KINDS = ("run", "checkpoint", "encoder")


@dataclass(frozen=True)
class RunPath:
    """What a path given for a trained run names.

    ``kind``: ``"run"`` (a run directory; ``file`` is its ckpt.pt), ``"checkpoint"`` (a
    training checkpoint file) or ``"encoder"`` (a `salt export` directory, ``file`` its
    model.safetensors; or a ``*.safetensors`` file). ``run_dir``: the directory itself, or
    the folder holding the file.
    """

    kind: str
    run_dir: Path
    file: Path


def _refuse_export(path: Path, kinds: tuple[str, ...]) -> None:
    if "encoder" not in kinds:
        where = ("its config.json" if path.is_dir() else
                 "its metadata, `salt_vla.export.read_export_config(PATH)`")
        raise RunDirError(
            f"{path} is an exported encoder, not a training run: it holds the student network "
            "only (no predictor, no teacher, no optimiser state). Pass the run directory it "
            f"was exported from ({where} names it under provenance.run_dir)"
        )


def resolve_run_path(path: Path | str, kinds: tuple[str, ...] = RUN_KINDS) -> RunPath:
    """The one resolver of "a run directory, a checkpoint or an exported encoder": what
    ``path`` names, refused (with the fix) when it is none of ``kinds``. An exported
    encoder is a directory holding ``model.safetensors`` (``file``: that file) or a
    ``*.safetensors`` file."""
    path = Path(path).expanduser()
    if path.is_dir():
        if is_export_dir(path):
            _refuse_export(path, kinds)
            return RunPath("encoder", path, path / EXPORT_WEIGHTS_NAME)
        ckpt = checkpoint_path(path)
        if not ckpt.is_file():
            raise RunDirError(
                f"{path} holds no checkpoint ({CKPT_NAME}): is it a run directory (the --out "
                "of `salt train` or `salt teacher train`)? Train first, or pass the checkpoint "
                "file itself"
            )
        return RunPath("run", path, ckpt)
    if path.is_file():
        kind = "encoder" if path.suffix == ENCODER_SUFFIX else "checkpoint"
        if kind == "encoder":
            _refuse_export(path, kinds)
        return RunPath(kind, path.parent, path)
    also = (f", or an exported encoder (a directory with {EXPORT_WEIGHTS_NAME}, or "
            f"*{ENCODER_SUFFIX})") if "encoder" in kinds else ""
    raise RunDirError(f"no checkpoint at {path}: no such run directory or file; pass a run "
                      f"directory (the --out of `salt train` or `salt teacher train`), its "
                      f"{CKPT_NAME}{also}")

"""The run directory: what `salt train` (and the commands after it) leave in ``--out``, named,
written and read in one place.

    RUN_DIR/
      config.json            the resolved config (under ``"config"``) and the run's facts: task,
                             data source, world size, total steps, versions (write_run_config)
      metrics.jsonl          one JSON object a line: logged steps (with ``loss``) and one-off
                             events (with ``event``); written by the trainer's MetricsLogger
                             (an older run's log, kept by a fresh start: metrics.<time>.jsonl)
      wandb_id.txt           the wandb run id, so a resumed run continues its wandb run
      heartbeat.json         who trains, how far, how it ended (``runs/heartbeat.py``)
      ckpt.pt                the latest checkpoint (``trainer/checkpoint.py``)
      nonfinite-stepN.pt     the state before the non-finite step that stopped a run
      decode_failures.jsonl  videos a stage-1 run could not decode
      probe*.json            probe results (`salt eval probe`; schema in eval/probe_run.py)
      intphys.json           the intuitive-physics result (`salt eval intphys`)
      intphys-control.json   the same for the run's architecture at random init (--random-init)
      encoder.safetensors    `salt export`'s default output (with ``encoder.json``)
      teacher.pth            `salt teacher export`'s default output
      train.log, probe.log   output of the processes a sweep launches

Status, sweep, report, eval and export read runs only through this module, so a name or the
layout changes here and nowhere else. It imports nothing of the trainer (the trainer imports
it to write the directory); readers are tolerant where a half-written run is normal (torn
JSONL lines, no heartbeat yet) and strict where guessing would mislead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.files import write_json_atomic, write_text_atomic

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
HEARTBEAT_NAME = "heartbeat.json"
CKPT_NAME = "ckpt.pt"
NONFINITE_GLOB = "nonfinite-step*.pt"
FAILURES_NAME = "decode_failures.jsonl"
PROBE_NAME = "probe.json"  # `salt eval probe RUN_DIR`'s default (attentive probe)
PROBE_GLOB = "probe*.json"  # every probe result of a run (other kinds, the teacher's)
INTPHYS_NAME = "intphys.json"
INTPHYS_CONTROL_NAME = "intphys-control.json"  # the random-init control (chance level)
ENCODER_NAME = "encoder.safetensors"
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


def nonfinite_path(run_dir: Path | str, step: int) -> Path:
    """Where a run stopped by non-finite losses keeps the state before step ``step``."""
    return Path(run_dir) / f"nonfinite-step{step}.pt"


def heartbeat_path(run_dir: Path | str) -> Path:
    """Where a run keeps its heartbeat."""
    return Path(run_dir) / HEARTBEAT_NAME


def is_run_dir(path: Path | str) -> bool:
    """Whether ``path`` looks like a `salt train` run directory (holds any run marker)."""
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in RUN_MARKERS)


# --- config.json ---------------------------------------------------------------------------


def write_run_config(run_dir: Path | str, cfg: Any, extra: dict[str, Any]) -> Path:
    """``run_dir/config.json``: the resolved config (``cfg.to_dict()``) plus ``extra`` (where
    the run got its data, world size, total steps, versions)."""
    return write_json_atomic(Path(run_dir) / CONFIG_NAME, {"config": cfg.to_dict(), **extra})


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
    training checkpoint file) or ``"encoder"`` (a `salt export` ``*.safetensors`` file).
    ``run_dir``: the directory itself, or the folder holding the file.
    """

    kind: str
    run_dir: Path
    file: Path


def resolve_run_path(path: Path | str, kinds: tuple[str, ...] = RUN_KINDS) -> RunPath:
    """The one resolver of "a run directory, a checkpoint or an exported encoder": what
    ``path`` names, refused (with the fix) when it is none of ``kinds``."""
    path = Path(path).expanduser()
    if path.is_dir():
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
        if kind not in kinds:
            raise RunDirError(
                f"{path} is an exported encoder, not a training checkpoint; pass the run "
                "directory it was exported from (its .json sidecar names it: source.run_dir)"
            )
        return RunPath(kind, path.parent, path)
    also = f", or an exported encoder (*{ENCODER_SUFFIX})" if "encoder" in kinds else ""
    raise RunDirError(f"no checkpoint at {path}: no such run directory or file; pass a run "
                      f"directory (the --out of `salt train` or `salt teacher train`), its "
                      f"{CKPT_NAME}{also}")

"""Where a training run's config and inputs come from, settled before anything is built.

A new run: the preset (``--exp NAME``; without one, the config class's defaults), then a
config file (``--config FILE``, see ``config_file.py``), then the ``--set`` items; a later one
wins. Resuming without ``--exp`` and ``--config`` takes the config the run saved in its
config.json instead, so nothing has to be typed again; ``--set`` may then change only the
runtime keys (``RUNTIME_KEYS``: workers, logging, checkpoint interval, stop_at, W&B names)
and extend the run with a longer ``epochs``/``max_steps`` (the loop checks the extension
against the checkpoint; ``schedules.py`` says what happens to the learning-rate and weight
decay schedules). ``stop_at`` belongs to the session that sets it and is not carried over.
The inputs (``--cache``, ``--data``, ``--split``) then default to the ones the run recorded.

Both training commands use this module: :data:`STAGE2` (`salt train`) and :data:`STAGE1`
(`salt teacher train`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from salt_vla.errors import ConfigError
from salt_vla.models.teacher import is_random_source
from salt_vla.paths import Resolved, absolute, resolve_cache_dir, resolve_data_root
from salt_vla.runs.rundir import (
    CONFIG_NAME,
    TRAIN_COMMANDS,
    read_run_config,
    resume_command,
    saved_inputs,
)
from salt_vla.trainer import overrides
from salt_vla.trainer.config_file import config_toml, key_table, read_config_file
from salt_vla.trainer.experiments import TrainConfig, resolve
from salt_vla.trainer.loop_config import RESUME_KEYS, RUNTIME_KEYS, LoopConfig
from salt_vla.trainer.teacher_experiments import TeacherTrainConfig, resolve_teacher


@dataclass(frozen=True)
class Stage:
    """A training command's config family."""

    cls: type[LoopConfig]
    resolve: Callable[..., LoopConfig]  # (preset or None, --set items, file values)
    task: str  # config.json's "task" of its runs
    list_presets: str  # the command that lists the presets


STAGE2 = Stage(TrainConfig, resolve, "salt", "salt exp list")
STAGE1 = Stage(TeacherTrainConfig, resolve_teacher, "teacher", "salt teacher show")


@dataclass(frozen=True)
class Settled:
    """The config of a run, where it came from, and what to print before the run."""

    cfg: LoopConfig
    source: str  # e.g. "preset exp3 + my.toml + --set", "saved runs/x/config.json"
    notes: tuple[str, ...] = ()  # deprecation lines
    inputs: dict[str, Any] = field(default_factory=dict)  # recorded inputs of a resumed run
    saved_in: Path | None = None  # the config.json it was taken from


def saved_config_path(run_dir: Path, resume: str) -> Path:
    """The config.json a resumption without --exp/--config reads: the one beside ``--resume
    CKPT``'s file when there is one, else the run directory's."""
    if resume not in ("yes", "auto"):
        beside = Path(resume).expanduser().parent / CONFIG_NAME
        if beside.is_file():
            return beside
    return run_dir / CONFIG_NAME


def settle(
    stage: Stage,
    exp: str | None,
    config_file: Path | None,
    sets: Sequence[str],
    run_dir: Path | None,
    resume: str | None,
) -> Settled:
    """The run's config: preset + file + ``--set``, or the saved one when resuming without
    ``exp`` and ``config_file`` (see the module docstring). ``resume`` is
    ``RunSpec.resume``'s value."""
    notes = overrides.deprecation_notes(overrides.set_keys(sets), stage.cls)
    if resume is not None and exp is None and config_file is None:
        return _saved(stage, sets, run_dir, resume, notes)
    if exp is None and config_file is None:
        raise ConfigError(
            f"no config: give --exp NAME (a preset, see `{stage.list_presets}`), --config FILE "
            "(see `salt exp show NAME`), or --resume with --out RUN to continue a run with the "
            "config it saved")
    values, file_notes = (read_config_file(config_file, stage.cls) if config_file is not None
                          else (None, []))
    cfg = stage.resolve(exp, list(sets), values)
    parts = [f"preset {exp}" if exp else f"{stage.cls.__name__} defaults"]
    parts += [str(config_file)] if config_file is not None else []
    parts += ["--set"] if sets else []
    return Settled(absolute_paths(cfg), " + ".join(parts), tuple(notes + file_notes))


def _saved(stage: Stage, sets: Sequence[str], run_dir: Path | None, resume: str,
           notes: list[str]) -> Settled:
    if run_dir is None:
        raise ConfigError("--resume without --exp or --config continues a run with the config "
                          "it saved: name the run directory with --out RUN")
    path = saved_config_path(run_dir, resume)
    config, meta = read_run_config(path.parent)
    if not config:
        raise ConfigError(
            f"--resume: {path} does not exist, so there is no saved config to continue with; "
            "give the config the run was started with (--exp NAME and/or --config FILE, "
            "and the same --set)")
    task = meta.get("task", stage.task)
    if task != stage.task:
        raise ConfigError(f"{path.parent} is a run of another kind (task {task!r}); continue "
                          f"it with `{resume_command(path.parent, task)}`")
    saved = stage.cls.from_dict(config)
    values = stage.cls.parse_overrides(sets)
    fixed = [k for k in values if k not in RESUME_KEYS]
    if fixed:
        raise ConfigError(
            f"--set {', '.join(fixed)}: a resumed run keeps the config it saved in {path}; "
            f"--set may change only the runtime keys ({', '.join(sorted(RUNTIME_KEYS))}) and "
            "extend epochs or max_steps. For other values start a new run (another --out, "
            f"e.g. with --config FILE from `salt exp show`)")
    cfg = replace(saved, stop_at=0, **values).validated()
    return Settled(cfg, f"saved {path}", tuple(notes), saved_inputs(meta), path)


def absolute_paths(cfg: LoopConfig) -> LoopConfig:
    """``cfg`` with its path keys (``PATH_KEYS``) made absolute against the current
    directory, so the run's config.json names the same files from anywhere."""
    changes = {}
    for name in cfg.PATH_KEYS:
        value = getattr(cfg, name)
        if value and not is_random_source(value):
            changes[name] = str(absolute(value))
    return replace(cfg, **changes) if changes else cfg


def input_dir(kind: str, option: Path | None, settled: Settled, data: Path | None = None,
              split: str = "train") -> Resolved:
    """The run's ``kind`` input (``"cache"`` or ``"data"``): the option, else the one a
    resumed run recorded, else the default (``paths.py``); absolute."""
    recorded = settled.inputs.get(kind)
    if option is None and recorded:
        resolved = Resolved(Path(recorded), f"saved in {settled.saved_in}")
    elif kind == "cache":
        resolved = resolve_cache_dir(option, data if data is not None else
                                     settled.inputs.get("data"), split)
    else:
        resolved = resolve_data_root(option)
    return Resolved(absolute(resolved.path), resolved.source)


def input_split(option: str | None, settled: Settled) -> str:
    """``--split``, else a resumed run's recorded split, else ``train``."""
    return option or str(settled.inputs.get("split") or "train")


def show_config(
    stage: Stage, name: str | None, config_file: Path | None, sets: Sequence[str], keys: bool
) -> list[str]:
    """What `salt exp show` / `salt teacher show` print: the resolved config as TOML that
    ``--config`` reads back (each key with its description), or with ``keys`` the table of
    keys, types, defaults and descriptions."""
    values = read_config_file(config_file, stage.cls)[0] if config_file is not None else None
    if keys:
        return key_table(stage.resolve(name, list(sets), values))
    if name is None and config_file is None:
        raise ConfigError(f"name a preset (see `{stage.list_presets}`) or a --config FILE to "
                          "show, or pass --keys for the list of keys")
    cfg = stage.resolve(name, list(sets), values)
    train = TRAIN_COMMANDS[stage.task]
    header = [f"{name or cfg.name}: {cfg.notes}" if cfg.notes else f"{name or cfg.name}",
              f"Save as FILE.toml, edit, and train with `{train} --config FILE.toml`.",
              "Keys left out keep --exp's preset (or the defaults); --set wins over the file."]
    return config_toml(cfg, header).splitlines()

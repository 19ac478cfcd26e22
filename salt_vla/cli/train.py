"""``salt exp`` and ``salt train``: the stage-2 presets and the stage-2 run.

Stage 1 (``salt teacher``) runs on the same loop with the same run-directory contract, so the
two share their run options (:mod:`salt_vla.cli.options`) and the run-start check
(:mod:`salt_vla.cli.run_start`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import group, say, show_resolved
from salt_vla.cli.options import (
    CacheOpt,
    ConfigOpt,
    DataOpt,
    KeysOpt,
    ResumeFromArg,
    ResumeOpt,
    RunOutOpt,
    SetOpt,
    TeacherArchOpt,
    TeacherOpt,
    WandbOpt,
)
from salt_vla.cli.run_start import EXIT_CODES_HELP, command_line, run_start

exp_app = group("List and inspect the experiment presets `salt train --exp NAME` runs.")
TRAIN_HELP = (
    "Stage 2: train a student (+ predictor) to predict the cached teacher latents at "
    "masked positions. The config: --exp's preset, then --config FILE, then --set (a later "
    "one wins); or, with `--out RUN --resume` alone, the config RUN saved. Writes config.json "
    "(the resolved config, absolute paths, argv, version, git commit), metrics.jsonl and "
    "ckpt.pt (atomic, every ckpt_every steps and at the end) into the run directory. "
    "Multi-GPU: `torchrun --nproc_per_node N $(which salt) train ...` (batch_size stays the "
    "global batch). " + EXIT_CODES_HELP
)
SplitOpt = typer.Option(
    None, "--split", help="Split whose cache (or videos) to use. Default: train (resuming: "
    "the run's).", show_default=False,
)


@exp_app.command("list", help="List the experiment presets with a one-line description each.")
def exp_list() -> None:
    from salt_vla.trainer.experiments import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, cfg in PRESETS.items():
        say(f"{name.ljust(width)}  {cfg.notes}")


@exp_app.command(
    "show",
    help="Print a preset's resolved config (after --config and --set) as TOML that `salt "
    "train --config FILE` reads back, each key with its description as a comment: `salt exp "
    "show exp3 > my.toml`, edit, `salt train --config my.toml`. With --keys: every key's "
    "type, default and description.",
)
def exp_show(
    name: str | None = typer.Argument(None, metavar="NAME", help="Preset name (see `salt exp "
                                      "list`).", show_default=False),
    config: Path | None = ConfigOpt,
    sets: list[str] = SetOpt,
    keys: bool = KeysOpt,
) -> None:
    from salt_vla.trainer.run_config import STAGE2, show_config

    for line in show_config(STAGE2, name, config, sets, keys):
        say(line)


def train_cmd(
    exp: str | None = typer.Option(
        None, "--exp", metavar="NAME", help="Experiment preset (see `salt exp list`).",
        show_default=False,
    ),
    config: Path | None = ConfigOpt,
    cache: Path | None = CacheOpt,
    data: Path | None = DataOpt,
    split: str | None = SplitOpt,
    sets: list[str] = SetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    targets: str | None = typer.Option(
        None,
        "--targets",
        metavar="cached|online",
        help="`cached` (default: read the store, never run the teacher) or `online` (decode "
        "the videos under --data and run the teacher on every batch; needs --teacher). Same "
        "as --set targets=...",
        show_default=False,
    ),
    teacher: str | None = TeacherOpt,
    teacher_arch: str | None = TeacherArchOpt,
    wandb: str | None = WandbOpt,
) -> None:
    """Train a stage-2 student (see the command's help)."""
    from salt_vla.trainer.loop import RunSpec, train
    from salt_vla.trainer.run_config import STAGE2, input_dir, input_split

    named = {"targets": targets, "teacher": teacher, "teacher_arch": teacher_arch}
    items = list(sets) + [f"{k}={v}" for k, v in named.items() if v is not None]
    start, settled = run_start(STAGE2, exp, config, items, out, resume, resume_from, wandb)
    run_dir, cfg = start.run_dir(settled), settled.cfg
    where = input_split(split, settled)
    kind = "cache" if cfg.targets == "cached" else "data"
    resolved = input_dir(kind, cache if kind == "cache" else data, settled, data, where)
    if start.main_rank:
        show_resolved("cache" if kind == "cache" else "data root", resolved)
    run = RunSpec(out=run_dir, cache=resolved.path if kind == "cache" else None,
                  data=resolved.path if kind == "data" else None, split=where,
                  resume=start.resume, wandb=start.wandb, command=command_line())
    raise typer.Exit(train(cfg, run, echo=start.echo).exit_code)

"""``salt exp``, ``salt train`` and ``salt teacher``: the presets and the two training stages.

Both stages run on one loop with one run-directory contract, so they share their run options
(:mod:`salt_vla.cli.options`) and the run-start check below.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from salt_vla.cli.common import fail, group, main_rank_echo, say, show_resolved
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
    TeacherSetOpt,
    WandbOpt,
)

if TYPE_CHECKING:
    from salt_vla.trainer.run_config import Settled, Stage

exp_app = group("List and inspect the experiment presets `salt train --exp NAME` runs.")
teacher_app = group(
    "SALT stage 1: train the teacher itself by VideoMAE-style pixel reconstruction "
    "under block masks ('V-Pixel') and export it as a VideoMAEv2 checkpoint that `salt cache "
    "build --teacher` loads."
)

EXIT_CODES_HELP = (
    "Exit code: 0 when the run ended as planned (every step, or --set stop_at); 1 on an "
    "error; 130 (Ctrl-C, SIGINT) or 143 (SIGTERM, e.g. a preemption) when a signal stopped "
    "it after writing its checkpoint: resume it with --resume. So `salt train ... && salt "
    "export RUN` never exports a preempted run."
)
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


@dataclass(frozen=True)
class RunStart:
    """What both training commands settle before building the run."""

    echo: Callable[[str], None]  # prints on rank 0 only
    main_rank: bool
    out: Path | None
    resume: str | None  # RunSpec.resume: None, "yes", "auto" or a checkpoint path
    wandb: str

    def run_dir(self, settled: Settled) -> Path:
        """--out, else runs/<name>; prints it and the config's origin (and any notes)."""
        for note in settled.notes:
            self.echo(f"warning: {note}")
        self.echo(f"config: {settled.source}")
        run_dir = self.out if self.out is not None else Path("runs") / settled.cfg.name
        origin = "--out" if self.out is not None else "default runs/<name>"
        self.echo(f"run dir: {run_dir}  ({origin})")
        return run_dir


def run_start(
    stage: Stage, exp: str | None, config: Path | None, sets: list[str], out: Path | None,
    resume: bool, resume_from: str | None, wandb: str | None,
) -> tuple[RunStart, Settled]:
    """Check --resume's argument, resolve the W&B mode and settle the config."""
    from salt_vla.trainer.metrics_log import resolve_wandb_mode
    from salt_vla.trainer.run_config import settle

    echo, main_rank = main_rank_echo()
    if resume_from is not None and not resume:
        raise fail(f"unexpected argument {resume_from!r} (did you mean --resume {resume_from}?)")
    mode = resolve_wandb_mode(wandb)
    resume_value = ("yes" if resume_from is None else resume_from) if resume else None
    settled = settle(stage, exp, config, sets, out, resume_value)
    return RunStart(echo, main_rank, out, resume_value, mode), settled


def command_line() -> tuple[str, ...]:
    """This process's command line as the user typed it (config.json's ``argv``)."""
    return ("salt", *sys.argv[1:])


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


@teacher_app.command(
    "show",
    help="Without NAME: list the teacher presets. With NAME: print its resolved config (after "
    "--config and --set) as TOML that `salt teacher train --config FILE` reads back, each key "
    "with its description. With --keys: every key's type, default and description.",
)
def teacher_show(
    name: str | None = typer.Argument(
        None, metavar="NAME", help="Teacher preset (teacher-tiny, teacher-base).",
        show_default=False,
    ),
    config: Path | None = ConfigOpt,
    sets: list[str] = TeacherSetOpt,
    keys: bool = KeysOpt,
) -> None:
    from salt_vla.trainer.run_config import STAGE1, show_config
    from salt_vla.trainer.teacher_experiments import TEACHER_PRESETS

    if name is None and config is None and not keys:
        width = max(len(n) for n in TEACHER_PRESETS)
        for preset, cfg in TEACHER_PRESETS.items():
            say(f"{preset.ljust(width)}  {cfg.notes}")
        return
    for line in show_config(STAGE1, name, config, sets, keys):
        say(line)


@teacher_app.command(
    "train",
    help="Stage 1: train a VideoMAEv2 encoder on the visible tokens + a light decoder over "
    "all tokens to reconstruct the pixels of the masked tubelets (per-patch normalised as "
    "in VideoMAE; raw with --set norm_pix=false, teacher-tiny's setting), on clips decoded "
    "straight from the videos under --data through the preset's view. The config: --exp's "
    "preset, then --config FILE, then --set; or, with `--out RUN --resume` alone, the "
    "config RUN saved. Same loop as `salt train`: config.json, metrics.jsonl, ckpt.pt (atomic, "
    "every ckpt_every steps and at the end), exact --resume; unreadable videos are skipped "
    "and listed in RUN_DIR/decode_failures.jsonl. On the last step the encoder is written to "
    "RUN_DIR/teacher.pth (official VideoMAEv2 keys) with its sha256. Multi-GPU: `torchrun "
    "--nproc_per_node N $(which salt) teacher train ...`. " + EXIT_CODES_HELP,
)
def teacher_train_cmd(
    exp: str | None = typer.Option(
        None, "--exp", metavar="NAME", help="Teacher preset: teacher-tiny (CPU demo) or "
        "teacher-base (ViT-B, 16x224). See `salt teacher show`.", show_default=False
    ),
    config: Path | None = ConfigOpt,
    data: Path | None = DataOpt,
    split: str | None = typer.Option(
        None, "--split", help="Split whose videos to train on. Default: train (resuming: the "
        "run's).", show_default=False,
    ),
    sets: list[str] = TeacherSetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    wandb: str | None = WandbOpt,
) -> None:
    """Train a stage-1 teacher (see the command's help)."""
    from salt_vla.trainer.loop import RunSpec
    from salt_vla.trainer.run_config import STAGE1, input_dir, input_split
    from salt_vla.trainer.teacher_train import train_teacher

    start, settled = run_start(STAGE1, exp, config, list(sets), out, resume, resume_from, wandb)
    run_dir = start.run_dir(settled)
    root = input_dir("data", data, settled)
    if start.main_rank:
        show_resolved("data root", root)
    run = RunSpec(out=run_dir, data=root.path, split=input_split(split, settled),
                  resume=start.resume, wandb=start.wandb, command=command_line())
    raise typer.Exit(train_teacher(settled.cfg, run, echo=start.echo).train.exit_code)


@teacher_app.command(
    "export",
    help="Write a `salt teacher train` run's encoder as a VideoMAEv2 checkpoint (official "
    "fine-tune key layout: patch_embed.proj, blocks.N.attn.qkv + q_bias/v_bias, ...; bare "
    "state dict), check that the teacher loader accepts it with its strict key check, and "
    "record its sha256 in OUT.sha256 (sha256sum format) and provenance in OUT.json. Works on "
    "a run stopped early too (exports its last checkpoint).",
)
def teacher_export_cmd(
    run: Path = typer.Argument(..., help="RUN_DIR (its ckpt.pt) or a checkpoint file.",
                               show_default=False),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (.pth; .safetensors writes safetensors). Default: "
        "RUN_DIR/teacher.pth.", show_default=False,
    ),
) -> None:
    from salt_vla.trainer.teacher_export import export_teacher

    say(f"run: {run}  (from RUN)")
    res = export_teacher(run, out)
    s = res.spec
    say(f"teacher: VideoMAEv2 {s.arch}, {s.num_frames} frames x {s.img_size} px, tubelet "
        f"{s.tubelet}, patch {s.patch}; step {res.step}/{res.total_steps}")
    say(f"weights: {res.path.resolve()}  ({'--out' if out else 'default RUN_DIR/teacher.pth'})")
    say(f"sha256: {res.sha256}  ({res.sha_path.resolve()})")
    say(f"next: {res.cache_command()}")


@teacher_app.command(
    "convert",
    help="Convert a Hugging Face transformers VideoMAE checkpoint (a save_pretrained directory "
    "or its model.safetensors / pytorch_model.bin; VideoMAEModel, VideoMAEForVideoClassification "
    "or the encoder of VideoMAEForPreTraining) into the official VideoMAEv2 key layout that "
    "`salt cache build --teacher-ckpt` loads: query/key/value -> attn.qkv, q_bias/v_bias kept, "
    "the key bias dropped (softmax cancels it), a pre-training decoder dropped. Checks that the "
    "teacher loader accepts the file and records its sha256 in OUT.sha256 and the mapping in "
    "OUT.json.",
)
def teacher_convert_cmd(
    source: Path = typer.Argument(..., help="transformers VideoMAE directory or weights file.",
                                  show_default=False),
    out: Path = typer.Option(..., "--out", help="Output file (.pth; .safetensors writes "
                             "safetensors).", show_default=False),
) -> None:
    from salt_vla.models.hf_videomae import convert_hf_teacher

    say(f"source: {source}  (from SOURCE)")
    res = convert_hf_teacher(source, out)
    s = res.spec
    say(f"teacher: VideoMAEv2 {s.arch}, tubelet {s.tubelet}, patch {s.patch} (read from "
        f"{res.source})")
    if res.dropped:
        say(f"dropped {len(res.dropped)} key(s): {', '.join(res.dropped[:4])}"
            f"{' ...' if len(res.dropped) > 4 else ''}")
    for note in res.notes:
        say(f"note: {note}")
    say(f"weights: {res.path.resolve()}  (--out)")
    say(f"sha256: {res.sha256}  ({res.sha_path.resolve()})")
    say(f"next: {res.cache_command()} --view-preset VIEW")

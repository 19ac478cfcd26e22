"""``salt exp``, ``salt train`` and ``salt teacher``: the presets and the two training stages.

Both stages run on one loop with one run-directory contract, so they share their run options
(:mod:`salt_vla.cli.options`) and the run-start check below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from salt_vla.cli.common import fail, group, main_rank_echo, say, show_resolved
from salt_vla.cli.options import (
    CacheOpt,
    DataOpt,
    ResumeFromArg,
    ResumeOpt,
    RunOutOpt,
    SetOpt,
    TeacherSetOpt,
    WandbOpt,
)

exp_app = group("List and inspect the experiment presets `salt train --exp NAME` runs.")
teacher_app = group(
    "SALT stage 1: train the teacher itself by VideoMAE-style pixel reconstruction "
    "under block masks ('V-Pixel') and export it as a VideoMAEv2 checkpoint that `salt cache "
    "build --teacher-ckpt` loads."
)

TRAIN_HELP = (
    "Stage 2: train a student (+ predictor) to predict the cached teacher latents at "
    "masked positions, per an experiment preset. Writes config.json, metrics.jsonl and "
    "ckpt.pt (atomic, every ckpt_every steps and at the end) into the run directory. "
    "Multi-GPU: `torchrun --nproc_per_node N $(which salt) train ...` (batch_size stays the "
    "global batch)."
)


@dataclass(frozen=True)
class RunStart:
    """What both training commands settle before building their config."""

    echo: Callable[[str], None]  # prints on rank 0 only
    main_rank: bool
    run_dir: Path
    run_dir_from: str
    resume: str | None  # RunSpec.resume: None, "yes", "auto" or a checkpoint path
    wandb: str

    def say_run_dir(self) -> None:
        self.echo(f"run dir: {self.run_dir}  ({self.run_dir_from})")


def run_start(
    exp: str, out: Path | None, resume: bool, resume_from: str | None, wandb: str | None
) -> RunStart:
    """Check --resume's argument, resolve the W&B mode and the run directory."""
    from salt_vla.trainer.metrics_log import resolve_wandb_mode

    echo, main_rank = main_rank_echo()
    if resume_from is not None and not resume:
        raise fail(f"unexpected argument {resume_from!r} (did you mean --resume {resume_from}?)")
    mode = resolve_wandb_mode(wandb)
    run_dir = out if out is not None else Path("runs") / exp
    run_dir_from = "--out" if out is not None else "default runs/<exp>"
    resume_value = ("yes" if resume_from is None else resume_from) if resume else None
    return RunStart(echo, main_rank, run_dir, run_dir_from, resume_value, mode)


@exp_app.command("list", help="List the experiment presets with a one-line description each.")
def exp_list() -> None:
    from salt_vla.trainer.experiments import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, cfg in PRESETS.items():
        say(f"{name.ljust(width)}  {cfg.notes}")


@exp_app.command(
    "show", help="Print every key of a preset's resolved config (after any --set overrides)."
)
def exp_show(
    name: str = typer.Argument(..., help="Preset name (see `salt exp list`).", show_default=False),
    sets: list[str] = SetOpt,
) -> None:
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop_config import describe

    cfg = resolve(name, sets)
    say(f"# {name}: {cfg.notes}")
    for line in describe(cfg):
        say(line)


def train_cmd(
    exp: str = typer.Option(
        ..., "--exp", help="Experiment preset (see `salt exp list`).", show_default=False
    ),
    cache: Path | None = CacheOpt,
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose cache (or videos) to use."),
    sets: list[str] = SetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    targets: str | None = typer.Option(
        None,
        "--targets",
        help="`cached` (default: read the store, never run the teacher) or `online` (decode "
        "the videos under --data and run the teacher on every batch; needs --set "
        "teacher_ckpt=PATH or random:ARCH:SEED). Same as --set targets=...",
        show_default=False,
    ),
    wandb: str | None = WandbOpt,
) -> None:
    """Train a stage-2 student (see the command's help)."""
    from salt_vla.paths import resolve_cache_dir, resolve_data_root
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    start = run_start(exp, out, resume, resume_from, wandb)
    cfg = resolve(exp, list(sets) + ([f"targets={targets}"] if targets else []))
    start.say_run_dir()
    cache_dir = data_dir = None
    if cfg.targets == "cached":
        resolved = resolve_cache_dir(cache, data, split)
        cache_dir = resolved.path
    else:
        resolved = resolve_data_root(data)
        data_dir = resolved.path
    if start.main_rank:
        show_resolved("cache" if cfg.targets == "cached" else "data root", resolved)
    run = RunSpec(out=start.run_dir, cache=cache_dir, data=data_dir, split=split,
                  resume=start.resume, wandb=start.wandb)
    train(cfg, run, echo=start.echo)


@teacher_app.command(
    "show",
    help="Without NAME: list the teacher presets. With NAME: print every key of its resolved "
    "config (after any --set overrides).",
)
def teacher_show(
    name: str | None = typer.Argument(
        None, help="Teacher preset (teacher-tiny, teacher-base).", show_default=False
    ),
    sets: list[str] = TeacherSetOpt,
) -> None:
    from salt_vla.trainer.loop_config import describe
    from salt_vla.trainer.teacher_experiments import TEACHER_PRESETS, resolve_teacher

    if name is None:
        width = max(len(n) for n in TEACHER_PRESETS)
        for preset, cfg in TEACHER_PRESETS.items():
            say(f"{preset.ljust(width)}  {cfg.notes}")
        return
    cfg = resolve_teacher(name, sets)
    say(f"# {name}: {cfg.notes}")
    for line in describe(cfg):
        say(line)


@teacher_app.command(
    "train",
    help="Stage 1: train a VideoMAEv2 encoder on the visible tokens + a light decoder over "
    "all tokens to reconstruct the pixels of the masked tubelets (per-patch normalised as "
    "in VideoMAE; raw with --set norm_pix=false, teacher-tiny's setting), on clips decoded "
    "straight from the videos under --data through the preset's view. Same "
    "loop as `salt train`: config.json, metrics.jsonl, ckpt.pt (atomic, every ckpt_every "
    "steps and at the end), exact --resume; unreadable videos are skipped and listed in "
    "RUN_DIR/decode_failures.jsonl. On the last step the encoder is written to "
    "RUN_DIR/teacher.pth (official VideoMAEv2 keys) with its sha256. Multi-GPU: `torchrun "
    "--nproc_per_node N $(which salt) teacher train ...`.",
)
def teacher_train_cmd(
    exp: str = typer.Option(
        ..., "--exp", help="Teacher preset: teacher-tiny (CPU demo) or teacher-base (ViT-B, "
        "16x224). See `salt teacher show`.", show_default=False
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose videos to train on."),
    sets: list[str] = TeacherSetOpt,
    out: Path | None = RunOutOpt,
    resume: bool = ResumeOpt,
    resume_from: str | None = ResumeFromArg,
    wandb: str | None = WandbOpt,
) -> None:
    """Train a stage-1 teacher (see the command's help)."""
    from salt_vla.paths import resolve_data_root
    from salt_vla.trainer.loop import RunSpec
    from salt_vla.trainer.teacher_experiments import resolve_teacher
    from salt_vla.trainer.teacher_train import train_teacher

    start = run_start(exp, out, resume, resume_from, wandb)
    cfg = resolve_teacher(exp, sets)
    start.say_run_dir()
    root = resolve_data_root(data)
    if start.main_rank:
        show_resolved("data root", root)
    run = RunSpec(out=start.run_dir, data=root.path, split=split, resume=start.resume,
                  wandb=start.wandb)
    train_teacher(cfg, run, echo=start.echo)


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

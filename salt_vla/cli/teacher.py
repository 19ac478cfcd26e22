"""``salt teacher``: SALT stage 1 (train, show, export, convert a teacher checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from salt_vla.cli.common import command_line, group, say, show_resolved
from salt_vla.cli.options import (
    ConfigOpt,
    DataOpt,
    KeysOpt,
    ResumeFromArg,
    ResumeOpt,
    RunOutOpt,
    TeacherSetOpt,
    WandbOpt,
)
from salt_vla.cli.run_start import EXIT_CODES_HELP, run_start

app = group(
    "SALT stage 1: train the teacher itself by VideoMAE-style pixel reconstruction "
    "under block masks ('V-Pixel') and export it as a VideoMAEv2 checkpoint that `salt cache "
    "build --teacher` loads."
)


@app.command(
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


@app.command(
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


@app.command(
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
    show_written(res, "--out" if out else "default RUN_DIR/teacher.pth", res.cache_command())


@app.command(
    "convert",
    help="Convert a Hugging Face transformers VideoMAE checkpoint (a save_pretrained directory "
    "or its model.safetensors / pytorch_model.bin; VideoMAEModel, VideoMAEForVideoClassification "
    "or the encoder of VideoMAEForPreTraining) into the official VideoMAEv2 key layout that "
    "`salt cache build --teacher` loads: query/key/value -> attn.qkv, q_bias/v_bias kept, "
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
    show_written(res, "--out", f"{res.cache_command()} --view-preset VIEW")


def show_written(res: Any, origin: str, next_command: str) -> None:
    """The lines both writers of a teacher file print: where it is, its sha256, what next."""
    say(f"weights: {res.path.resolve()}  ({origin})")
    say(f"sha256: {res.sha256}  ({res.sha_path.resolve()})")
    say(f"next: {next_command}")

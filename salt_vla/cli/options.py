"""Command-line options that several commands share, declared once.

A typer option is a default value object, so one declaration serves every command that puts
it in its signature; the help text then says the same thing everywhere.
"""

from __future__ import annotations

import typer

DataOpt = typer.Option(
    None,
    "--data",
    help="Dataset root in the SSv2 layout. Default: $SALT_DATA, else /mnt/ssv2.",
    show_default=False,
)
CacheOpt = typer.Option(
    None,
    "--cache",
    help="Cache directory. Default: $SALT_CACHE, else <data root>/salt-cache/<split>.",
    show_default=False,
)

# --- the view: a preset and the fields a command line may override (salt cache build) ------

ViewPresetOpt = typer.Option(
    "ssv2-16x224",
    "--view-preset",
    help="Named view (frames, sampling, size, augmentation): ssv2-16x224, ssv2-16x224-mv4, "
    "vjepa-16x224-s4, tiny-8x64, tiny-8x64-mv2. The options below override its fields.",
)

ViewNumFramesOpt = typer.Option(
    None, "--frames", help="View: frames per clip (default: the preset's).", show_default=False
)

ViewSizeOpt = typer.Option(
    None, "--size", help="View: output frame side in pixels.", show_default=False
)

ViewSamplingOpt = typer.Option(
    None,
    "--sampling",
    help="View: 'segment' (one frame per equal segment, TSN-style) or 'stride' (every "
    "--frame-step-th frame of a window).",
    show_default=False,
)

ViewFrameStepOpt = typer.Option(
    None, "--frame-step", help="View: frame step of 'stride' sampling.", show_default=False
)

ViewResizeOpt = typer.Option(
    None,
    "--resize",
    help="View: short side before the centre crop (default: --size, i.e. no margin).",
    show_default=False,
)

ViewTemporalJitterOpt = typer.Option(
    None,
    "--temporal-jitter",
    help="View: 0 = deterministic frame positions, 1 = fully random per view.",
    show_default=False,
)

ViewCropScaleOpt = typer.Option(
    None,
    "--crop-scale",
    help="View: area scale range LO,HI of a random square crop per view; 1,1 = centre crop.",
    show_default=False,
)

ViewHflipOpt = typer.Option(
    None,
    "--hflip/--no-hflip",
    help="View: mirror half of the views (leave off for SSv2: its labels say left/right).",
    show_default=False,
)

ViewSeedOpt = typer.Option(
    None, "--view-seed", help="View: seed of the per-view random choices.", show_default=False
)

ViewsOpt = typer.Option(
    None,
    "--views",
    help="Views per video (rows per video); >1 needs jitter or crop-scale to differ.",
    show_default=False,
)


# --- the teacher: one spelling everywhere (salt cache build, salt train --targets online) ----

TeacherOpt = typer.Option(
    None,
    "--teacher",
    metavar="PATH|random:ARCH:SEED",
    help="The frozen VideoMAEv2 teacher: a checkpoint file (.pth/.pt/.safetensors, fine-tuned "
    "or distilled encoder, e.g. vit_b_k710_dl_from_giant.pth; size it with --teacher-arch), or "
    "random:ARCH:SEED, a seeded randomly initialised teacher (tests and the demo), e.g. "
    "random:vit_tiny:0.",
    show_default=False,
)
TeacherArchOpt = typer.Option(
    None,
    "--teacher-arch",
    metavar="ARCH",
    help="Size of a --teacher checkpoint: vit_tiny, vit_small, vit_base, vit_large, vit_huge "
    "or vit_giant (random:ARCH:SEED names its own). Default: vit_base (salt train: the "
    "config's teacher_arch).",
    show_default=False,
)


# --- training runs: salt train and salt teacher train (one loop, one run-directory contract)

ConfigOpt = typer.Option(
    None,
    "--config",
    metavar="FILE",
    help="A config file, TOML (.toml; YAML .yaml/.yml if PyYAML is installed): flat `key = "
    "value` lines, e.g. written by `salt exp show NAME > FILE` and edited. Applied over "
    "--exp's preset (or the config defaults without --exp); --set items win over both.",
    show_default=False,
)
SetOpt = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="Override one config key (repeatable), e.g. --set lr=3e-4 --set betas=0.9,0.99. "
    "Values are type-checked; unknown keys are refused with the list of valid keys (`salt "
    "exp show --keys`).",
    show_default=False,
)

RunOutOpt = typer.Option(
    None,
    "--out",
    metavar="RUN",
    help="Run directory. Default: runs/<name> under the current directory (the config's "
    "name: the preset's unless the file or --set name=... says otherwise).",
    show_default=False,
)
ResumeOpt = typer.Option(
    False,
    "--resume",
    help="Continue the run in --out from its checkpoint, exactly (error if it has none). "
    "Without --exp/--config it takes the config, cache/data and split saved in "
    "RUN/config.json: `--out RUN --resume` is the whole command; --set may then change "
    "runtime keys (workers, log_every, ckpt_every, stop_at, W&B names) and extend a run with "
    "a longer epochs or max_steps: each cosine schedule (lr, weight decay) keeps the value it "
    "has reached and the rest of it is stretched over the new total (a finished run goes "
    "on at min_lr / weight_decay_end; warmup is never stretched). `--resume auto`: continue "
    "if there is a checkpoint, else start fresh. `--resume CKPT`: continue from that "
    "checkpoint file. Without --resume a run directory that already holds a checkpoint is "
    "refused.",
)
ResumeFromArg = typer.Argument(
    None,
    metavar="auto|CKPT",
    help="Only after --resume: `auto` or a checkpoint path.",
    show_default=False,
)
WandbOpt = typer.Option(
    None,
    "--wandb",
    metavar="MODE",
    help="online | offline | disabled. Default: WANDB_MODE if set, else disabled (an API "
    "key alone turns nothing on). Offline runs write under the run directory, no network. "
    "W&B never stops a run: online without a key, or a start that fails or takes over 30 s, "
    "is one warning and offline. Project and run name: --set wandb_project=... --set "
    "wandb_run=...",
    show_default=False,
)
TeacherSetOpt = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="Override one teacher config key (repeatable), e.g. --set epochs=100 --set "
    "mask_strategy=multiblock. Values are type-checked; unknown keys are refused with the "
    "list of valid keys (`salt teacher show --keys`). --set lr=X turns off the batch "
    "scaling (blr).",
    show_default=False,
)
KeysOpt = typer.Option(
    False,
    "--keys",
    help="List every key instead: its type, default (NAME's value when given) and "
    "description.",
)

"""``salt eval``: frozen-encoder probes and intuitive-physics surprise.

The workflows live in the library (:mod:`salt_vla.eval.probe_run`,
:func:`salt_vla.eval.intphys.run_intphys`) so the demo, sweep and report use the same ones.
"""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import fail, group, say, show_resolved
from salt_vla.cli.options import DataOpt

app = group(
    "Evaluate frozen encoders: attentive-probe classification and intuitive-physics "
    "surprise."
)


@app.command(
    "probe",
    help="Frozen-encoder attentive probe (V-JEPA's protocol): the encoder's token features of "
    "every clip (one deterministic view per clip; see docs/probe.md for how this differs from "
    "V-JEPA's multi-clip evaluation) feed a cross-attention pooler with a learned query + "
    "linear classifier, trained with AdamW on the train split; top-1 and top-5 are reported on "
    "the validation split after the last epoch. Features are held in RAM, on disk or streamed "
    "(--features). Results go to RUN_DIR/probe.json (runs) or ./probe-<encoder>.json, unless "
    "--out.",
)
def eval_probe(
    encoder: str = typer.Option(
        ...,
        "--encoder",
        help="RUN_DIR or CKPT (a `salt train` run's student); EXPORT_DIR or ENCODER.safetensors "
        "(a `salt export` output, on its recorded view or any --view-preset shape); "
        "random:ARCH[:SEED] (a randomly "
        "initialised student, ARCH tiny|small|base|large, baseline); teacher:SOURCE (the frozen "
        "VideoMAEv2 teacher's target tokens; SOURCE a checkpoint path sized by --teacher-arch, "
        "random:vit_tiny:0, or a RUN_DIR for the teacher that run trained against).",
        show_default=False,
    ),
    data: Path | None = DataOpt,
    train_split: str = typer.Option("train", "--train-split", help="Split the probe trains on."),
    val_split: str = typer.Option(
        "validation", "--val-split", help="Split the accuracy is reported on."
    ),
    view_preset: str | None = typer.Option(
        None,
        "--view-preset",
        help="View preset for the clips' pixels, as for `salt cache build --view-preset`: "
        "ssv2-16x224, ssv2-16x224-mv4, vjepa-16x224-s4, tiny-8x64, tiny-8x64-mv2. Default: the "
        "run's own view; random: and teacher:PATH encoders have none, so they need it.",
        show_default=False,
    ),
    probe: str = typer.Option(
        "attentive",
        "--probe",
        help="attentive (V-JEPA: one cross-attention block) or attentive4 (V-JEPA 2: three "
        "self-attention blocks over the tokens, then the cross-attention block).",
    ),
    positions: str = typer.Option(
        "none",
        "--positions",
        help="none (V-JEPA's protocol, comparable with published numbers): the frozen tokens "
        "as they are; fixed: add the encoder grid's 3-D sin-cos table, scaled to the tokens' "
        "RMS, before pooling; learned: add a trained table. A position-aware probe reads "
        "where things are from tokens that dropped absolute position (docs/demo.md).",
    ),
    epochs: int = typer.Option(
        20,
        "--epochs",
        help="Probe training epochs. 20 is V-JEPA's setting for full SSv2; a small split "
        "needs many more (the demo's 420 clips use 100): check that the reported probe train "
        "accuracy of a random:ARCH baseline approaches 100%, else the probe is still "
        "underfitting and the comparison measures optimisation, not encoders.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", help="Clips per probe step (and per encoder batch when featurising)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (cosine to 0)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Linear warmup length."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe's init and batch order."),
    teacher_arch: str = typer.Option(
        "vit_base",
        "--teacher-arch",
        help="Size of a teacher:PATH checkpoint (vit_small|vit_base|vit_large|...); ignored "
        "for teacher:random:ARCH:SEED and teacher:RUN_DIR, which name their own.",
    ),
    limit_train: int = typer.Option(
        0, "--limit-train", help="Use only the first N clips of the train split (0: all)."
    ),
    limit_val: int = typer.Option(
        0, "--limit-val", help="Use only the first N clips of the val split (0: all)."
    ),
    feature_cache: Path | None = typer.Option(
        None,
        "--feature-cache",
        help="Keep features on disk here (float16 .npy per split, keyed by encoder + view + "
        "clip list; read through a memory map, reused by later runs) instead of in memory: "
        "clips x tokens x dim x 2 bytes (SSv2 train + validation with a ViT-B at 16x224: 435 GiB).",
        show_default=False,
    ),
    features: str = typer.Option(
        "auto",
        "--features",
        help="Where the probe's features live: memory (computed once into RAM), disk "
        "(computed once into --feature-cache), stream (nothing stored: every clip is decoded "
        "and encoded again each epoch, as V-JEPA's frozen evaluation does), or auto: memory "
        "when they fit in half of the available RAM, disk when --feature-cache has room, "
        "stream otherwise. RAM and disk are checked before anything is allocated.",
    ),
    workers: int = typer.Option(
        2, "--workers", help="Video-decoding processes while featurising, and every epoch "
        "with --features stream (0: in-process)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda."),
    out: Path | None = typer.Option(
        None, "--out", help="Results JSON path (default: see the command help).",
        show_default=False,
    ),
) -> None:
    """Probe a frozen encoder (see the command's help)."""
    from salt_vla.data.view import view_preset as get_view
    from salt_vla.eval.probe import ProbeConfig
    from salt_vla.eval.probe_run import ProbeJob, run_probe
    from salt_vla.paths import resolve_data_root

    cfg = ProbeConfig(kind=probe, positions=positions, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed)
    root = resolve_data_root(data)
    show_resolved("data root", root)
    job = ProbeJob(encoder=encoder, data=root.path, probe=cfg, train_split=train_split,
                   val_split=val_split, view=get_view(view_preset) if view_preset else None,
                   teacher_arch=teacher_arch, limit_train=limit_train, limit_val=limit_val,
                   feature_cache=feature_cache.expanduser() if feature_cache else None,
                   features=features, workers=workers, device=device)
    run_probe(job, out, echo=say)


@app.command(
    "intphys",
    help="Intuitive-physics surprise (V-JEPA's violation-of-expectation test, IntPhys 2's "
    "prediction-model protocol) of a trained run: windows of the run's clip length slide over "
    "each video; the student encodes the first C tubelet time steps and the predictor "
    "predicts the run's frozen-teacher tokens of the rest; surprise = prediction error, "
    "averaged (mean) or maxed (max) over windows and predicted steps. Scores per context C, "
    "overall and per group: pairwise relative accuracy (impossible video more surprising than "
    "its possible twin) and, for IntPhys 2, quadruplet accuracy (a scene's two impossible "
    "videos' summed surprise above the two possible ones'); ties count as wrong. Reads "
    "DATA/pairs.json (`salt data synth --intphys DATA`) or an IntPhys 2 download "
    "(DATA/<split>/metadata.csv + Videos/); scenes with missing or extra rows are listed, not "
    "scored. Results, with every video's error series, go to RUN_DIR/intphys.json "
    "(--random-init: RUN_DIR/intphys-control.json) unless --out. docs/intphys.md.",
)
def eval_intphys(
    run: Path = typer.Option(..., "--run", help="A `salt train` run directory.",
                             show_default=False),
    data: Path = typer.Option(
        ..., "--data", help="pairs.json's directory, or the IntPhys 2 folder holding Main/ and "
        "Debug/.", show_default=False,
    ),
    data_format: str = typer.Option(
        "auto", "--format", help="pairs, intphys2, or auto (pairs.json vs <split>/metadata.csv)."
    ),
    split: str = typer.Option("Main", "--split", help="IntPhys 2 split: Main or Debug."),
    condition: str | None = typer.Option(
        None, "--condition", help="IntPhys 2 only: keep these conditions (comma-separated: "
        "solidity, permanence, immutability, continuity).", show_default=False,
    ),
    difficulty: str | None = typer.Option(
        None, "--difficulty", help="IntPhys 2 only: keep Easy, Medium and/or Hard scenes.",
        show_default=False,
    ),
    camera: str | None = typer.Option(
        None, "--camera", help="IntPhys 2 only: keep Fixed and/or Moving camera scenes.",
        show_default=False,
    ),
    context: str | None = typer.Option(
        None,
        "--context",
        help="Context lengths C in tubelet time steps (token-grid rows; C steps = C x tubelet "
        "frames of a window), comma-separated, each in 1..t-1. Default: t/4, t/2, 3t/4 "
        "(2,4,6 for 16 frames with tubelet 2).",
        show_default=False,
    ),
    report_context: int | None = typer.Option(
        None, "--report-context", help="The context whose scores are the headline (one of "
        "--context). Default: the middle one. Fixed before scoring; all are reported.",
        show_default=False,
    ),
    frame_step: int = typer.Option(
        0,
        "--frame-step",
        help="Source frames between a window's frames. 0: the run's temporal density (its "
        "view's frame_step for stride sampling, else video frames // clip frames).",
    ),
    stride: int = typer.Option(1, "--stride", help="Source frames between window starts."),
    error: str = typer.Option(
        "l1", "--error", help="Per-token error: l1 (mean absolute, V-JEPA) or l2 (mean squared)."
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="Teacher checkpoint (or random:ARCH:SEED) when the one recorded by the run's cache "
        "moved; it must have the recorded sha256.",
        show_default=False,
    ),
    random_init: int | None = typer.Option(
        None, "--random-init", help="SEED: score the run's architecture at random init instead "
        "of its weights, same teacher and videos (the chance control).", show_default=False,
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    limit: int = typer.Option(
        0, "--limit", help="Score only the first N scenes (pairs layout: pairs); 0: all."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda."),
    out: Path | None = typer.Option(
        None, "--out", help="Results JSON path (default: see the command help).",
        show_default=False,
    ),
) -> None:
    """Score intuitive-physics surprise of a trained run (see the command's help)."""
    from salt_vla.eval.intphys import run_intphys
    from salt_vla.eval.intphys_data import SceneFilter

    say(f"run: {run}  (from --run)")
    say(f"data: {data}  (from --data)")
    try:
        contexts = tuple(int(c) for c in context.split(",") if c.strip()) if context else None
    except ValueError:
        raise fail(f"--context {context!r}: expected comma-separated integers, e.g. "
                   "2,4,6") from None
    filters = SceneFilter.parse(condition=condition, difficulty=difficulty, camera=camera)
    run_intphys(run, data, contexts, format=data_format, split=split, filters=filters,
                report_context=report_context, frame_step=frame_step, stride=stride,
                error=error, teacher=teacher, random_init=random_init, batch_size=batch_size,
                limit=limit, device=device, out=out, echo=say)

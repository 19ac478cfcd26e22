"""``salt sweep``, ``salt status``, ``salt report`` and ``salt export``: running, watching,
comparing and exporting training runs."""

from __future__ import annotations

from pathlib import Path

import typer

from salt_vla.cli.common import fail, say

SWEEP_HELP = (
"Run a queue of training runs with decision rules, e.g. the built-in `seed` sweep: "
    "baseline (the reference) -> exp1 -> exp3 if exp1 beats the baseline, else exp2 -> the "
    "best config for --final-epochs. Decisions use a smoothed metric (mean normalised loss "
    "over the last K logged steps, compared at a common step; or probe top-1), never one "
    "batch. Each run is `salt train --resume auto` in a subprocess writing SWEEP_DIR/<run>/ "
    "(log in train.log); the queue state is SWEEP_DIR/sweep.json, so re-running the same "
    "command after a crash resumes it. Ctrl-C asks the running run to checkpoint and stop. "
    "Spec format: `salt sweep seed --show-spec`. Exit code 0 when every stage finished; 1 "
    "when a run failed or was stopped; 130 / 143 when the sweep itself got SIGINT / SIGTERM."
)
STATUS_HELP = (
"Is a run alive? For a run directory: alive/stalled/dead/finished (from its "
    "heartbeat.json: pid alive on this host and heartbeat fresh), step/total, last and "
    "smoothed losses, clips/s over the run (clips trained / wall time of its logged "
    "intervals), ETA at that rate, last checkpoint, peak GPU memory. For a sweep directory: "
    "every stage, its decision and whether the sweep process runs. A folder of runs: each. "
    "Exit code: 0 healthy (running, or finished with finite losses); 1 stalled, dead, failed, "
    "stopped or a sweep that stopped early; 2 ended with a non-finite loss. (`salt train` "
    "itself exits 130 / 143 when SIGINT / SIGTERM stopped it after its checkpoint.)"
)
REPORT_HELP = (
"Compare runs: a Markdown table (config differences, best and final smoothed "
    "normalised loss, probe top-1 from RUN/probe*.json, each run's clips/s over its training "
    "time as `salt status` shows it, peak GPU memory) and PNG plots of loss, normalised "
    "loss and learning rate vs step for all runs on shared axes, "
    "written beside the report as <stem>-loss.png, <stem>-norm_loss.png, <stem>-lr.png."
)
EXPORT_HELP = (
"Export a run's student encoder for use outside salt-vla (e.g. a robot policy). Writes a "
    "directory (default RUN_DIR/encoder): model.safetensors (timm ViT key names), config.json "
    "(architecture, view, token grid, provenance: run, step, checkpoint/teacher sha256, store "
    "identity) and README.md (a model card with the run's probe results); every file 0644. "
    "--out FILE.safetensors writes one self-contained file instead (config in its metadata, "
    "FILE.json beside it). Load either with `salt_vla.load_encoder(path)` (needs only torch, "
    "timm, safetensors: `pip install salt-vla`): forward(video) -> (tokens [B,N,D], pooled "
    "[B,D]) for uint8 [B,T,H,W,3] frames or normalised float [B,3,T,H,W], of the training "
    "shape or another one. `salt eval probe --encoder PATH` probes it. See docs/export.md."
)


def sweep_cmd(
    spec: str = typer.Argument(
        ..., help="A TOML spec file (YAML if PyYAML is installed), or `seed` (built in).",
        show_default=False,
    ),
    sweep_dir: Path | None = typer.Option(
        None, "--dir", help="Sweep directory (runs + queue state). Default: runs/sweep-<name>.",
        show_default=False,
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Print the plan, each run's command and the decision each rule takes given the "
        "runs finished so far; launch and write nothing.",
    ),
    show_spec: bool = typer.Option(
        False, "--show-spec", help="Print the spec as TOML (for `seed`: to copy and edit)."
    ),
    final_epochs: int | None = typer.Option(
        None, "--final-epochs", help="`seed` only: epochs of the final run (default 15).",
        show_default=False,
    ),
    reference: Path | None = typer.Option(
        None, "--reference",
        help="`seed` only: an existing finished baseline run directory to compare against "
        "instead of training the baseline.", show_default=False,
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="--cache passed to every run (replaces the spec's `cache`).",
        show_default=False,
    ),
    data: Path | None = typer.Option(
        None, "--data", help="--data passed to every run (replaces the spec's `data`).",
        show_default=False,
    ),
    sets: list[str] = typer.Option(
        [], "--set",
        help="KEY=VALUE added to every run's overrides (repeatable); give the same ones when "
        "resuming.", show_default=False,
    ),
    launcher: str | None = typer.Option(
        None, "--launcher",
        help="Command prefix for every run, e.g. 'torchrun --nproc_per_node 8' (replaces the "
        "spec's `launcher`).", show_default=False,
    ),
    poll: float = typer.Option(60.0, "--poll", help="Seconds between progress lines."),
) -> None:
    from salt_vla.runs.sweep import format_plan, run_sweep
    from salt_vla.runs.sweep_spec import load_spec, seed_spec_text

    if show_spec:
        if spec == "seed":
            say(seed_spec_text(final_epochs or 15).rstrip())
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise fail(f"sweep spec {path}: no such file")
            say(path.read_text().rstrip())
        return
    overrides = {"cache": str(cache) if cache else None, "data": str(data) if data else None,
                 "set": list(sets), "launcher": launcher}
    parsed = load_spec(spec, final_epochs, reference, overrides)
    where = sweep_dir if sweep_dir is not None else Path("runs") / f"sweep-{parsed.name}"
    say(f"sweep dir: {where.resolve()}  "
        f"({'--dir' if sweep_dir is not None else 'default runs/sweep-<name>'})")
    if dry_run:
        for line in format_plan(parsed, where):
            say(line)
        return
    code = run_sweep(parsed, where, echo=say, poll=poll)
    if code:
        raise typer.Exit(code)


def status_cmd(
    path: Path = typer.Argument(
        Path("runs"), metavar="PATH", help="RUN_DIR, SWEEP_DIR, or a folder of either.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts)."),
    stall_after: float | None = typer.Option(
        None, "--stall-after",
        help="Seconds without a heartbeat after which a run counts as stalled. Default: 5x "
        "the median time between its logged steps, at least 600.", show_default=False,
    ),
    window: int = typer.Option(20, "--window", help="Logged values averaged for 'smoothed'."),
) -> None:
    import json

    from salt_vla.runs.status import format_status, status_json, status_of

    result = status_of(path.expanduser(), stall_after, window)
    if as_json:
        say(json.dumps(status_json(result), indent=1))
    else:
        for line in format_status(result):
            say(line)
    raise typer.Exit(result["exit_code"])


def report_cmd(
    runs: list[Path] = typer.Argument(
        ..., metavar="PATH", help="What to compare, as `salt status` takes it: run "
        "directories, sweep directories (all their runs) or folders of either.",
        show_default=False,
    ),
    out: Path = typer.Option(Path("report.md"), "--out", help="Markdown file to write."),
    window: int = typer.Option(
        20, "--window", help="Logged values averaged for the smoothed numbers and curves."
    ),
) -> None:
    from salt_vla.runs.report import write_report

    rep = write_report([r.expanduser() for r in runs], out.expanduser(), window)
    say(f"report: {rep.markdown.resolve()}  ({'--out' if out != Path('report.md') else 'default'})")
    for p in rep.plots:
        say(f"plot: {p.resolve()}")


def export_cmd(
    run: Path = typer.Argument(..., help="RUN_DIR (its ckpt.pt) or a checkpoint file.",
                               show_default=False),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (new, empty, or an earlier export to replace), "
        "or a FILE.safetensors for the single-file export. Default: RUN_DIR/encoder.",
        show_default=False,
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Stored weight type: float32, bfloat16 or float16."
    ),
) -> None:
    import torch

    from salt_vla.export.write import export_encoder

    types = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in types:
        raise fail(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    say(f"run: {run}  (from RUN)")
    res = export_encoder(run, out, types[dtype])
    c = res.config
    a, p, g = c["architecture"], c["provenance"], c["grid"]
    say(f"encoder: {a['description']}; salt-vla size {a['student_size']!r}, "
        f"{res.num_params / 1e6:.2f} M parameters, {c['dtype']}; step {p['step']}/"
        f"{p['total_steps']} of exp {p['exp']}")
    say(f"input: {c['input']['uint8']} or normalised float; tokens {g['num_tokens']} (grid "
        f"{g['t']}x{g['h']}x{g['w']}); other shapes: {c['positions']['time']} positions in "
        f"time, {c['positions']['space']} in space")
    say(f"export: {res.path.resolve()}  ({'--out' if out else 'default RUN_DIR/encoder'})")
    say(f"weights: {res.weights.resolve()}")
    say(f"config: {res.config_path.resolve()}")
    if res.card is not None:
        say(f"model card: {res.card.resolve()}  ({res.probes} probe result(s) from the run)")
    say(f"next: salt eval probe --encoder {res.path} --data DATA_ROOT")

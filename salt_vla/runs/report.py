"""`salt report`: compare runs side by side — a Markdown table and loss / normalised loss /
learning-rate plots with every run on the same axes.

Numbers are smoothed (means over ``window`` logged values, each itself a mean over
``log_every`` steps): the best smoothed normalised loss is the lowest such mean anywhere in
the run, never one lucky batch. Probe results are read from ``RUN/probe*.json`` (written by
`salt eval probe`). Plots use matplotlib's Agg canvas directly, so no display and no global
backend switch are needed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.files import atomic_path, write_text_atomic
from salt_vla.runs.rundir import (
    PROBE_GLOB,
    RunFiles,
    read_run,
    throughput,
)
from salt_vla.runs.smoothing import DEFAULT_WINDOW, rolling_best, smoothed
from salt_vla.runs.status import RunStatusError, folder_children, path_kind, run_status
from salt_vla.runs.sweep_dir import read_state

PLOTS = (("loss", "loss"), ("norm_loss", "normalised loss"), ("lr", "learning rate"))
# Keys that differ between runs without changing what they compute.
IGNORED_KEYS = frozenset({"notes", "wandb_run", "wandb_project", "num_workers",
                          "prefetch_factor", "log_every", "ckpt_every"})


class ReportError(SaltError, ValueError):
    """Nothing to report on (e.g. a path that is not a run directory)."""


@dataclass
class RunSummary:
    """One row of the comparison table."""

    label: str
    run: RunFiles
    state: str
    step: int
    total: int
    best_norm: tuple[float, int] | None
    final_norm: float | None
    final_loss: float | None
    clips_per_s: float | None
    gpu_peak_gib: float | None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_probes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{file stem: {"top1", "top5", "kind"}}`` for every ``probe*.json`` in the run dir
    (files that are not probe records are left out)."""
    # Imported here: the probe module pulls in torch, which a loss table does not need.
    from salt_vla.eval.probe_run import read_probe_result

    out = {}
    for path in sorted(run_dir.glob(PROBE_GLOB)):
        data = read_probe_result(path)
        if data is not None:
            probe = data.get("probe")
            out[path.stem] = {"top1": float(data["top1"]), "top5": data.get("top5"),
                              "kind": probe.get("kind", "") if isinstance(probe, dict) else ""}
    return out


def summarize(run_dir: Path | str, label: str = "", window: int = DEFAULT_WINDOW) -> RunSummary:
    """The table row of one run."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    st = run_status(run_dir, window=window)
    norm = run.values("norm_loss")
    final_norm = smoothed(norm, window)
    final_loss = smoothed(run.values("loss"), window)
    gpu = run.values("gpu_peak_gib")
    return RunSummary(
        label=label or run_dir.name, run=run, state=st.state, step=st.step, total=st.total,
        best_norm=rolling_best(norm, window),
        final_norm=final_norm[0] if final_norm else None,
        final_loss=final_loss[0] if final_loss else None,
        clips_per_s=throughput(run.records).clips_per_s,  # the run's, as `salt status` says
        gpu_peak_gib=max(v for _, v in gpu) if gpu else None,
        probes=read_probes(run_dir),
    )


def labels_for(run_dirs: list[Path]) -> list[str]:
    """Run directory names, with the parent added where two names collide."""
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
            for p in run_dirs]


def config_differences(runs: list[RunSummary]) -> list[tuple[str, list[Any]]]:
    """``(key, value per run)`` for config keys whose values differ between the runs."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.run.config if k not in keys]
    out = []
    for k in keys:
        if k in IGNORED_KEYS:
            continue
        values = [r.run.config.get(k, "-") for r in runs]
        if any(v != values[0] for v in values[1:]):
            out.append((k, values))
    return out


def _fmt(v: float | None, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _cell(v: Any) -> str:
    text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return text.replace("|", "\\|")


def plot_metric(
    runs: list[RunSummary], key: str, title: str, path: Path, window: int
) -> Path | None:
    """One PNG: ``key`` against steps for every run on shared axes (faint: each logged
    value; solid: the running mean over ``window``). None when no run logged ``key``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for i, r in enumerate(runs):
        pts = [(s, v) for s, v in r.run.values(key) if math.isfinite(v)]
        if not pts:
            continue
        color = f"C{i % 10}"
        steps = [s for s, _ in pts]
        values = [v for _, v in pts]
        if key == "lr":
            ax.plot(steps, values, color=color, label=r.label)
        else:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            run_mean = [statistics.fmean(values[max(0, j - window + 1): j + 1])
                        for j in range(len(values))]
            ax.plot(steps, run_mean, color=color, label=f"{r.label} (mean of {window})")
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(title)
    ax.set_title(f"{title} vs step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


@dataclass(frozen=True)
class Report:
    markdown: Path
    plots: list[Path]
    runs: list[RunSummary]


def expand_runs(paths: list[Path | str]) -> list[Path]:
    """Run directories, from whatever `salt status` accepts: a run directory, a sweep
    directory (its launched runs, in order) or a folder of either (each, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        kind = path_kind(p)
        if kind == "sweep":
            stages = (read_state(p) or {}).get("stages", {}).values()
            out += [Path(r["run_dir"]) for r in stages
                    if r.get("run_dir") and Path(r["run_dir"]).is_dir()]
        elif kind == "folder":
            out += expand_runs(list(folder_children(p)))
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def write_report(
    run_dirs: list[Path | str], out: Path | str, window: int = DEFAULT_WINDOW
) -> Report:
    """Write the Markdown report to ``out`` and its PNGs beside it (``<stem>-loss.png``,
    ``<stem>-norm_loss.png``, ``<stem>-lr.png``). A sweep directory stands for its runs."""
    try:
        dirs = expand_runs(run_dirs)
    except RunStatusError as e:
        raise ReportError(str(e)) from None
    if not dirs:
        raise ReportError("no run directories given (or the sweep launched none yet)")
    runs = [summarize(d, label, window) for d, label in zip(dirs, labels_for(dirs), strict=True)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = []
    for key, title in PLOTS:
        p = plot_metric(runs, key, title, out.with_name(f"{out.stem}-{key}.png"), window)
        if p is not None:
            plots.append(p)
    write_text_atomic(out, "\n".join(report_lines(runs, plots, window)) + "\n")
    return Report(out, plots, runs)


def report_lines(runs: list[RunSummary], plots: list[Path], window: int) -> list[str]:
    """The Markdown text."""
    probe_names = sorted({k for r in runs for k in r.probes})
    # Runs of different lengths compared at the same training budget: the shortest's end.
    common = min((r.run.values("norm_loss")[-1][0] for r in runs if r.run.values("norm_loss")),
                 default=None)
    lines = [
        "# salt-vla run comparison",
        "",
        f"{len(runs)} runs, {time.strftime('%Y-%m-%d %H:%M')}. Smoothed = mean of {window} "
        "logged values (each a mean over `log_every` steps); *best* is the lowest such mean "
        "anywhere in the run, *final* the last one. Normalised loss = loss / loss of "
        "predicting the mean target (1.0 = no better than the mean). clips/s = clips trained "
        "over the wall time of the run's logged intervals (start-up before the first step "
        "and time between a stop and its resume not counted): the figure `salt status` and "
        "the console's `(run ...)` show.",
        "",
        "| run | exp | state | steps | best smoothed norm loss (at step) | final smoothed "
        f"norm loss | smoothed norm loss at step {common} | final smoothed loss | "
        + "".join(f"{p} top-1 | " for p in probe_names)
        + "clips/s (run) | peak GPU GiB |",
        "|" + "---|" * (10 + len(probe_names)),
    ]
    for r in runs:
        best = f"{_fmt(r.best_norm[0])} ({r.best_norm[1]})" if r.best_norm else "-"
        probes = "".join(
            f"{100 * r.probes[p]['top1']:.2f}% | " if p in r.probes else "- | "
            for p in probe_names
        )
        at = smoothed(r.run.values("norm_loss"), window, common) if common else None
        lines.append(
            f"| {r.label} | {r.run.config.get('name', '-')} | {r.state} | "
            f"{r.step}/{r.total or '?'} | {best} | {_fmt(r.final_norm)} | "
            f"{_fmt(at[0] if at else None)} | "
            f"{_fmt(r.final_loss)} | {probes}{_fmt(r.clips_per_s, '.1f')} | "
            f"{_fmt(r.gpu_peak_gib, '.2f')} |"
        )
    diffs = config_differences(runs)
    lines += ["", "## Config differences", ""]
    if diffs:
        lines += ["| key | " + " | ".join(r.label for r in runs) + " |",
                  "|" + "---|" * (1 + len(runs))]
        lines += [f"| {k} | " + " | ".join(_cell(v) for v in values) + " |"
                  for k, values in diffs]
    else:
        lines.append("The runs' configs are identical (apart from logging/worker settings).")
    lines += ["", "## Run directories", ""]
    lines += [f"- {r.label}: `{r.run.run_dir}`" for r in runs]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return lines

"""The demo's results: the three-way probe table over seeds, the quality bar, and one PNG.

Reads what `salt demo` left under its output directory (``seed-S/probe-*.json``, the two
runs' ``metrics.jsonl``, ``seed-S/timings.json``), so the table always shows every seed
run so far with that ``--out``, each seed's value and their mean. The PNG (matplotlib's Agg
canvas, no display needed) has the stage-1 and stage-2 normalised-loss curves on the left
and the probe top-1 bars (mean over seeds, one dot per seed, chance as a line) on the right.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError
from salt_vla.eval.probe_run import read_probe_result
from salt_vla.files import atomic_path, write_json_atomic, write_text_atomic
from salt_vla.runs.rundir import loss_curve

# Probe rows of the table, in order: file key -> label.
ENCODERS: dict[str, str] = {
    "random": "random-init student",
    "teacher": "teacher",
    "salt": "SALT student",
}
BAR_SEEDS = 3  # the quality bar is defined as a mean over this many seeds


class DemoReportError(SaltError, ValueError):
    """Nothing to report: no finished seed under the demo directory."""


@dataclass
class SeedResult:
    """One seed's probe results (``top1[key]`` in [0, 1]) and where they came from."""

    seed: int
    dir: Path
    top1: dict[str, float]
    probes: dict[str, dict[str, Any]]  # key -> the probe JSON
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(k in self.top1 for k in ENCODERS)


@dataclass(frozen=True)
class QualityBar:
    """Issue 7's bar: SALT >= random-init + ``points`` (means over seeds) and >= teacher."""

    seeds: list[int]
    mean: dict[str, float]
    points: float
    margin_random: float  # SALT - random-init, in points
    margin_teacher: float  # SALT - teacher, in points
    passed: bool

    def line(self) -> str:
        verdict = "MET" if self.passed else "NOT MET"
        n = len(self.seeds)
        note = "" if n >= BAR_SEEDS else f"; only {n} of the {BAR_SEEDS} seeds the bar asks for"
        return (
            f"quality bar {verdict}: SALT student {100 * self.mean['salt']:.1f}% vs random-init "
            f"{100 * self.mean['random']:.1f}% ({self.margin_random:+.1f} points, need "
            f">= +{self.points:g}) and vs teacher {100 * self.mean['teacher']:.1f}% "
            f"({self.margin_teacher:+.1f} points, need >= 0); mean top-1 over seeds "
            f"{', '.join(map(str, self.seeds))}{note}"
            + ("" if self.passed else "; what limits it at demo size: docs/demo.md")
        )

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "mean_top1": self.mean, "points": self.points,
                "margin_random_points": self.margin_random,
                "margin_teacher_points": self.margin_teacher, "passed": self.passed,
                "seeds_asked": BAR_SEEDS}


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object
    (a half-written or foreign file is treated as absent, and its stage is redone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def seed_dirs(out: Path | str) -> list[tuple[int, Path]]:
    """``(seed, OUT/seed-S)`` for every seed directory under ``out``, by seed."""
    found = []
    for d in Path(out).glob("seed-*"):
        try:
            found.append((int(d.name[len("seed-"):]), d))
        except ValueError:
            continue
    return sorted(found)


def collect_results(out: Path | str) -> list[SeedResult]:
    """Every seed under ``out`` with at least one probe result."""
    results = []
    for seed, d in seed_dirs(out):
        probes = {k: p for k in ENCODERS if (p := read_probe_result(d / f"probe-{k}.json"))}
        if not probes:
            continue
        results.append(SeedResult(
            seed, d, {k: float(p["top1"]) for k, p in probes.items()}, probes,
            read_json_object(d / "timings.json") or {},
        ))
    return results


def quality_bar(results: list[SeedResult], points: float = 15.0) -> QualityBar | None:
    """The bar over the seeds that have all three probes (None when no seed has them)."""
    done = [r for r in results if r.complete]
    if not done:
        return None
    mean = {k: statistics.fmean(r.top1[k] for r in done) for k in ENCODERS}
    margin_random = 100 * (mean["salt"] - mean["random"])
    margin_teacher = 100 * (mean["salt"] - mean["teacher"])
    # Compared in rounded points so a tie printed as +0.0 is not a failure by 1e-16.
    passed = round(margin_random, 6) >= points and round(margin_teacher, 6) >= 0
    return QualityBar([r.seed for r in done], mean, points, margin_random, margin_teacher,
                      passed)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table_lines(results: list[SeedResult]) -> list[str]:
    """The three-way table as Markdown: one row per encoder, one column per seed, the mean."""
    seeds = [r.seed for r in results]
    head = "| encoder | " + "".join(f"seed {s} | " for s in seeds) + "mean | std |"
    lines = [head, "|" + "---|" * (3 + len(seeds))]
    for key, label in ENCODERS.items():
        values = [r.top1.get(key) for r in results]
        have = [v for v in values if v is not None]
        mean = statistics.fmean(have) if have else None
        sd = statistics.stdev(have) if len(have) > 1 else None
        what = _encoder_note(results, key)
        lines.append(f"| {label}{what} | " + "".join(f"{_pct(v)} | " for v in values)
                     + f"{_pct(mean)} | {'-' if sd is None else f'{100 * sd:.1f}'} |")
    return lines


def _encoder_note(results: list[SeedResult], key: str) -> str:
    for r in results:
        p = r.probes.get(key)
        if p:
            return f" ({p.get('what', '')})" if p.get("what") else ""
    return ""


def protocol_lines(results: list[SeedResult]) -> list[str]:
    """What the numbers mean: clips, classes, chance, the probe recipe, per seed timings."""
    first = next((p for r in results for p in r.probes.values()), None)
    if first is None:
        return []
    pc = first.get("probe", {})
    lines = [
        f"Top-1 on the held-out `validation` split ({first['val_clips']} clips, "
        f"{first['num_classes']} classes, chance {100 / first['num_classes']:.1f}%); the "
        f"probe trains on the `train` split ({first['train_clips']} clips). Encoders are "
        f"frozen; probe: {pc.get('kind', '?')}, {pc.get('epochs', '?')} epochs, lr "
        f"{pc.get('lr', '?')}, batch {pc.get('batch_size', '?')}, weight decay "
        f"{pc.get('weight_decay', '?')}; the same recipe and seed for all three.",
    ]
    for r in results:
        t = r.timings.get("stages", {})
        if t:
            parts = ", ".join(f"{k} {v['seconds']:.0f} s" + (" (reused)" if v.get("reused") else "")
                              for k, v in t.items())
            total = r.timings.get("total_seconds")
            lines.append(f"seed {r.seed} stage times: {parts}"
                         + (f"; {total:.0f} s in all" if total is not None else ""))
    return lines


def plot_demo(results: list[SeedResult], path: Path | str) -> Path:
    """Left: normalised loss vs step of stage 1 (teacher) and stage 2 (SALT) per seed.
    Right: probe top-1 per encoder (bar: mean over seeds; dots: each seed; dashed: chance)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_bar = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, r in enumerate(results):
        for run, style, name in (("teacher", "--", "stage 1 teacher"),
                                 ("run", "-", "stage 2 SALT student")):
            pts = [(s, v) for s, v in loss_curve(r.dir / run, "norm_loss") if math.isfinite(v)]
            if pts:
                ax_loss.plot([s for s, _ in pts], [v for _, v in pts], style, color=f"C{i % 10}",
                             label=f"{name}, seed {r.seed}")
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("normalised loss (1 = predicting the mean)")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss")
    ax_loss.grid(True, alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=7)
    keys = list(ENCODERS)
    for j, key in enumerate(keys):
        values = [100 * r.top1[key] for r in results if key in r.top1]
        if not values:
            continue
        mean = statistics.fmean(values)
        ax_bar.bar(j, mean, color=f"C{j}", alpha=0.75)
        # Above the highest seed's dot, so the label never hides one.
        ax_bar.text(j, max(values) + 2, f"{mean:.1f}%", ha="center", fontsize=9)
        ax_bar.plot([j] * len(values), values, "o", color="black", markersize=4)
    first = next((p for r in results for p in r.probes.values()), None)
    if first:
        ax_bar.axhline(100 / first["num_classes"], color="grey", linestyle="--",
                       label="chance")
        ax_bar.legend(fontsize=8, loc="upper left")
    ax_bar.set_xticks(range(len(keys)), [ENCODERS[k] for k in keys])
    ax_bar.set_ylim(0, 100)
    ax_bar.set_ylabel("probe top-1 on validation (%)")
    seeds = ", ".join(str(r.seed) for r in results)
    ax_bar.set_title(f"frozen-encoder probe (seeds {seeds})")
    ax_bar.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


@dataclass(frozen=True)
class DemoReport:
    markdown: Path
    json: Path
    png: Path
    lines: list[str]
    bar: QualityBar | None


def write_demo_report(out: Path | str, points: float = 15.0) -> DemoReport:
    """Write ``OUT/demo.md``, ``OUT/demo.json`` and ``OUT/demo.png`` for every seed under
    ``out``; returns them with the table lines (to print) and the quality bar."""
    out = Path(out)
    results = collect_results(out)
    if not results:
        raise DemoReportError(f"no probe results under {out}/seed-*/: run `salt demo --out "
                              f"{out}` first")
    bar = quality_bar(results, points)
    lines = table_lines(results)
    notes = protocol_lines(results)
    md = ["# salt demo: frozen-encoder probe, three ways", "", *lines, "",
          *(f"- {n}" for n in notes), ""]
    md += [f"**{bar.line()}**" if bar else "quality bar: not all three probes have run", "",
           "![loss curves and probe bars](demo.png)", ""]
    md_path, json_path = out / "demo.md", out / "demo.json"
    png = plot_demo(results, out / "demo.png")
    write_text_atomic(md_path, "\n".join(md))
    payload = {
        "seeds": {str(r.seed): {"top1": r.top1, "dir": str(r.dir), "timings": r.timings,
                                "probes": {k: {x: p.get(x) for x in
                                               ("encoder", "top1", "top5", "top5_k", "val_clips",
                                                "train_clips", "num_classes", "probe", "what",
                                                "final_train_top1")}
                                           for k, p in r.probes.items()}}
                  for r in results},
        "quality_bar": bar.to_dict() if bar else None,
    }
    write_json_atomic(json_path, payload)
    return DemoReport(md_path, json_path, png, lines + [""] + notes, bar)


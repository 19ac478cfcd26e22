"""The demo's results: the three-way probe table under both probes, the learning curves,
the intphys chance control, the quality bar over seeds, and one PNG.

Reads what `salt demo` left under its output directory (``seed-S/probe-*.json``,
``seed-S/curve.json``, ``seed-S/intphys-*.json``, the two runs' ``metrics.jsonl``,
``seed-S/timings.json``), so the tables always show every seed run so far with that
``--out``, each seed's value and their mean. The PNG (matplotlib's Agg canvas, no display
needed) has the stage-1 and stage-2 normalised-loss curves, the probe top-1 bars under each
probe (mean over seeds, one dot per seed, chance as a line) and the learning curves (probe
top-1 against the fraction of each stage's steps).

Two probes, because the trained encoders drop absolute position from their output tokens
(nothing in stage 1 or 2 asks them to keep it: the decoder and the predictor add positions
back) while a random-init ViT keeps its position table: a position-free probe (V-JEPA's)
then compares "what the tokens say" with "where they are", and a position-aware one gives
every encoder the same positions. The bar must hold under both (docs/demo.md).
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
# Probe position modes the report knows, in order: ProbeConfig.positions -> label.
PROBES: dict[str, str] = {
    "none": "no positions",
    "fixed": "+ fixed positions",
    "learned": "+ learned positions",
}
BAR_SEEDS = 3  # the quality bar is defined as a mean over this many seeds
# The bar holds only if it holds under each of these probes: V-JEPA's position-free probe and
# a position-aware one, so that changing the probe alone cannot pass it.
BAR_PROBES: tuple[str, ...] = ("none", "fixed")
CURVE_FILE = "curve.json"  # seed-S/curve.json: the learning-curve points (demo.py writes it)
INTPHYS_FILES: dict[str, str] = {  # what -> seed-S file (demo.py writes them)
    "salt": "intphys-salt.json",
    "random": "intphys-random.json",
}
INTPHYS_LABELS: dict[str, str] = {"salt": "SALT run", "random": "random-init control"}


def probe_file(d: Path, key: str, positions: str) -> Path:
    """``probe-KEY.json`` for the position-free probe, else ``probe-KEY-POSITIONS.json``."""
    return d / (f"probe-{key}.json" if positions == "none" else f"probe-{key}-{positions}.json")


def result_key(key: str, positions: str) -> str:
    """``SeedResult.top1`` key: the encoder key, plus ``@POSITIONS`` for a position-aware
    probe (``salt``, ``salt@fixed``)."""
    return key if positions == "none" else f"{key}@{positions}"


class DemoReportError(SaltError, ValueError):
    """Nothing to report: no finished seed under the demo directory."""


@dataclass
class SeedResult:
    """One seed's probe results (``top1[result_key(key, positions)]`` in [0, 1]), its
    learning-curve points, its intphys scores, and where they came from."""

    seed: int
    dir: Path
    top1: dict[str, float]
    probes: dict[str, dict[str, Any]]  # result key -> the probe JSON
    timings: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)  # see :func:`read_curve`
    intphys: dict[str, dict[str, Any]] = field(default_factory=dict)  # see read_intphys

    def complete_under(self, positions: str) -> bool:
        return all(result_key(k, positions) in self.top1 for k in ENCODERS)

    @property
    def complete(self) -> bool:
        return self.complete_under("none")


@dataclass(frozen=True)
class ProbeBar:
    """The bar under one probe: SALT >= random-init + ``points`` and >= teacher (means over
    the seeds that have all three rows under this probe)."""

    positions: str
    seeds: list[int]
    mean: dict[str, float]
    points: float
    margin_random: float  # SALT - random-init, in points
    margin_teacher: float  # SALT - teacher, in points

    @property
    def passed(self) -> bool:
        # Compared in rounded points so a tie printed as +0.0 is not a failure by 1e-16.
        return round(self.margin_random, 6) >= self.points and round(self.margin_teacher, 6) >= 0

    def part(self) -> str:
        return (f"{PROBES.get(self.positions, self.positions)}: SALT student "
                f"{100 * self.mean['salt']:.1f}% vs random-init {100 * self.mean['random']:.1f}% "
                f"({self.margin_random:+.1f} points, need >= +{self.points:g}) and vs teacher "
                f"{100 * self.mean['teacher']:.1f}% ({self.margin_teacher:+.1f} points, need "
                f">= 0) [{'met' if self.passed else 'not met'}]")

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "seeds": self.seeds, "mean_top1": self.mean,
                "margin_random_points": self.margin_random,
                "margin_teacher_points": self.margin_teacher, "passed": self.passed}


@dataclass(frozen=True)
class QualityBar:
    """Issue 7's bar, under every probe of ``probes`` (issue 13): met only if each probe has
    its three rows and passes; a probe without results counts as not met."""

    seeds: list[int]
    points: float
    probes: tuple[str, ...]
    parts: dict[str, ProbeBar]  # positions -> its bar (missing: no seed has the three rows)

    @property
    def passed(self) -> bool:
        return all(p in self.parts and self.parts[p].passed for p in self.probes)

    @property
    def mean(self) -> dict[str, float]:
        """The position-free probe's means (the headline numbers)."""
        first = self.parts.get("none") or next(iter(self.parts.values()))
        return first.mean

    def line(self) -> str:
        verdict = "MET" if self.passed else "NOT MET"
        n = len(self.seeds)
        note = "" if n >= BAR_SEEDS else f"; only {n} of the {BAR_SEEDS} seeds the bar asks for"
        parts = [self.parts[p].part() if p in self.parts else
                 f"{PROBES.get(p, p)}: not run (the bar needs it)" for p in self.probes]
        return (f"quality bar {verdict} (must hold under both probes): " + "; ".join(parts)
                + f"; mean top-1 over seeds {', '.join(map(str, self.seeds))}{note}"
                + ("" if self.passed else "; what limits it at demo size: docs/demo.md"))

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "points": self.points, "probes": list(self.probes),
                "by_probe": {p: b.to_dict() for p, b in self.parts.items()},
                "passed": self.passed, "seeds_asked": BAR_SEEDS}


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


def read_curve(d: Path) -> list[dict[str, Any]]:
    """The learning-curve points of seed directory ``d``: ``[{"stage": "teacher"|"salt",
    "step", "total", "final", "top1": {positions: top-1}}]`` (from ``curve.json`` and the
    probe records it names; a point whose records are missing is left out)."""
    listing = read_json_object(d / CURVE_FILE) or {}
    points = []
    for pt in listing.get("points", []):
        top1 = {pos: float(rec["top1"]) for pos, name in pt.get("probes", {}).items()
                if (rec := read_probe_result(d / name))}
        if top1:
            points.append({"stage": pt["stage"], "step": int(pt["step"]),
                           "total": int(pt["total"]), "final": bool(pt.get("final")),
                           "top1": top1})
    return points


def intphys_summary(record: dict[str, Any]) -> dict[str, Any] | None:
    """The headline of an intphys record: the reported context's pairwise accuracies."""
    try:
        c = str(record["reported"]["context"])
        pw = record["scores"][c]["pairwise"]
        return {"context": int(c), "mean": float(pw["mean"]["accuracy"]),
                "max": float(pw["max"]["accuracy"]), "pairs": int(pw["mean"]["pairs"]),
                "step": record.get("step"), "weights": record.get("weights", {}).get("kind")}
    except (KeyError, TypeError, ValueError):
        return None


def read_intphys(d: Path) -> dict[str, dict[str, Any]]:
    """``{"salt"|"random": intphys_summary}`` of seed directory ``d`` (what exists)."""
    out = {}
    for what, name in INTPHYS_FILES.items():
        rec = read_json_object(d / name)
        if rec and (summary := intphys_summary(rec)):
            out[what] = summary
    return out


def collect_results(out: Path | str) -> list[SeedResult]:
    """Every seed under ``out`` with at least one probe result."""
    results = []
    for seed, d in seed_dirs(out):
        probes = {result_key(k, pos): p for k in ENCODERS for pos in PROBES
                  if (p := read_probe_result(probe_file(d, k, pos)))}
        if not probes:
            continue
        results.append(SeedResult(
            seed, d, {k: float(p["top1"]) for k, p in probes.items()}, probes,
            read_json_object(d / "timings.json") or {}, read_curve(d), read_intphys(d),
        ))
    return results


def quality_bar(results: list[SeedResult], points: float = 15.0,
                probes: tuple[str, ...] = BAR_PROBES) -> QualityBar | None:
    """The bar over the seeds that have all three rows, under each of ``probes`` (None when
    no seed has the three position-free rows)."""
    if not any(r.complete for r in results):
        return None
    parts = {}
    for pos in probes:
        done = [r for r in results if r.complete_under(pos)]
        if not done:
            continue
        mean = {k: statistics.fmean(r.top1[result_key(k, pos)] for r in done) for k in ENCODERS}
        parts[pos] = ProbeBar(pos, [r.seed for r in done], mean, points,
                              100 * (mean["salt"] - mean["random"]),
                              100 * (mean["salt"] - mean["teacher"]))
    seeds = sorted({s for p in parts.values() for s in p.seeds})
    return QualityBar(seeds, points, tuple(probes), parts)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _probes_run(results: list[SeedResult]) -> list[str]:
    """The probe position modes any seed has results for, in :data:`PROBES` order."""
    return [pos for pos in PROBES
            if any(result_key(k, pos) in r.top1 for r in results for k in ENCODERS)]


def _stats_cells(values: list[float | None]) -> str:
    have = [v for v in values if v is not None]
    mean = statistics.fmean(have) if have else None
    sd = statistics.stdev(have) if len(have) > 1 else None
    return ("".join(f"{_pct(v)} | " for v in values)
            + f"{_pct(mean)} | {'-' if sd is None else f'{100 * sd:.1f}'} |")


def table_lines(results: list[SeedResult]) -> list[str]:
    """The three-way table as Markdown: one row per (encoder, probe), one column per seed,
    the mean and the standard deviation over seeds."""
    seeds = [r.seed for r in results]
    head = "| encoder | probe | " + "".join(f"seed {s} | " for s in seeds) + "mean | std |"
    lines = [head, "|" + "---|" * (4 + len(seeds))]
    for pos in _probes_run(results):
        for key, label in ENCODERS.items():
            rk = result_key(key, pos)
            lines.append(f"| {label}{_encoder_note(results, rk)} | {PROBES[pos]} | "
                         + _stats_cells([r.top1.get(rk) for r in results]))
    return lines


def _curve_rows(results: list[SeedResult]) -> dict[tuple[str, str, float], dict[int, float]]:
    """``(stage, positions, fraction of the stage's steps) -> {seed: top-1}``."""
    rows: dict[tuple[str, str, float], dict[int, float]] = {}
    for r in results:
        for pt in r.curve:
            frac = round(pt["step"] / max(1, pt["total"]), 3)
            for pos, v in pt["top1"].items():
                rows.setdefault((pt["stage"], pos, frac), {})[r.seed] = v
    return rows


def curve_lines(results: list[SeedResult]) -> list[str]:
    """The learning curves as Markdown: the teacher at its stage-1 checkpoints and the SALT
    student at its stage-2 checkpoints, under each probe (empty when no seed has points)."""
    rows = _curve_rows(results)
    if not rows:
        return []
    steps: dict[tuple[str, float], set[str]] = {}
    for r in results:
        for pt in r.curve:
            frac = round(pt["step"] / max(1, pt["total"]), 3)
            steps.setdefault((pt["stage"], frac), set()).add(f"{pt['step']}/{pt['total']}")
    seeds = [r.seed for r in results]
    lines = ["| learning curve | step | probe | " + "".join(f"seed {s} | " for s in seeds)
             + "mean | std |", "|" + "---|" * (5 + len(seeds))]
    order = {"teacher": 0, "salt": 1}
    for stage, pos, frac in sorted(rows, key=lambda k: (list(PROBES).index(k[1]),
                                                        order.get(k[0], 2), k[2])):
        by_seed = rows[(stage, pos, frac)]
        label = "stage-1 teacher" if stage == "teacher" else "SALT student (stage 2)"
        lines.append(f"| {label} | {', '.join(sorted(steps[(stage, frac)]))} | {PROBES[pos]} | "
                     + _stats_cells([by_seed.get(s) for s in seeds]))
    return lines


def intphys_lines(results: list[SeedResult]) -> list[str]:
    """The intphys chance control as Markdown: pairwise accuracy of the SALT run and of its
    random-init student + predictor on the same pairs (empty when no seed scored it)."""
    if not any(r.intphys for r in results):
        return []
    seeds = [r.seed for r in results]
    first = next(v for r in results for v in r.intphys.values())
    lines = [f"| intphys pairwise accuracy (C={first['context']}, {first['pairs']} pairs) | "
             "surprise | " + "".join(f"seed {s} | " for s in seeds) + "mean | std |",
             "|" + "---|" * (4 + len(seeds))]
    for what, label in INTPHYS_LABELS.items():
        for variant in ("mean", "max"):
            lines.append(f"| {label} | {variant} | " + _stats_cells(
                [r.intphys[what][variant] if what in r.intphys else None for r in results]))
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
        f"{pc.get('weight_decay', '?')}; the same recipe and seed for all three. "
        "`no positions`: the frozen tokens as they are (V-JEPA's protocol); `+ fixed "
        "positions`: the probe adds the encoder grid's 3-D sin-cos table, scaled to the "
        "tokens' RMS, before pooling (the same positions for every encoder).",
    ]
    if any(r.curve for r in results):
        lines.append(
            "Learning curves: the same probe recipe on the teacher's stage-1 checkpoints and "
            "the SALT student's stage-2 checkpoints (the last point of each is the table's "
            "row); intermediate points skip the per-epoch validation pass, which changes "
            "only the probe's history, not its top-1.")
    if any(r.intphys for r in results):
        lines.append(
            "intphys: pairwise relative accuracy (the impossible video more surprising than "
            "its possible twin; chance 50%) of the SALT run's student + predictor against "
            "its frozen teacher, and of the same architecture at random init (the chance "
            "control), on the same synthetic possible/impossible pairs; docs/intphys.md.")
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
    Middle: probe top-1 per encoder under each probe (bar: mean over seeds; dots: each seed;
    dashed: chance). Right: the learning curves (probe top-1 vs the fraction of each stage's
    steps, mean over seeds; the random-init student's top-1 as a dotted line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_bar, ax_curve = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
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
    _plot_bars(ax_bar, results)
    _plot_curves(ax_curve, results)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _plot_bars(ax: Any, results: list[SeedResult]) -> None:
    probes = _probes_run(results)
    keys = list(ENCODERS)
    width = 0.8 / max(1, len(probes))
    for i, pos in enumerate(probes):
        for j, key in enumerate(keys):
            values = [100 * r.top1[rk] for r in results if (rk := result_key(key, pos)) in r.top1]
            if not values:
                continue
            x = j + (i - (len(probes) - 1) / 2) * width
            mean = statistics.fmean(values)
            ax.bar(x, mean, width=width * 0.95, color=f"C{j}", alpha=0.85 - 0.4 * i,
                   hatch="//" if i else None, label=PROBES[pos] if j == 0 else None)
            # Above the highest seed's dot, so the label never hides one.
            ax.text(x, max(values) + 2, f"{mean:.0f}", ha="center", fontsize=8)
            ax.plot([x] * len(values), values, "o", color="black", markersize=3)
    first = next((p for r in results for p in r.probes.values()), None)
    if first:
        ax.axhline(100 / first["num_classes"], color="grey", linestyle="--", label="chance")
    if ax.patches or ax.lines:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xticks(range(len(keys)), [ENCODERS[k] for k in keys])
    ax.set_ylim(0, 100)
    ax.set_ylabel("probe top-1 on validation (%)")
    seeds = ", ".join(str(r.seed) for r in results)
    ax.set_title(f"frozen-encoder probe, hatched: + positions (seeds {seeds})")
    ax.grid(True, axis="y", alpha=0.3)


def _plot_curves(ax: Any, results: list[SeedResult]) -> None:
    rows = _curve_rows(results)
    styles = {"none": "-", "fixed": "--", "learned": ":"}
    colours = {"teacher": "C1", "salt": "C2"}
    for stage, label in (("teacher", "teacher (stage 1)"), ("salt", "SALT student (stage 2)")):
        for pos in PROBES:
            pts = sorted((frac, statistics.fmean(v.values())) for (st, p, frac), v in rows.items()
                         if st == stage and p == pos)
            if pts:
                ax.plot([f for f, _ in pts], [100 * v for _, v in pts], styles[pos], marker="o",
                        color=colours[stage], label=f"{label}, {PROBES[pos]}")
    for pos in PROBES:
        values = [r.top1[rk] for r in results if (rk := result_key("random", pos)) in r.top1]
        if values and rows:
            ax.axhline(100 * statistics.fmean(values), color="C0", linestyle=styles[pos],
                       alpha=0.6, label=f"random-init, {PROBES[pos]}")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 100)
    ax.set_xlabel("fraction of the stage's optimiser steps")
    ax.set_ylabel("probe top-1 on validation (%)")
    ax.set_title("learning curves (mean over seeds)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=6, loc="lower right")


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
    curve, intphys = curve_lines(results), intphys_lines(results)
    notes = protocol_lines(results)
    md = ["# salt demo: frozen-encoder probe, three ways, two probes", "", *lines, ""]
    if curve:
        md += ["## Learning curves", "", *curve, ""]
    if intphys:
        md += ["## intphys: the SALT run and its random-init control", "", *intphys, ""]
    md += [*(f"- {n}" for n in notes), ""]
    md += [f"**{bar.line()}**" if bar else "quality bar: not all three probes have run", "",
           "![loss curves, probe bars and learning curves](demo.png)", ""]
    md_path, json_path = out / "demo.md", out / "demo.json"
    png = plot_demo(results, out / "demo.png")
    write_text_atomic(md_path, "\n".join(md))
    payload = {
        "seeds": {str(r.seed): {"top1": r.top1, "dir": str(r.dir), "timings": r.timings,
                                "probes": {k: {x: p.get(x) for x in
                                               ("encoder", "top1", "top5", "top5_k", "val_clips",
                                                "train_clips", "num_classes", "probe", "what",
                                                "final_train_top1", "positions")}
                                           for k, p in r.probes.items()},
                                "curve": r.curve, "intphys": r.intphys}
                  for r in results},
        "quality_bar": bar.to_dict() if bar else None,
    }
    write_json_atomic(json_path, payload)
    printed = lines + ([""] + curve if curve else []) + ([""] + intphys if intphys else [])
    return DemoReport(md_path, json_path, png, printed + [""] + notes, bar)

"""Named `salt demo` regimes, run through :func:`salt_vla.demo.run_seed`, with one results table.

Issue 13 asks for a demo regime (<= 15 minutes for one seed on 2 CPU cores) in which the SALT
student beats the random-init student by >= 15 points and the teacher, under the
position-free probe AND a position-aware one, mean of 3 seeds. Each regime below is one
hypothesis: a :class:`~salt_vla.demo.DemoConfig` (synthetic data, stage-1 ``--set``s,
stage-2 ``--set``s, probe) per seed. Every run is the real pipeline (data, stage 1, cache,
verify, stage 2, probes), so a figure here is what `salt demo` with that config prints.

Reuse: a regime whose data (and teacher, and cache) are exactly those of a regime already run
for the same seed links that regime's directories instead of recomputing them (checked by
config equality, never by name); the wall-time column then counts the stage seconds of the
run that computed them, so it is always the cost of one seed from scratch.

    python benchmarks/demo_regimes.py run --out OUT --regime NAME [--regime ...] --seed 0 ...
    python benchmarks/demo_regimes.py table --out OUT [--regime ...]   # markdown over seeds
    python benchmarks/demo_regimes.py list

Results: one JSON line per (regime, seed) appended to ``OUT/results.jsonl`` (top-1 per
encoder and probe, stage seconds, CPU seconds, load average, the exact config, git commit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from salt_vla.data.synth import SynthConfig
from salt_vla.demo import DemoConfig, read_json_object, result_key, run_seed, seed_dir
from salt_vla.eval.probe import ProbeConfig

ENCODERS = ("random", "teacher", "salt")
POSITIONS = ("none", "fixed")
RESULTS = "results.jsonl"
SHARED = ("data", "teacher", "cache")  # stage directories a regime may take from another

# --- regimes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Regime:
    """One hypothesis: ``make(seed)`` -> the DemoConfig of that seed; ``what`` says why."""

    name: str
    what: str
    make: Callable[[int], DemoConfig]


NUISANCE = {"noise": 40.0, "jitter": 3.0, "flicker": 0.1}


def demo_cfg(seed: int, *, synth: dict[str, Any] | None = None, labeled: int = 420,
             val: int = 92, unlabeled: int = 0, teacher_sets: tuple[str, ...] = (),
             train_sets: tuple[str, ...] = (), probe: dict[str, Any] | None = None,
             positions: tuple[str, ...] = POSITIONS) -> DemoConfig:
    """A full-size demo config: ``labeled`` probe-train clips, ``val`` validation clips and
    ``unlabeled`` clips in the synthetic test split (when > 0, stages 1-2 train on those
    instead of the labeled clips). Splits are exact whenever 4 divides each count."""
    sizes = (labeled, val, unlabeled)
    synth_kw = dict(videos=sum(sizes), classes=4, frames=16, height=64, width=64, seed=seed,
                    splits=tuple(float(n) for n in sizes))
    if sizes == (420, 92, 0):  # the demo's own 600-video split (420 / 92 / 88)
        synth_kw.update(videos=600, splits=(0.7, 0.15, 0.15))
    synth_kw.update(synth or {})
    return DemoConfig(
        seed=seed, synth=SynthConfig(**synth_kw), teacher_sets=teacher_sets,
        train_sets=train_sets, probe=ProbeConfig(**{"epochs": 100, "seed": seed,
                                                    **(probe or {})}),
        probe_positions=positions, pretrain_split="test" if unlabeled else "train",
        workers=2,
        # the screens compare end points: no learning-curve or intphys stage (the demo's
        # own runs have them; these keys never make a regime directory unusable)
        curve_points=1, teacher_curve_points=1, intphys_pairs=0,
    )


# The row "(a) + (g) + (d)": teacher 8 epochs (210 steps), random truncation,
# student 60 epochs (3,150 steps).
BUDGET_D = (("epochs=8", "mask_truncate=random"), ("epochs=60",))


def _regimes() -> dict[str, Regime]:
    quick = ("max_steps=4", "warmup_steps=1", "batch_size=4", "log_every=2", "num_workers=0")
    r: list[Regime] = [
        Regime("smoke", "harness check only: 40 videos, 4 steps per stage (numbers mean nothing)",
               lambda s: replace(demo_cfg(s, labeled=16, val=16, unlabeled=8,
                                          teacher_sets=quick, train_sets=quick,
                                          probe={"epochs": 2, "batch_size": 8}), workers=1)),
        Regime("demo", "the demo as it is (clean synthetic clips)", lambda s: demo_cfg(s)),
        Regime("a", "(a) per-frame nuisance: noise 40, camera shake 3 px, flicker 0.1",
               lambda s: demo_cfg(s, synth=NUISANCE)),
        Regime("adg", "(a) + (g) teacher random truncation + (d) teacher 8 epochs, student 60",
               lambda s: demo_cfg(s, synth=NUISANCE, teacher_sets=BUDGET_D[0],
                                  train_sets=BUDGET_D[1])),
    ]
    r += [
        Regime("T", "candidate: (a) nuisance + (e) 1,200 unlabeled clips, 300 val + (c) a "
               "temporal-split group in both stages + (g) random truncation + (d) teacher 300 "
               "steps, student 2,000 + (f) learned gain on the student's position table",
               lambda s: demo_cfg(s, synth=NUISANCE, val=300, unlabeled=1200,
                                  teacher_sets=T_TEACHER, train_sets=T_STUDENT,
                                  probe={"val_every": 0})),
    ]

    def t_variant(name: str, what: str, teacher: tuple[str, ...] = (),
                  student: tuple[str, ...] = (), base_teacher: tuple[str, ...] | None = None,
                  base_student: tuple[str, ...] | None = None, **kw: Any) -> Regime:
        """Regime T with stage settings added to (or replacing) T's."""
        ts = (T_TEACHER if base_teacher is None else base_teacher) + teacher
        ss = (T_STUDENT if base_student is None else base_student) + student
        args = dict(synth=NUISANCE, val=300, unlabeled=1200, probe={"val_every": 0})
        args.update(kw)
        return Regime(name, what, lambda s: demo_cfg(s, teacher_sets=ts, train_sets=ss,
                                                     **args))

    r += [
        t_variant("T-noctx", "T + (f) predictor without context positions (the student's "
                  "tokens must say where they are)", student=("predictor_ctx_pos=false",)),
        t_variant("T-c", "T + stage-2 targets centred per clip (the clip code removed: the "
                  "loss asks only where things are at each time step)",
                  student=("target_center=clip",)),
        t_variant("T-k1", "T with the stage-2 temporal group predicting the other 3 time "
                  "steps from ONE tubelet (first or last): motion only inside its tokens",
                  student=("mask_temporal_max_context=1",)),
        t_variant("L", "T on a set with more nuisance a pixel model cannot ignore: also a "
                  "smooth per-frame light field (std 0.3) and per-frame colour gains (0.15)",
                  synth={**NUISANCE, "lighting": 0.3, "colour_jitter": 0.15}),
        t_variant("T-plain2", "T's teacher; stage 2 = the tiny preset at 2,000 steps (ratio "
                  "masks only, tail truncation, no position gain)",
                  base_student=("max_steps=2000",)),
        t_variant("T-mb1", "T with a stage 1 of multiblock masks only (no temporal group)",
                  base_teacher=("max_steps=300", "mask_truncate=random")),
    ]
    return {x.name: x for x in r}


# The candidate regime's stage settings (the ablations below change one thing each).
T_TEACHER = ("max_steps=300", "mask_temporal_group=true", "mask_truncate=random")
T_STUDENT = ("max_steps=2000", "mask_temporal_group=true", "mask_truncate=random",
             "student_pos_gain=true")


REGIMES = _regimes()


# --- reuse of stage outputs across regimes -----------------------------------------------


def _same(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


STAGE_KEYS: dict[str, tuple[str, ...]] = {
    # what a stage's output depends on (besides the seed, which is in the synth config)
    "data": ("synth",),
    "teacher": ("synth", "teacher", "teacher_sets", "pretrain_split"),
    "cache": ("synth", "teacher", "teacher_sets", "pretrain_split"),
}


def _complete(d: Path, stage: str) -> bool:
    if stage == "data":
        m = read_json_object(d / "data" / "synth.json")
        return bool(m and m.get("complete"))
    if stage == "teacher":
        return (d / "teacher" / "teacher.pth.json").is_file()
    m = read_json_object(d / "cache" / "cache.json")
    return bool(m) and (d / "timings.json").is_file()


def link_shared(out: Path, regime: str, cfg: DemoConfig, echo: Callable[[str], None]
                ) -> dict[str, str]:
    """Link ``data``/``teacher``/``cache`` (and the features of an identical data set) from
    another regime's directory for this seed whose config says they are the same; returns
    ``{stage: source regime}``."""
    want = cfg.to_dict()
    d = seed_dir(out / regime, cfg.seed)
    d.mkdir(parents=True, exist_ok=True)
    linked: dict[str, str] = {}
    for other in sorted(p for p in out.iterdir() if p.is_dir() and p.name != regime):
        od = seed_dir(other, cfg.seed)
        have = read_json_object(od / "demo-config.json")
        if have is None:
            continue
        for stage in SHARED:
            if stage in linked or (d / stage).exists() or (d / stage).is_symlink():
                continue
            if _same(want, have, STAGE_KEYS[stage]) and _complete(od, stage) and not (
                    od / stage).is_symlink():
                (d / stage).symlink_to((od / stage).resolve(), target_is_directory=True)
                linked[stage] = other.name
                if stage == "data" and (od / "features").is_dir() and not (
                        d / "features").exists():
                    # features are keyed by encoder + split ids: safe only on identical data
                    (d / "features").symlink_to((od / "features").resolve())
    # Probe results of encoders whose inputs are linked are the same computation: copy them
    # (the demo's probe stage re-checks encoder key and probe recipe before reusing one).
    src_for = {"random": linked.get("data"), "teacher": linked.get("teacher")}
    for enc, src in src_for.items():
        if src is None:
            continue
        for f in seed_dir(out / src, cfg.seed).glob(f"probe-{enc}*.json"):
            if not (d / f.name).exists():
                (d / f.name).write_bytes(f.read_bytes())
                linked[f"probe:{f.stem}"] = src
    for stage, src in linked.items():
        echo(f"[{regime} seed {cfg.seed}] {stage}: linked from regime {src}")
    return linked


def _stage_seconds(out: Path, regime: str, seed: int, linked: dict[str, str]
                   ) -> dict[str, float]:
    """Each stage's seconds when it was computed (a linked stage: in its source regime)."""
    own = (read_json_object(seed_dir(out / regime, seed) / "timings.json") or {}).get(
        "stages", {})
    secs = {k: float(v["seconds"]) for k, v in own.items()}
    for stage, src in linked.items():
        if stage.startswith("probe:"):  # a copied probe result: count its training time
            p = read_json_object(seed_dir(out / regime, seed) / f"{stage[6:]}.json") or {}
            secs["probe"] = secs.get("probe", 0.0) + float(p.get("seconds", 0.0))
            continue
        theirs = (read_json_object(seed_dir(out / src, seed) / "timings.json") or {}).get(
            "stages", {})
        if stage in theirs:
            secs[stage] = float(theirs[stage]["seconds"])
        if stage == "cache" and "verify" in theirs:
            secs["verify"] = float(theirs["verify"]["seconds"])
    return secs


def _clip_mean_share(cache: Path) -> dict[str, float] | None:
    """(g) How much of the cached targets' variance is the clip mean, the position mean
    and the rest (clip x position), on up to 512 rows."""
    import numpy as np

    from salt_vla.cache.latent_store import LatentStore

    try:
        store = LatentStore(cache)
    except Exception:  # noqa: BLE001 - a diagnostic, never a reason to stop
        return None
    rows = store.valid_rows[:512]
    x = np.asarray(store.get(rows), dtype=np.float64)  # [n, N, D]
    centred = x - x.mean(axis=(0, 1), keepdims=True)
    total = float((centred ** 2).mean())
    clip = centred.mean(axis=1, keepdims=True)
    pos = centred.mean(axis=0, keepdims=True)
    return {"clip_mean": float((clip ** 2).mean()) / total,
            "position": float((pos ** 2).mean()) / total,
            "clip_x_position": float(((centred - clip - pos) ** 2).mean()) / total}


def _val_features(d: Path, key: str) -> tuple[Any, list[str], list[int]] | None:
    """The cached validation features ``[n, N, D]`` of encoder ``key``'s probe in ``d``."""
    import numpy as np

    probe = read_json_object(d / f"probe-{key}.json")
    if not probe or not (d / "features").is_dir():
        return None
    want = {k: v for k, v in probe["encoder"].items() if k != "name"}
    for entry in (d / "features").iterdir():
        meta = read_json_object(entry / "meta.json")
        if entry.name.startswith("validation-") and meta and meta.get("encoder") == want:
            return np.load(entry / "features.npy"), meta["ids"], meta["labels"]
    return None


def readouts(d: Path) -> dict[str, dict[str, float]]:
    """What the frozen tokens hold, read linearly (ridge, half the validation clips fit, half
    scored), per encoder: ``object_top`` = share of (clip, time step) whose highest-scoring
    token holds the moving object's centre (chance ~8%), ``object_auc`` = AUC of
    object-vs-other tokens, ``time_acc`` = time step of a token read from its content
    (chance 25%). Tokens are clip-centred first (the clip code says nothing about either)."""
    import numpy as np

    from salt_vla.data.synth import SynthConfig, _scene
    from salt_vla.data.view import view_preset
    from salt_vla.demo import VIEW

    manifest = read_json_object(d / "data" / "synth.json")
    if not manifest:
        return {}
    cfg = SynthConfig.from_dict(manifest["config"])
    n_view = view_preset(VIEW).num_frames
    frames = [int((i + 0.5) * cfg.frames / n_view) for i in range(n_view)]  # segment centres
    out: dict[str, dict[str, float]] = {}
    for key in ENCODERS:
        got = _val_features(d, key)
        if got is None:
            continue
        f, ids, labels = got
        f = f.astype(np.float64)
        n, tokens, dim = f.shape
        t_steps, hw = 4, tokens // 4
        side = int(round(hw ** 0.5))
        patch = cfg.height // side
        y = np.zeros((n, tokens))
        for i, (vid, lab) in enumerate(zip(ids, labels, strict=True)):
            sp = _scene(cfg, int(vid) - 1, int(lab)).sprites[-1]  # the acting object
            for t in range(t_steps):
                for fr in frames[2 * t: 2 * t + 2]:
                    py = int(np.clip(sp.cy[fr] // patch, 0, side - 1))
                    px = int(np.clip(sp.cx[fr] // patch, 0, side - 1))
                    y[i, t * hw + py * side + px] = 1
        x = f - f.mean(axis=1, keepdims=True)
        h = n // 2
        xtr, xte = x[:h].reshape(-1, dim), x[h:].reshape(-1, dim)
        reg = 1e-2 * len(xtr) * xtr.var() * np.eye(dim)
        gram = xtr.T @ xtr + reg
        ytr, yte = y[:h].reshape(-1), y[h:].reshape(-1)
        score = xte @ np.linalg.solve(gram, xtr.T @ (ytr - ytr.mean()))
        ranks = np.empty(len(score))
        ranks[np.argsort(score)] = np.arange(len(score))
        pos = yte == 1
        auc = (ranks[pos].mean() - (pos.sum() - 1) / 2) / (~pos).sum()
        s3, y3 = score.reshape(n - h, t_steps, hw), yte.reshape(n - h, t_steps, hw)
        top = np.take_along_axis(y3, s3.argmax(-1)[..., None], -1).mean()
        steps = np.repeat(np.arange(t_steps), hw)
        w = np.linalg.solve(gram, xtr.T @ np.eye(t_steps)[np.tile(steps, h)])
        time_acc = ((xte @ w).argmax(1) == np.tile(steps, n - h)).mean()
        out[key] = {"object_top": float(top), "object_auc": float(auc),
                    "time_acc": float(time_acc)}
    return out


def _final_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for key in ("loss_norm", "norm_loss", "loss"):
            if key in rec:
                last = float(rec[key])
                break
    return last


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_one(out: Path, regime: Regime, seed: int, echo: Callable[[str], None] = print
            ) -> dict[str, Any]:
    cfg = regime.make(seed)
    linked = link_shared(out, regime.name, cfg, echo)
    load0, cpu0, t0 = os.getloadavg(), _cpu_seconds(), time.perf_counter()
    run = run_seed(out / regime.name, cfg, echo=lambda s: echo(f"[{regime.name}] {s}"))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    d = run.dir
    secs = _stage_seconds(out, regime.name, seed, linked)
    rec = {
        "regime": regime.name, "what": regime.what, "seed": seed, "top1": run.top1,
        "stages": secs, "one_seed_seconds": sum(secs.values()), "this_wall_seconds": wall,
        "this_cpu_seconds": cpu, "load_before": load0, "load_after": os.getloadavg(),
        "linked": linked, "teacher_final_loss": _final_loss(d / "teacher"),
        "student_final_loss": _final_loss(d / "run"),
        "target_variance": _clip_mean_share(d / "cache"),
        "readouts": readouts(d),
        "config": cfg.to_dict(), "commit": _git_commit(), "when": time.strftime("%F %T"),
        "torch_threads": _threads(),
    }
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


# --- the table ---------------------------------------------------------------------------


def load_results(out: Path) -> list[dict[str, Any]]:
    """The latest record of each (regime, seed)."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    path = out / RESULTS
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                latest[(rec["regime"], rec["seed"])] = rec
    return list(latest.values())


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _one_seed_seconds(out: Path, rec: dict[str, Any]) -> float:
    """One seed's cost from the stage timings as they are on disk now (a stage whose first
    invocation was interrupted gets its time from that invocation's log, by hand)."""
    secs = _stage_seconds(out, rec["regime"], rec["seed"], rec.get("linked", {}))
    return sum(secs.values()) if secs else float(rec["one_seed_seconds"])


def table(out: Path, regimes: list[str] | None = None) -> str:
    """Markdown: per regime and probe, per-seed top-1 of random / teacher / SALT, means,
    SALT's margins, one-seed wall time."""
    recs = load_results(out)
    names = regimes or list(dict.fromkeys(r["regime"] for r in recs))
    lines = ["| regime | probe | seeds | random-init | teacher | SALT | SALT - random | "
             "SALT - teacher | one-seed wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        rows = sorted((r for r in recs if r["regime"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        positions = [p for p in ("none", "fixed", "learned")
                     if all(result_key("salt", p) in r["top1"] for r in rows)]
        wall = _fmt([_one_seed_seconds(out, r) for r in rows])
        for p in positions:
            vals = {e: [100 * r["top1"][result_key(e, p)] for r in rows] for e in ENCODERS}
            per_seed = {e: " / ".join(f"{v:.1f}" for v in vals[e]) for e in ENCODERS}
            margin_r = [s - r for s, r in zip(vals["salt"], vals["random"], strict=True)]
            margin_t = [s - t for s, t in zip(vals["salt"], vals["teacher"], strict=True)]
            seeds = ",".join(str(r["seed"]) for r in rows)
            cells = [f"{per_seed[e]} ({_fmt(vals[e])})" if len(rows) > 1 else per_seed[e]
                     for e in ENCODERS]
            lines.append(f"| {name} | {p} | {seeds} | {' | '.join(cells)} | "
                         f"{_fmt(margin_r)} | {_fmt(margin_t)} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="run regimes x seeds, append results")
    run_p.add_argument("--out", type=Path, required=True)
    run_p.add_argument("--regime", action="append", required=True, choices=sorted(REGIMES))
    run_p.add_argument("--seed", type=int, action="append", default=None)
    run_p.add_argument("--threads", type=int, default=0,
                       help="torch intra-op threads (0: torch's default). On a shared machine "
                            "1 thread can be many times faster than 2 that wait on each other")
    tab_p = sub.add_parser("table", help="markdown table of the results so far")
    tab_p.add_argument("--out", type=Path, required=True)
    tab_p.add_argument("--regime", action="append", default=None)
    sub.add_parser("list", help="the regimes and what each tests")
    diag_p = sub.add_parser("readouts", help="linear read-outs of the frozen tokens of a run")
    diag_p.add_argument("--out", type=Path, required=True)
    diag_p.add_argument("--regime", action="append", required=True)
    diag_p.add_argument("--seed", type=int, action="append", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for r in REGIMES.values():
            print(f"{r.name:12s} {r.what}")
        return
    if args.cmd == "readouts":
        for name in args.regime:
            for seed in args.seed or [0]:
                for key, r in readouts(seed_dir(args.out / name, seed)).items():
                    print(f"{name} seed {seed} {key:8s} object top-token "
                          f"{100 * r['object_top']:.0f}% (AUC {r['object_auc']:.3f}), time "
                          f"step from content {100 * r['time_acc']:.0f}%")
        return
    if args.cmd == "table":
        print(table(args.out, args.regime))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name in args.regime:
        for seed in args.seed or [0]:
            rec = run_one(args.out, REGIMES[name], seed)
            print(f"== {name} seed {seed}: " + ", ".join(
                f"{k} {100 * v:.1f}" for k, v in rec["top1"].items())
                + f"; one seed {rec['one_seed_seconds']:.0f} s", flush=True)
    print(table(args.out, args.regime))


if __name__ == "__main__":
    sys.exit(main())

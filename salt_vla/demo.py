"""`salt demo`: the whole two-stage SALT recipe on synthetic data, on a CPU, in minutes.

For each seed, under ``OUT/seed-S/``:

1. ``data``    synthetic SSv2-layout videos whose classes are time-reversal pairs
               (:mod:`salt_vla.data.synth`: no single frame reveals the class);
2. ``teacher`` stage 1: the ``teacher-tiny`` preset trains a VideoMAEv2 ViT-tiny by pixel
               reconstruction and exports ``teacher/teacher.pth``;
3. ``cache``   the frozen teacher's latents + the student's frames of the train split;
4. ``verify``  the full cache check (checksums, finite values, view hash); a problem stops;
5. ``train``   stage 2: the ``tiny`` preset trains the student + predictor on the cache;
6. ``probe``   the frozen-encoder attentive probe, trained on ``train`` and scored on the
               held-out ``validation`` split, for (a) a random-init student, (b) the
               teacher, (c) the SALT student, with one recipe and one seed for all three;
7. ``report``  ``OUT/demo.md`` + ``OUT/demo.json`` (the table over every seed under OUT,
               with the quality bar) and ``OUT/demo.png`` (loss curves + probe bars).

Everything is a library call in this process (the synthetic-data and cache decoders use
their own worker processes), and every stage is timed and says what it does. Re-running with
the same ``--out`` reuses what is finished: complete data, an exported teacher, committed
cache shards, a finished (or resumable) training run, probe results whose encoder and recipe
are unchanged. ``seed-S/demo-config.json`` records the configuration; a different one in
the same directory is refused rather than silently mixed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.data.synth import SynthConfig
from salt_vla.errors import SaltError
from salt_vla.eval.demo_report import DemoReport, read_json_object, write_demo_report
from salt_vla.eval.probe import ProbeConfig
from salt_vla.files import write_json_atomic
from salt_vla.runs.rundir import TEACHER_EXPORT_NAME, checkpoint_path

VIEW = "tiny-8x64"  # the view of the tiny presets: 8 frames x 64 px -> 4 x 4 x 4 tokens
TEACHER_EXP = "teacher-tiny"
TRAIN_EXP = "tiny"
TEACHER_ARCH = "vit_tiny"
STAGES = ("data", "teacher", "cache", "verify", "train", "probe", "report")
RUNTIME_KEYS = frozenset({"workers"})  # DemoConfig keys a re-run may change


class DemoError(SaltError, RuntimeError):
    """A demo stage that cannot run or whose output is wrong; the message says the fix."""


@dataclass(frozen=True)
class DemoConfig:
    """What one seed of the demo runs (see :func:`demo_config` for the two presets).

    ``teacher``: ``"stage1"`` trains it (``teacher_sets`` override the ``teacher-tiny``
    preset); ``"random"`` uses the seeded random ``random:vit_tiny:SEED`` instead (no stage
    1; the baseline the stage-1 teacher should beat). ``train_sets`` override the ``tiny``
    preset. ``workers``: decoding processes for synthesis, the cache build and features.

    ``probe_positions``: the probe's ``positions`` modes to run for every encoder (``none``
    is V-JEPA's position-free protocol; ``fixed``/``learned`` add the grid's position table,
    see :mod:`salt_vla.eval.probe`); each encoder's features are computed once and shared.
    ``pretrain_split``: the data split stages 1 and 2 train on (``train``: the probe's own
    labeled clips; ``test``: the synthetic set's unlabeled split, so the self-supervised
    stages can see more clips than the probe has labels).
    """

    seed: int = 0
    quick: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    teacher: str = "stage1"
    teacher_sets: tuple[str, ...] = ()
    train_sets: tuple[str, ...] = ()
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    workers: int = 2
    bar_points: float = 15.0
    probe_positions: tuple[str, ...] = ("none",)
    pretrain_split: str = "train"

    def __post_init__(self) -> None:
        from salt_vla.eval.probe import PROBE_POSITIONS

        if self.teacher not in ("stage1", "random"):
            raise DemoError(f"teacher={self.teacher!r}: choose 'stage1' or 'random'")
        object.__setattr__(self, "teacher_sets", tuple(self.teacher_sets))
        object.__setattr__(self, "train_sets", tuple(self.train_sets))
        object.__setattr__(self, "probe_positions", tuple(self.probe_positions))
        bad = [p for p in self.probe_positions if p not in PROBE_POSITIONS]
        if bad or not self.probe_positions or len(set(self.probe_positions)) != len(
                self.probe_positions):
            raise DemoError(f"probe_positions={self.probe_positions}: distinct values of "
                            f"{', '.join(PROBE_POSITIONS)}")
        if self.pretrain_split not in ("train", "test"):
            raise DemoError(f"pretrain_split={self.pretrain_split!r}: choose 'train' or 'test'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["synth"] = self.synth.to_dict()
        d["teacher_sets"], d["train_sets"] = list(self.teacher_sets), list(self.train_sets)
        d["probe_positions"] = list(self.probe_positions)
        return d


def demo_config(seed: int = 0, quick: bool = False, teacher: str = "stage1",
                workers: int | None = None) -> DemoConfig:
    """The full demo (about 15 minutes on 2 CPU cores) or the ``quick`` smoke form (well
    under 3 minutes: a few dozen videos, a handful of steps per stage; its numbers mean
    nothing). ``seed`` seeds everything: the data, both trainings, the baseline and the probe.
    """
    if seed < 0:
        raise DemoError(f"--seed {seed}: seeds are integers >= 0")
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    if quick:
        return DemoConfig(
            seed=seed, quick=True,
            synth=SynthConfig(videos=32, classes=4, frames=8, height=64, width=64, seed=seed,
                              splits=(0.5, 0.5, 0.0)),
            teacher=teacher,
            teacher_sets=("max_steps=4", "warmup_steps=1", "batch_size=4", "log_every=2",
                          "num_workers=0"),
            train_sets=("max_steps=4", "warmup_steps=1", "batch_size=4", "log_every=2",
                        "num_workers=0"),
            probe=ProbeConfig(epochs=2, batch_size=8, seed=seed),
            workers=1,
        )
    return DemoConfig(
        seed=seed,
        synth=SynthConfig(videos=600, classes=4, frames=16, height=64, width=64, seed=seed),
        teacher=teacher,
        # 100 epochs, not V-JEPA's 20: on 420 training clips 20 epochs are ~280 steps and
        # the probe stops far from fitting even a random encoder's features (26% vs 73% top-1
        # at 100 epochs, see docs/demo.md), which would compare optimisation, not encoders.
        probe=ProbeConfig(epochs=100, seed=seed),
        workers=workers,
    )


@dataclass
class StageTime:
    seconds: float
    reused: bool
    detail: str = ""


@dataclass
class SeedRun:
    """What one seed left: its directory, the encoders' names and each stage's time."""

    seed: int
    dir: Path
    teacher_source: str = ""
    stages: dict[str, StageTime] = field(default_factory=dict)
    top1: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DemoResult:
    runs: list[SeedRun]
    report: DemoReport
    seconds: float


def seed_dir(out: Path | str, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


class _Stages:
    """Prints ``[i/7] stage: what`` before and the time after each stage; records times."""

    def __init__(self, run: SeedRun, echo: Callable[[str], None]) -> None:
        self.run, self.echo = run, echo

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[StageTime]:
        i = STAGES.index(name) + 1
        self.echo(f"[seed {self.run.seed}] [{i}/{len(STAGES)}] {name}: {what}")
        rec = StageTime(0.0, False)
        t0 = time.perf_counter()
        yield rec
        rec.seconds = time.perf_counter() - t0
        self.run.stages[name] = rec
        how = "reused" if rec.reused else "done"
        self.echo(f"[seed {self.run.seed}] [{i}/{len(STAGES)}] {name}: {how} in "
                  f"{rec.seconds:.1f} s" + (f" ({rec.detail})" if rec.detail else ""))


def _claim_dir(d: Path, cfg: DemoConfig) -> None:
    """Record the config in ``d``; refuse a directory made by a different config."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create the demo directory {d} ({e.strerror}): choose an "
                        "--out you can write to") from e
    path = d / "demo-config.json"
    want = cfg.to_dict()
    have = read_json_object(path)
    if have is not None:  # keys added since that directory was made mean their defaults
        defaults = DemoConfig().to_dict()
        have = {**{k: defaults[k] for k in set(want) - set(have) if k in defaults}, **have}
        probe = have.get("probe")
        if isinstance(probe, dict):  # e.g. ProbeConfig.positions, added later
            have["probe"] = {**{k: v for k, v in defaults["probe"].items() if k not in probe},
                             **probe}
    # How many processes decode changes the speed, never the results.
    keys = sorted(k for k in set(want) | set(have or {})
                  if k not in RUNTIME_KEYS and want.get(k) != (have or {}).get(k))
    if have is not None and keys:
        raise DemoError(
            f"{d} holds a demo made with a different configuration ({', '.join(keys)} "
            f"differ; e.g. --quick vs the full demo): use another --out, or delete {d}"
        )
    if have is None:
        write_json_atomic(path, want)


# --- stages ------------------------------------------------------------------------------


def _stage_data(d: Path, cfg: DemoConfig, echo: Callable[[str], None], rec: StageTime) -> Path:
    from salt_vla.data.synth import MANIFEST, SynthError, generate_dataset

    root = d / "data"
    manifest = read_json_object(root / MANIFEST)
    if manifest and manifest.get("complete") and manifest.get("config") == cfg.synth.to_dict():
        rec.reused, rec.detail = True, f"{root}: {manifest.get('counts')}"
        return root
    s = cfg.synth
    echo(f"  {s.videos} videos, {s.classes} classes (time-reversal pairs), {s.frames} frames "
         f"of {s.width}x{s.height} px -> {root}")
    step = [0]

    def progress(done: int, total: int) -> None:
        if done * 4 // total > step[0] or done == total:
            step[0] = done * 4 // total
            echo(f"  rendered {done}/{total} videos")

    try:
        summary = generate_dataset(root, s, workers=cfg.workers, progress=progress)
    except SynthError as e:
        raise DemoError(f"synthetic data in {root}: {e}") from e
    rec.detail = f"{summary.counts}"
    return root


def _stage_teacher(d: Path, data: Path, cfg: DemoConfig, echo: Callable[[str], None],
                   rec: StageTime) -> str:
    """Train (or reuse) the stage-1 teacher; returns the teacher source for the cache."""
    if cfg.teacher == "random":
        rec.reused, rec.detail = True, "random teacher: no stage 1"
        return f"random:{TEACHER_ARCH}:{cfg.seed}"
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.checkpoint import CheckpointError
    from salt_vla.trainer.loop import NonFiniteLoss, RunSpec
    from salt_vla.trainer.teacher_experiments import resolve_teacher
    from salt_vla.trainer.teacher_train import train_teacher

    run_dir = d / "teacher"
    weights = run_dir / TEACHER_EXPORT_NAME
    if weights.is_file() and weights.with_name(TEACHER_EXPORT_NAME + ".json").is_file():
        rec.reused, rec.detail = True, str(weights)
        return str(weights.resolve())
    try:
        tcfg = resolve_teacher(TEACHER_EXP, [*cfg.teacher_sets, f"seed={cfg.seed}"])
        echo(f"  {TEACHER_EXP}: {tcfg.arch}, {tcfg.mask_strategy} masks, "
             f"{tcfg.epochs if not tcfg.max_steps else str(tcfg.max_steps) + ' steps'}"
             f"{' epochs' if not tcfg.max_steps else ''}, run dir {run_dir}")
        res = train_teacher(tcfg, RunSpec(out=run_dir, data=data, split=cfg.pretrain_split,
                                          resume="auto"),
                            echo=lambda s: echo("  " + s))
    except (ConfigError, CheckpointError, NonFiniteLoss, ValueError) as e:
        raise DemoError(f"stage-1 teacher training in {run_dir} failed: {e}") from e
    if res.export is None:
        raise DemoError(f"stage-1 teacher run {run_dir} stopped at step {res.train.step}/"
                        f"{res.train.total_steps} without exporting; re-run the demo to resume")
    rec.detail = f"{res.export.path}, {res.train.step} steps"
    return str(res.export.path.resolve())


def _stage_cache(d: Path, data: Path, source: str, cfg: DemoConfig,
                 echo: Callable[[str], None], rec: StageTime) -> Path:
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.cache.store_writer import CacheBuildError
    from salt_vla.data.view import view_preset

    out = d / "cache"
    build = BuildConfig(
        data_root=data, out=out, teacher=source, view=view_preset(VIEW),
        split=cfg.pretrain_split,
        teacher_arch=TEACHER_ARCH, pipeline=PipelineConfig(batch_size=32, workers=cfg.workers),
        command=("salt", "demo", "(cache stage)"),
    )
    echo(f"  teacher {source}, view {VIEW}, {cfg.pretrain_split} split -> {out}")
    try:
        res = build_cache(build, log=lambda s: echo("  " + s))
    except CacheBuildError as e:
        raise DemoError(f"cache build in {out} failed: {e}") from e
    rec.reused = res.rows_done == 0
    rec.detail = (f"{res.rows} rows, {res.rows_skipped} already committed, "
                  f"{res.failures} failures")
    return out


def _stage_verify(cache: Path, echo: Callable[[str], None], rec: StageTime) -> None:
    from salt_vla.cache.verify import verify_store
    from salt_vla.distributed import pick_device

    # --recompute: the teacher re-run on a few stored rows' frames must give their latents.
    report = verify_store(cache, recompute=2, device=str(pick_device()))
    for line in report.table().splitlines():
        echo("  " + line)
    if not report.ok:
        raise DemoError(f"cache {cache} failed verification: " + "; ".join(report.problems)
                        + f". Delete {cache} and re-run the demo to rebuild it")
    rec.detail = f"{len(report.checks)} checks ok"


def _stage_train(d: Path, cache: Path, cfg: DemoConfig, echo: Callable[[str], None],
                 rec: StageTime) -> Path:
    from salt_vla.cache.format import CacheFormatError
    from salt_vla.cache.latent_store import MissingRowError
    from salt_vla.cache.store import CacheMismatchError
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import NonFiniteLoss, RunSpec, train

    run_dir = d / "run"
    try:
        tcfg = resolve(TRAIN_EXP, [*cfg.train_sets, f"seed={cfg.seed}"])
    except ConfigError as e:
        raise DemoError(str(e)) from e
    ckpt = checkpoint_path(run_dir)
    if ckpt.is_file():
        try:
            state = load_checkpoint(ckpt)
            if int(state["step"]) == int(state["total_steps"]):
                rec.reused, rec.detail = True, f"{ckpt}, step {state['step']}"
                return run_dir
        except (CheckpointError, KeyError, ValueError):
            pass  # the trainer's own resume says what is wrong with it
    echo(f"  {TRAIN_EXP}: {tcfg.student} student, predictor {tcfg.predictor_depth}x"
         f"{tcfg.predictor_width}, {tcfg.mask_strategy} masks {tcfg.mask_ratio}, "
         f"{tcfg.epochs if not tcfg.max_steps else str(tcfg.max_steps) + ' steps'}"
         f"{' epochs' if not tcfg.max_steps else ''}, run dir {run_dir}")
    try:
        res = train(tcfg, RunSpec(out=run_dir, cache=cache, resume="auto"),
                    echo=lambda s: echo("  " + s))
    except (ConfigError, CheckpointError, CacheMismatchError, CacheFormatError,
            MissingRowError, NonFiniteLoss) as e:
        raise DemoError(f"training in {run_dir} failed: {e}") from e
    if res.step != res.total_steps:
        raise DemoError(f"training in {run_dir} stopped at step {res.step}/{res.total_steps}; "
                        "re-run the demo to resume it")
    rec.detail = f"{res.step} steps"
    return run_dir


def _encoders(cfg: DemoConfig, run_dir: Path) -> dict[str, tuple[str, str]]:
    """key -> (``--encoder`` value, what it is)."""
    teacher_what = ("stage-1 teacher-tiny" if cfg.teacher == "stage1"
                    else f"random:{TEACHER_ARCH}:{cfg.seed}")
    return {
        "random": (f"random:tiny:{cfg.seed}", "tiny ViT, random init"),
        "teacher": (f"teacher:{run_dir}", f"{teacher_what} latents"),
        "salt": (str(run_dir), "tiny ViT after SALT stage 2"),
    }


def probe_file(d: Path, key: str, positions: str) -> Path:
    """``probe-KEY.json`` for the position-free probe (what the report reads), else
    ``probe-KEY-POSITIONS.json``."""
    return d / (f"probe-{key}.json" if positions == "none" else f"probe-{key}-{positions}.json")


def result_key(key: str, positions: str) -> str:
    """``SeedRun.top1`` key: the encoder key, plus ``@POSITIONS`` for position-aware probes."""
    return key if positions == "none" else f"{key}@{positions}"


def _probe_one(d: Path, data: Path, key: str, name: str, what: str, cfg: DemoConfig,
               echo: Callable[[str], None]) -> dict[str, tuple[float, bool]]:
    """Probe one encoder under every ``cfg.probe_positions`` through the one probe workflow
    (or reuse the results); returns ``{positions: (top-1, reused)}``. The features go to the
    seed's disk cache, so the first probe computes them and the others read them back."""
    from dataclasses import replace

    from salt_vla.data.view import view_preset
    from salt_vla.eval.probe_run import ProbeJob, run_probe

    echo(f"  {key}: {what} ({name})")
    out: dict[str, tuple[float, bool]] = {}
    for positions in cfg.probe_positions:
        job = ProbeJob(encoder=name, data=data, probe=replace(cfg.probe, positions=positions),
                       view=view_preset(VIEW) if name.startswith("random:") else None,
                       teacher_arch=TEACHER_ARCH, feature_cache=d / "features", workers=0,
                       what=what)
        res = run_probe(job, probe_file(d, key, positions), echo=lambda s: echo("    " + s),
                        reuse=True)
        rec = res.record
        echo(f"  {result_key(key, positions)}: top-1 {100 * res.top1:.1f}% on "
             f"{rec['val_clips']} validation clips (probe train top-1 "
             f"{100 * (rec.get('final_train_top1') or float('nan')):.1f}%)")
        out[positions] = (res.top1, res.reused)
    return out


def _stage_probe(d: Path, data: Path, run_dir: Path, cfg: DemoConfig,
                 echo: Callable[[str], None], rec: StageTime) -> dict[str, float]:
    p = cfg.probe
    echo(f"  {p.kind} probe, {p.epochs} epochs, lr {p.lr}, batch {p.batch_size}, positions "
         f"{'/'.join(cfg.probe_positions)}; train split -> validation split; the same recipe "
         "for all three encoders")
    top1, reused = {}, []
    for key, (name, what) in _encoders(cfg, run_dir).items():
        for positions, (acc, r) in _probe_one(d, data, key, name, what, cfg, echo).items():
            top1[result_key(key, positions)] = acc
            reused.append(r)
    rec.reused = all(reused)
    rec.detail = ", ".join(f"{k} {100 * v:.1f}%" for k, v in top1.items())
    return top1


# --- the demo ----------------------------------------------------------------------------


def run_seed(out: Path | str, cfg: DemoConfig, echo: Callable[[str], None] = print) -> SeedRun:
    """Stages 1-6 for ``cfg.seed`` under ``OUT/seed-S`` (see the module docstring)."""
    d = seed_dir(out, cfg.seed)
    _claim_dir(d, cfg)
    run = SeedRun(cfg.seed, d)
    stages = _Stages(run, echo)
    t0 = time.perf_counter()
    with stages.stage("data", "synthetic SSv2-style videos") as rec:
        data = _stage_data(d, cfg, echo, rec)
    what = ("stage 1: pixel-reconstruction teacher (teacher-tiny)" if cfg.teacher == "stage1"
            else "random teacher (stage 1 skipped)")
    with stages.stage("teacher", what) as rec:
        run.teacher_source = _stage_teacher(d, data, cfg, echo, rec)
    with stages.stage("cache", "teacher latents + frames of the train split") as rec:
        cache = _stage_cache(d, data, run.teacher_source, cfg, echo, rec)
    with stages.stage("verify", "full cache verification") as rec:
        _stage_verify(cache, echo, rec)
    with stages.stage("train", "stage 2: SALT student on the cached latents") as rec:
        run_dir = _stage_train(d, cache, cfg, echo, rec)
    with stages.stage("probe", "frozen-encoder probe: random-init student, teacher, SALT "
                      "student") as rec:
        run.top1 = _stage_probe(d, data, run_dir, cfg, echo, rec)
    run.seconds = time.perf_counter() - t0
    _record_timings(d / "timings.json", run)
    return run


def _record_timings(path: Path, run: SeedRun) -> None:
    """``timings.json``: each stage's time when it was last computed (a reused stage keeps
    the time of the run that made it), and this invocation's wall time."""
    old = (read_json_object(path) or {}).get("stages", {})
    stages = {}
    for name, rec in run.stages.items():
        prev = old.get(name)
        if rec.reused and isinstance(prev, dict) and "seconds" in prev:
            stages[name] = {**prev, "reused": True}
        else:
            stages[name] = asdict(rec)
    write_json_atomic(path, {
        "stages": stages,
        "total_seconds": sum(float(v["seconds"]) for v in stages.values()),
        "last_wall_seconds": run.seconds,
        "note": "stage seconds are those of the invocation that computed the stage; "
                "last_wall_seconds is the latest `salt demo` invocation's",
    })


def run_demo(out: Path | str, configs: list[DemoConfig],
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run every seed's config in turn, then write the report over all seeds under ``out``."""
    if not configs:
        raise DemoError("no seeds to run")
    out = Path(out)
    t0 = time.perf_counter()
    runs = [run_seed(out, cfg, echo) for cfg in configs]
    t_report = time.perf_counter()
    echo(f"[{len(STAGES)}/{len(STAGES)}] report: table, JSON and PNG over every seed in {out}")
    report = write_demo_report(out, configs[0].bar_points)
    echo(f"[{len(STAGES)}/{len(STAGES)}] report: done in {time.perf_counter() - t_report:.1f} s")
    return DemoResult(runs, report, time.perf_counter() - t0)



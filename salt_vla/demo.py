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
               teacher, (c) the SALT student, with one recipe and one seed for all three,
               under each of ``probe_positions`` (V-JEPA's position-free probe and one that
               adds the grid's position table; docs/demo.md says why both);
7. ``curve``   learning curves: the same probes on the SALT student's kept stage-2
               checkpoints (``snapshot_every``, e.g. at 1/3 and 2/3 of its steps) and on the
               teacher's stage-1 checkpoints (exported as the final one is);
8. ``intphys`` synthetic possible/impossible pairs scored by the SALT run and by its
               random-init student + predictor (the chance control), same pairs and teacher;
9. ``report``  ``OUT/demo.md`` + ``OUT/demo.json`` (the tables over every seed under OUT,
               with the quality bar under both probes) and ``OUT/demo.png`` (loss curves,
               probe bars, learning curves).

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from salt_vla.data.synth import SynthConfig
from salt_vla.errors import SaltError
from salt_vla.eval.demo_report import (
    CURVE_FILE,
    INTPHYS_FILES,
    DemoReport,
    probe_file,
    read_json_object,
    result_key,
    write_demo_report,
)
from salt_vla.eval.probe import ProbeConfig
from salt_vla.files import write_json_atomic
from salt_vla.runs.rundir import TEACHER_EXPORT_NAME, checkpoint_path, checkpoints

VIEW = "tiny-8x64"  # the view of the tiny presets: 8 frames x 64 px -> 4 x 4 x 4 tokens
TEACHER_EXP = "teacher-tiny"
TRAIN_EXP = "tiny"
TEACHER_ARCH = "vit_tiny"
STAGES = ("data", "teacher", "cache", "verify", "train", "probe", "curve", "intphys", "report")
# DemoConfig keys a re-run may change: how many processes decode changes the speed, never the
# results; the learning-curve and intphys sizes only add (or leave out) their own outputs.
RUNTIME_KEYS = frozenset({"workers", "curve_points", "teacher_curve_points", "intphys_pairs"})
SIZES = ("cpu", "gpu")


class DemoError(SaltError, RuntimeError):
    """A demo stage that cannot run or whose output is wrong; the message says the fix."""


@dataclass(frozen=True)
class DemoConfig:
    """What one seed of the demo runs (see :func:`demo_config` for the two presets).

    ``teacher``: ``"stage1"`` trains it (``teacher_sets`` override the ``teacher-tiny``
    preset); ``"random"`` uses the seeded random ``random:vit_tiny:SEED`` instead (no stage
    1; the baseline the stage-1 teacher should beat). ``train_sets`` override the ``tiny``
    preset. ``workers``: decoding processes for synthesis, the cache build and features,
    and how many probes run at a time (one thread each).

    ``probe_positions``: the probe's ``positions`` modes to run for every encoder (``none``
    is V-JEPA's position-free protocol; ``fixed``/``learned`` add the grid's position table,
    see :mod:`salt_vla.eval.probe`); each encoder's features are computed once and shared.
    ``pretrain_split``: the data split stages 1 and 2 train on (``train``: the probe's own
    labeled clips; ``test``: the synthetic set's unlabeled split, so the self-supervised
    stages can see more clips than the probe has labels).

    ``curve_points``: stage-2 checkpoints probed for the learning curve, the final one
    included (1: only the final); ``teacher_curve_points`` the same for stage 1.
    ``intphys_pairs``: synthetic possible/impossible pairs scored by the SALT run and its
    random-init control (0: no intphys stage). ``size``: the preset (``cpu`` or ``gpu``).
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
    probe_positions: tuple[str, ...] = ("none", "fixed")
    pretrain_split: str = "train"
    curve_points: int = 3
    teacher_curve_points: int = 2
    intphys_pairs: int = 64
    size: str = "cpu"

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
        if self.curve_points < 1 or self.teacher_curve_points < 1 or self.intphys_pairs < 0:
            raise DemoError("curve_points and teacher_curve_points must be >= 1 (1: the final "
                            "checkpoint only), intphys_pairs >= 0 (0: no intphys stage)")
        if self.size not in SIZES:
            raise DemoError(f"size={self.size!r}: choose one of {', '.join(SIZES)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["synth"] = self.synth.to_dict()
        d["teacher_sets"], d["train_sets"] = list(self.teacher_sets), list(self.train_sets)
        d["probe_positions"] = list(self.probe_positions)
        return d


def demo_config(seed: int = 0, quick: bool = False, teacher: str = "stage1",
                workers: int | None = None, size: str = "cpu") -> DemoConfig:
    """The full demo (~11 minutes on 2 idle CPU cores), the ``quick`` smoke form (well
    under 3 minutes: a few dozen videos, a handful of steps per stage; its numbers mean
    nothing) or, with ``size="gpu"``, the same table at GPU scale (:func:`gpu_config`).
    ``seed`` seeds everything: the data, both trainings, the baseline and the probe.
    """
    if seed < 0:
        raise DemoError(f"--seed {seed}: seeds are integers >= 0")
    if size not in SIZES:
        raise DemoError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    if quick and size != "cpu":
        raise DemoError("--quick is the CPU smoke form: leave out --size, or drop --quick")
    if size == "gpu":
        return gpu_config(seed, teacher, workers)
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
            workers=1, intphys_pairs=4,
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


# The GPU preset's scale against the CPU demo: 10x the videos (4,200 probe-train clips
# instead of 420) and 2x the batch at the same epochs, so each stage processes 10x the
# clips (clip x steps) in 5x the optimiser steps. The encoders stay the tiny presets so the
# table is the CPU one at scale, not another architecture.
GPU_VIDEOS = 6000
GPU_TEACHER_SETS = ("batch_size=32", "num_workers=8")
GPU_TRAIN_SETS = ("batch_size=16", "num_workers=8")


def gpu_config(seed: int = 0, teacher: str = "stage1", workers: int | None = None
               ) -> DemoConfig:
    """`salt demo --size gpu`: the CPU demo's table at GPU scale (see :data:`GPU_VIDEOS`):
    6,000 synthetic videos (4,200 / 900 / 900), stage 1 at batch 32 for 30 epochs (3,937
    steps), stage 2 at batch 16 for 20 epochs (5,250 steps), the same 100-epoch probes, 256
    intphys pairs. Not measured yet: no GPU was available when it was written
    (docs/demo.md, BENCHMARKS.md)."""
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, workers)
    return DemoConfig(
        seed=seed,
        synth=SynthConfig(videos=GPU_VIDEOS, classes=4, frames=16, height=64, width=64,
                          seed=seed),
        teacher=teacher, teacher_sets=GPU_TEACHER_SETS, train_sets=GPU_TRAIN_SETS,
        probe=ProbeConfig(epochs=100, seed=seed),
        workers=workers, intphys_pairs=256, size="gpu",
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
    curve: list[dict[str, Any]] = field(default_factory=list)
    intphys: dict[str, float] = field(default_factory=dict)
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


def snapshot_every(tcfg: Any, rows: int, points: int) -> int:
    """``snapshot_every`` for a run of ``tcfg`` (a stage-1 or stage-2 config) over ``rows``
    clips whose learning curve has ``points`` checkpoints, the final one included: the run
    keeps a snapshot every ``total // points`` steps (0: none, for one point), so snapshots
    lie at or just before k/points of the run (see :func:`curve_steps`)."""
    total = tcfg.max_steps or int(tcfg.epochs * rows // tcfg.batch_size)
    return max(1, total // points) if points > 1 else 0


def curve_steps(kept: list[int], points: int) -> list[int]:
    """The ``points`` steps of a learning curve among a run's ``kept`` checkpoint steps
    (sorted; the last is the final one): the kept step nearest to each k/points of the final
    step, k = 1..points-1, then the final step; duplicates (a short run) appear once."""
    if not kept:
        return []
    final = kept[-1]
    chosen = [min(kept, key=lambda s: (abs(s - k * final / points), s)) for k in range(1, points)]
    return sorted(set(chosen) | {final})


def _split_clips(data: Path, split: str) -> int:
    """Clips in ``split`` of the synthetic set at ``data`` (from its manifest)."""
    from salt_vla.data.synth import MANIFEST

    counts = (read_json_object(data / MANIFEST) or {}).get("counts", {})
    return int(counts.get(split, 0)) or 1


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
        every = snapshot_every(tcfg, _split_clips(data, cfg.pretrain_split),
                               cfg.teacher_curve_points)
        tcfg = replace(tcfg, snapshot_every=every)
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
    rows = int(((read_json_object(cache / "cache.json") or {}).get("rows") or {}).get("count")
               or 1)
    tcfg = replace(tcfg, snapshot_every=snapshot_every(tcfg, rows, cfg.curve_points))
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


@dataclass(frozen=True)
class _ProbeTask:
    """One probe of one encoder: its result goes to ``probe_file(d, key, positions)``."""

    key: str
    positions: str
    job: Any  # eval.probe_run.ProbeJob


def _probe_tasks(d: Path, data: Path, key: str, name: str, what: str, cfg: DemoConfig,
                 probe: ProbeConfig | None = None, needs_view: bool | None = None
                 ) -> list[_ProbeTask]:
    """The probes of one encoder, one per ``cfg.probe_positions``, with the features in the
    seed's disk cache. ``probe``: the recipe (default ``cfg.probe``); ``needs_view``: the
    encoder has no view of its own (default: ``random:`` encoders)."""
    from salt_vla.data.view import view_preset
    from salt_vla.eval.probe_run import ProbeJob

    if needs_view is None:
        needs_view = name.startswith("random:")
    return [_ProbeTask(key, positions, ProbeJob(
        encoder=name, data=data, probe=replace(probe or cfg.probe, positions=positions),
        view=view_preset(VIEW) if needs_view else None, teacher_arch=TEACHER_ARCH,
        feature_cache=d / "features", workers=0, what=what)) for positions in cfg.probe_positions]


def _one_thread() -> None:
    """Probes run one intra-op thread each (in a worker or in this process alike, so the
    numbers do not depend on ``workers``): the probe's operations are far too small to
    split, and two processes sharing the cores beat two threads in one (a second thread per
    probe made a probe 3-7x slower under load on the 2-core VM)."""
    import torch

    torch.set_num_threads(1)


def _probe_worker(args: tuple[Any, Path]) -> tuple[Any, list[str]]:
    """Run one probe in a worker process; returns the outcome and what it printed."""
    from salt_vla.eval.probe_run import run_probe

    job, out = args
    lines: list[str] = []
    return run_probe(job, out, echo=lines.append, reuse=True), lines


def _run_probes(d: Path, tasks: list[_ProbeTask], workers: int, echo: Callable[[str], None]
                ) -> dict[tuple[str, str], tuple[float, bool]]:
    """Run ``tasks`` (or reuse their results); returns ``{(key, positions): (top-1,
    reused)}``. Each encoder's features are computed once, first; then the probes run,
    ``workers`` at a time in spawned processes of one thread each (in this process when
    ``workers`` is 1)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from salt_vla.eval.probe_run import prepare_features, reusable_result, run_probe

    def indent(line: str) -> None:
        echo("    " + line)

    def done(t: _ProbeTask, outcome: Any, reused: bool) -> None:
        rec = outcome.record
        echo(f"  {result_key(t.key, t.positions)}: top-1 {100 * outcome.top1:.1f}% on "
             f"{rec['val_clips']} validation clips (probe train top-1 "
             f"{100 * (rec.get('final_train_top1') or float('nan')):.1f}%)"
             + (" (reused)" if reused else ""))
        results[(t.key, t.positions)] = (outcome.top1, reused)

    results: dict[tuple[str, str], tuple[float, bool]] = {}
    todo = []
    for t in tasks:
        old = reusable_result(t.job, probe_file(d, t.key, t.positions))
        if old is not None:
            done(t, old, True)
        else:
            todo.append(t)
    featurised = set()
    for t in todo:
        if t.job.encoder not in featurised:
            featurised.add(t.job.encoder)
            echo(f"  {t.key}: {t.job.what} ({t.job.encoder})")
            prepare_features(t.job, echo=indent)
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        echo(f"  {len(todo)} probes, {min(workers, len(todo))} at a time (one thread each)")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                 initializer=_one_thread) as pool:
            jobs = [(t.job, probe_file(d, t.key, t.positions)) for t in todo]
            for t, (outcome, lines) in zip(todo, pool.map(_probe_worker, jobs), strict=True):
                echo(f"  {result_key(t.key, t.positions)}: {t.job.what} ({t.job.encoder})")
                for line in lines:
                    indent(line)
                done(t, outcome, outcome.reused)
    else:  # one thread here too, so the numbers do not depend on ``workers``
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for t in todo:
                echo(f"  {result_key(t.key, t.positions)}: {t.job.what} ({t.job.encoder})")
                outcome = run_probe(t.job, probe_file(d, t.key, t.positions), echo=indent,
                                    reuse=True)
                done(t, outcome, outcome.reused)
        finally:
            torch.set_num_threads(threads)
    return results


def _stage_probe(d: Path, data: Path, run_dir: Path, cfg: DemoConfig,
                 echo: Callable[[str], None], rec: StageTime) -> dict[str, float]:
    p = cfg.probe
    echo(f"  {p.kind} probe, {p.epochs} epochs, lr {p.lr}, batch {p.batch_size}, positions "
         f"{'/'.join(cfg.probe_positions)}; train split -> validation split; the same recipe "
         "for all three encoders")
    tasks = [t for key, (name, what) in _encoders(cfg, run_dir).items()
             for t in _probe_tasks(d, data, key, name, what, cfg)]
    res = _run_probes(d, tasks, cfg.workers, echo)
    top1 = {result_key(key, pos): acc for (key, pos), (acc, _) in res.items()}
    rec.reused = all(r for _, r in res.values())
    rec.detail = ", ".join(f"{k} {100 * v:.1f}%" for k, v in top1.items())
    return top1


def _teacher_at(d: Path, ckpt: Path, step: int) -> Path:
    """The stage-1 encoder of checkpoint ``ckpt`` exported as a teacher file under
    ``seed-S/curve/`` (the same export the final teacher gets), reused when present."""
    from salt_vla.trainer.teacher_export import export_teacher

    out = d / "curve" / f"teacher-step{step:06d}.pth"
    if not (out.is_file() and out.with_name(out.name + ".json").is_file()):
        out.parent.mkdir(parents=True, exist_ok=True)
        export_teacher(ckpt, out)
    return out.resolve()


def _stage_curve(d: Path, data: Path, run_dir: Path, cfg: DemoConfig,
                 echo: Callable[[str], None], rec: StageTime) -> list[dict[str, Any]]:
    """Probe the teacher's kept stage-1 checkpoints and the SALT student's kept stage-2
    checkpoints (their final ones are the probe stage's rows); writes ``seed-S/curve.json``
    listing every point and its probe files. Intermediate points use the probe recipe with
    ``val_every=0``: no per-epoch validation pass, the same top-1 (only the history differs)."""
    runs = [("salt", run_dir, cfg.curve_points)]
    if cfg.teacher == "stage1":
        runs.insert(0, ("teacher", d / "teacher", cfg.teacher_curve_points))
    probe = replace(cfg.probe, val_every=0)
    points: list[dict[str, Any]] = []
    tasks: list[_ProbeTask] = []
    for stage, rdir, n in runs:
        kept = dict(checkpoints(rdir))
        steps = curve_steps(sorted(kept), n)
        if len(steps) < n:
            echo(f"  {stage}: {len(steps)} of {n} curve points: the run kept checkpoints at "
                 f"steps {sorted(kept)} (a run made before snapshot_every, or a short one)")
        final = max(kept) if kept else 0
        for step in steps:
            if step == final:  # the table's row, probed by the probe stage
                files = {pos: probe_file(d, stage, pos).name for pos in cfg.probe_positions}
            else:
                key = f"curve-{stage}-step{step:06d}"
                if stage == "salt":
                    name, what = str(kept[step]), f"SALT student at step {step}/{final}"
                else:
                    name = f"teacher:{_teacher_at(d, kept[step], step)}"
                    what = f"stage-1 teacher at step {step}/{final}"
                tasks += _probe_tasks(d, data, key, name, what, cfg, probe,
                                      needs_view=stage == "teacher")
                files = {pos: probe_file(d, key, pos).name for pos in cfg.probe_positions}
            points.append({"stage": stage, "step": step, "total": final,
                           "final": step == final, "probes": files})
    res = _run_probes(d, tasks, cfg.workers, echo)
    write_json_atomic(d / CURVE_FILE, {
        "points": points,
        "note": "probe files relative to this directory; intermediate points: the demo's "
                "probe recipe with val_every=0 (same top-1, no per-epoch validation history)"})
    rec.reused = all(r for _, r in res.values())
    rec.detail = ", ".join(f"{p['stage']} {p['step']}/{p['total']}" for p in points)
    return points


def _stage_intphys(d: Path, run_dir: Path, cfg: DemoConfig, echo: Callable[[str], None],
                   rec: StageTime) -> dict[str, float]:
    """Synthetic possible/impossible pairs (the synthetic clips' frames and size, seeded by
    the demo seed) scored by the SALT run and by its random-init student + predictor (the
    chance control: same teacher, same pairs); returns the reported context's pairwise
    accuracy (mean surprise) of each."""
    if cfg.intphys_pairs == 0:
        rec.reused, rec.detail = True, "off (intphys_pairs=0)"
        return {}
    from salt_vla.eval.demo_report import intphys_summary
    from salt_vla.eval.intphys import run_intphys
    from salt_vla.eval.intphys_synth import PAIRS_FILE, IntPhysSynthConfig, generate_intphys

    root = (d / "intphys-data").resolve()
    s = cfg.synth
    icfg = IntPhysSynthConfig(pairs=cfg.intphys_pairs, frames=s.frames, height=s.height,
                              width=s.width, seed=cfg.seed)
    manifest = read_json_object(root / PAIRS_FILE)
    fresh = not (manifest and manifest.get("complete") and manifest.get("config") == icfg.to_dict())
    if fresh:
        echo(f"  {icfg.pairs} pairs ({', '.join(icfg.kinds)}), {icfg.frames} frames of "
             f"{icfg.width}x{icfg.height} px -> {root}")
        generate_intphys(root, icfg, workers=cfg.workers, force=True)
    kept = checkpoints(run_dir)
    step = kept[-1][0] if kept else None  # the run's final step, as its record says
    acc: dict[str, float] = {}
    reused = [not fresh]
    for what, random_init in (("salt", None), ("random", cfg.seed)):
        path = d / INTPHYS_FILES[what]
        old = read_json_object(path) if not fresh else None
        kind = "trained" if random_init is None else "random-init"
        if (old and old.get("step") == step and old.get("weights", {}).get("kind") == kind
                and old.get("data", {}).get("root") == str(root)):
            record, done = old, True
        else:
            record, _ = run_intphys(run_dir, root, format="pairs", random_init=random_init,
                                    out=path, echo=lambda line: echo("    " + line))
            done = False
        reused.append(done)
        summary = intphys_summary(record)
        if summary:
            acc[what] = summary["mean"]
            echo(f"  {what}: pairwise {100 * summary['mean']:.1f}% (mean surprise) / "
                 f"{100 * summary['max']:.1f}% (max) at C={summary['context']} over "
                 f"{summary['pairs']} pairs{' (reused)' if done else ''}")
    rec.reused = all(reused)
    rec.detail = ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items())
    return acc


# --- the demo ----------------------------------------------------------------------------


def run_seed(out: Path | str, cfg: DemoConfig, echo: Callable[[str], None] = print) -> SeedRun:
    """Stages 1-8 for ``cfg.seed`` under ``OUT/seed-S`` (see the module docstring)."""
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
    with stages.stage("curve", "learning curves: the probes on the teacher's and the "
                      "student's earlier checkpoints") as rec:
        run.curve = _stage_curve(d, data, run_dir, cfg, echo, rec)
    with stages.stage("intphys", "possible/impossible pairs: the SALT run vs its random-init "
                      "control") as rec:
        run.intphys = _stage_intphys(d, run_dir, cfg, echo, rec)
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



"""The probe workflow, once: resolve the encoder, featurise two splits, train the probe, write
one result record. `salt eval probe`, `salt demo`, `salt sweep` and `salt report` all go
through here, so every ``probe*.json`` has the same schema (:data:`SCHEMA`).

Record (JSON object, written atomically):

- ``schema`` (int), ``encoder`` ``{"name", ...describe}``, ``encoder_key`` (features with
  the same key are the same), ``what`` (a label, may be empty);
- ``view`` ``{"spec", "hash"}``, ``data`` (absolute root), ``train``/``val``
  ``{"split", "clips", "failed"}``, ``classes``;
- ``probe`` (the :class:`~salt_vla.eval.probe.ProbeConfig` as a dict), the
  :class:`~salt_vla.eval.probe.ProbeResult` fields (``top1``, ``top5``, ``top5_k``,
  ``val_clips``, ``train_clips``, ``num_classes``, ``heads``, ``params``, ``seconds``,
  ``history``), ``final_train_top1``, ``chance``;
- ``features`` ``{"mode", "cache", "bytes", "train_seconds", "val_seconds"}``, ``device``,
  ``wall_seconds``.

Features come in RAM, from a disk cache or streamed (``ProbeJob.features``, chosen from the
measured sizes by default: see :mod:`salt_vla.eval.features` and docs/probe.md); the probe
sees the same float16 values in every mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.data.view import ViewSpec
from salt_vla.errors import SaltError
from salt_vla.eval.probe import ProbeConfig
from salt_vla.files import write_json_atomic
from salt_vla.runs.rundir import PROBE_NAME, resolve_run_path

SCHEMA = 1


class ProbeRunError(SaltError, ValueError):
    """Splits that cannot be probed together (different class lists, ...)."""


@dataclass(frozen=True)
class ProbeJob:
    """What to probe: an ``--encoder`` name (see :mod:`salt_vla.eval.encoders`) on the
    SSv2-layout ``data`` root, trained on ``train_split`` and scored on ``val_split``.

    ``view`` None: the encoder's own view (random: and teacher:PATH encoders need one).
    ``feature_cache``: keep features on disk there (reused by later jobs with the same
    encoder, view and clips) instead of in memory. ``features``: ``auto`` (from the sizes,
    RAM and disk), ``memory``, ``disk`` or ``stream``. ``limit_*`` > 0 keeps the first N clips.
    """

    encoder: str
    data: Path
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train_split: str = "train"
    val_split: str = "validation"
    view: ViewSpec | None = None
    teacher_arch: str = "vit_base"
    limit_train: int = 0
    limit_val: int = 0
    feature_cache: Path | None = None
    features: str = "auto"
    workers: int = 2
    device: str = "auto"
    what: str = ""  # a label for tables, e.g. "SALT student"


@dataclass
class ProbeOutcome:
    """The record written (or found, when ``reused``) and where it is."""

    record: dict[str, Any]
    path: Path
    reused: bool

    @property
    def top1(self) -> float:
        return float(self.record["top1"])


def default_probe_out(encoder: str, kind: str, positions: str = "none") -> Path:
    """RUN_DIR/probe.json for a run (probe-attentive4.json for that probe, probe-teacher.json
    for its teacher, ``-pos-fixed`` / ``-pos-learned`` appended for a position-aware probe);
    else ./probe-<encoder>.json."""
    suffix = ("" if kind == "attentive" else f"-{kind}") + (
        "" if positions == "none" else f"-pos-{positions}")
    target = encoder.split(":", 1)[1] if encoder.startswith("teacher:") else encoder
    path = Path(target).expanduser()
    if not encoder.startswith("random:") and path.exists():
        run_dir = resolve_run_path(path).run_dir
        # Every name matches rundir.PROBE_GLOB, so `salt report` finds them all.
        name = "probe-teacher" if encoder.startswith("teacher:") else Path(PROBE_NAME).stem
        return run_dir / f"{name}{suffix}.json"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in encoder)
    return Path(f"probe-{safe}{suffix}.json")


def read_probe_result(path: Path | str) -> dict[str, Any] | None:
    """The probe record in ``path``; None when missing, unreadable or not a probe record
    (a half-written or foreign file counts as absent)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("top1"), (int, float)):
        return None
    return data


def _reusable(path: Path, key: str, cfg: ProbeConfig, data: Path) -> dict[str, Any] | None:
    old = read_probe_result(path)
    if (old and old.get("schema") == SCHEMA and old.get("encoder_key") == key
            and old.get("probe") == asdict(cfg) and old.get("data") == str(data)):
        return old
    return None


def reusable_result(job: ProbeJob, out: Path) -> ProbeOutcome | None:
    """The record in ``out`` when it is one of ``job`` (same encoder identity + view, probe
    recipe and data), else None: what ``run_probe(job, out, reuse=True)`` would return
    without probing."""
    from salt_vla.distributed import pick_device
    from salt_vla.eval.encoders import resolve_encoder

    enc = resolve_encoder(job.encoder, job.view, pick_device(job.device), job.teacher_arch)
    data = Path(job.data).expanduser().resolve()
    old = _reusable(Path(out).expanduser(), enc.key(), job.probe, data)
    return ProbeOutcome(old, Path(out), True) if old is not None else None


def prepare_features(job: ProbeJob, echo: Callable[[str], None] = print) -> None:
    """Compute ``job``'s features into its ``feature_cache`` and nothing else, so that
    several probes of one encoder (other recipes, other positions) can then run at the same
    time, each reading them back instead of computing them again."""
    from salt_vla.distributed import pick_device
    from salt_vla.eval.encoders import resolve_encoder

    if job.feature_cache is None:
        raise ProbeRunError("prepare_features needs a feature_cache (where the features go)")
    enc = resolve_encoder(job.encoder, job.view, pick_device(job.device), job.teacher_arch)
    _features(job, enc, Path(job.data).expanduser().resolve(), echo)


def run_probe(job: ProbeJob, out: Path | None = None, echo: Callable[[str], None] = print,
              reuse: bool = False) -> ProbeOutcome:
    """Run ``job`` and write its record to ``out`` (default: :func:`default_probe_out`).

    ``reuse``: when ``out`` already holds a record of the same encoder (identity + view),
    probe recipe and data, return it instead of probing again.
    """
    from salt_vla.distributed import pick_device
    from salt_vla.eval.encoders import resolve_encoder
    from salt_vla.eval.probe import train_probe

    t0 = time.perf_counter()
    cfg = job.probe
    dev = pick_device(job.device)
    data = Path(job.data).expanduser().resolve()
    enc = resolve_encoder(job.encoder, job.view, dev, job.teacher_arch)
    path = Path(out or default_probe_out(job.encoder, cfg.kind, cfg.positions)).expanduser()
    if reuse and (old := _reusable(path, enc.key(), cfg, data)) is not None:
        echo(f"  reused {path} (top-1 {100 * old['top1']:.1f}%)")
        return ProbeOutcome(old, path, True)
    echo(f"encoder: {job.encoder} -> {enc.kind}, {enc.dim} wide, grid {enc.grid.as_tuple()}")
    own = "" if job.view else " (the encoder's own)"
    echo(f"view: {enc.view.num_frames} frames x {enc.view.size} px, {enc.view.sampling} "
         f"sampling, hash {enc.view.hash()}{own}")
    echo(f"device: {dev}; results: {path}")
    sets, plan = _features(job, enc, data, echo)
    tr, va = sets["train"], sets["val"]
    if tr.classes != va.classes:
        raise ProbeRunError(f"splits {job.train_split!r} and {job.val_split!r} of {data} have "
                            "different class lists; probe on splits of one dataset")
    echo(f"probe: {cfg.kind}, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, wd "
         f"{cfg.weight_decay}, seed {cfg.seed}, positions {cfg.positions}")

    def epoch_line(r: dict[str, float]) -> None:
        val = f"  val top-1 {100 * r['val_top1']:5.1f}%" if "val_top1" in r else ""
        echo(f"  epoch {r['epoch']:3d}  loss {r['loss']:.4f}  train top-1 "
             f"{100 * r['train_top1']:5.1f}%{val}")

    res = train_probe(tr.features, tr.labels, va.features, va.labels, tr.num_classes, cfg,
                      dev, progress=epoch_line, grid=enc.grid)
    for fs in (tr, va):
        fs.settle()
    res.train_clips, res.val_clips = len(tr), len(va)  # a stream learns its failures late
    chance = 1 / tr.num_classes
    echo(f"top-1 {100 * res.top1:.2f}%  top-{res.top5_k} {100 * res.top5:.2f}%  on "
         f"{res.val_clips} {job.val_split} clips, {res.num_classes} classes (chance "
         f"{100 * chance:.2f}%); probe trained on {res.train_clips} clips in {res.seconds:.1f} s")
    final = res.history[-1] if res.history else {}
    record = {
        "schema": SCHEMA,
        "encoder": {"name": job.encoder, **enc.describe},
        "encoder_key": enc.key(),
        "what": job.what,
        "view": {"spec": enc.view.to_dict(), "hash": enc.view.hash()},
        "data": str(data),
        "train": {"split": job.train_split, "clips": len(tr), "failed": tr.failed},
        "val": {"split": job.val_split, "clips": len(va), "failed": va.failed},
        "classes": tr.classes,
        "probe": asdict(cfg),
        **res.to_dict(),
        "final_train_top1": final.get("train_top1"),
        "chance": chance,
        "features": {"mode": plan.mode,
                     "cache": str(job.feature_cache) if plan.mode == "disk" else None,
                     "bytes": plan.need, "train_seconds": tr.seconds,
                     "val_seconds": va.seconds},
        "device": str(dev),
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(path, record)
    echo(f"wrote {path}")
    return ProbeOutcome(record, path, False)


@dataclass
class _Split:
    """One split's features for the probe, whichever mode made them: ``features`` is an
    array (memory, disk) or a StreamedFeatures source."""

    split: str
    features: Any
    labels: Any
    classes: list[str]
    failed: list[dict[str, str]]
    seconds: float
    stream: Any = None
    clips: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.clips - (len(self.stream.failed) if self.stream is not None else 0)

    def settle(self) -> None:
        """After training: a stream's failures and time are known only now."""
        if self.stream is not None:
            self.failed, self.seconds = self.stream.failed_list(), self.stream.seconds


def _features(job: ProbeJob, enc: Any, data: Path, echo: Callable[[str], None]
              ) -> tuple[dict[str, _Split], Any]:
    """Load both splits' clip lists, choose the features mode from their sizes (checking RAM
    and disk before anything is allocated), then compute or stream the features."""
    from salt_vla.eval.features import (
        StreamedFeatures,
        cache_entry,
        compute_features,
        feature_nbytes,
        load_cached,
        load_clips,
        plan_features,
    )

    cfg = job.probe
    clips = {name: load_clips(data, split, limit) for name, split, limit in
             (("train", job.train_split, job.limit_train), ("val", job.val_split, job.limit_val))}
    for c in clips.values():
        echo(f"data: {c.where}")
    cache = Path(job.feature_cache).expanduser() if job.feature_cache is not None else None
    cached = cache is not None and all(
        load_cached(cache_entry(enc, c, cache), c.classes, c.split) is not None
        for c in clips.values())
    plan = plan_features(job.features, {c.split: len(c) for c in clips.values()},
                         enc.grid.num_tokens, enc.dim, cache, cached, cfg.epochs)
    echo(plan.line())
    sets = {}
    for name, c in clips.items():
        if plan.mode == "stream":
            src = StreamedFeatures(enc, c, job.workers)
            sets[name] = _Split(c.split, src, c.labels, c.classes, [], 0.0, src, len(c))
            echo(f"{name} split {c.split!r}: {len(c)} clips, {len(c.classes)} classes, "
                 f"{feature_nbytes(len(c), enc) / 2**30:.3f} GiB of features if stored; "
                 f"streamed each epoch")
            continue
        fs = compute_features(enc, c, batch_size=cfg.batch_size, workers=job.workers,
                              cache_dir=cache if plan.mode == "disk" else None,
                              progress=_tenths(echo, c.split))
        how = f"reused {fs.path}" if fs.reused else f"{fs.seconds:.1f} s"
        echo(f"{name} split {c.split!r}: {len(fs)} clips, {fs.num_classes} classes, "
             f"{feature_nbytes(len(fs), enc) / 2**30:.3f} GiB of features ({how}); "
             f"{len(fs.failed)} failed to decode")
        sets[name] = _Split(c.split, fs.features, fs.labels, fs.classes, fs.failed, fs.seconds,
                            clips=len(fs))
    return sets, plan


def _tenths(echo: Callable[[str], None], split: str) -> Callable[[int, int], None]:
    """A featurising progress callback that prints about ten lines."""
    step = [0]

    def progress(done: int, total: int) -> None:
        if done * 10 // total > step[0] or done == total:
            step[0] = done * 10 // total
            echo(f"  {split}: {done}/{total} clips featurised")

    return progress

"""``salt cache verify``: check that a store is whole, consistent and what it claims to be.

Three depths, each a superset of the structure check (``structure.py``: manifest, commit
records, sizes, shard indexes, member tables; O(shards), no data read):

- ``quick``: the structure only; seconds for SSv2.
- ``sample=f``: also a random fraction ``f`` of the rows, at least one in every shard: each
  sampled row's latent (and int8 scale) bytes against its crc32c and for finite values, its
  tar members' headers against the member table, its ``.json`` against the row table, its
  JPEGs decoded. A sample that passes is evidence, not proof: rows not drawn are not read,
  and whole-file sha256 sums are not computed.
- full (the default): every byte, each file read once, in order, by several threads at once:
  sha256 of every file, every row's crc32c and finite values, every tar header against the
  member table.

The data passes live in ``verify_data.py``; this module runs them and writes the report.

Every check adds a line to the report; every failure adds a problem naming the file, shard
or rows. ``ok`` is True when no problem was found (the CLI's exit 0; 1 otherwise).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    QUANTIZED_DTYPES,
    SHARD_COMMITTED,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    identity_digest,
    read_manifest,
)
from salt_vla.cache.frames_reader import group_sample, iter_tar_files
from salt_vla.cache.quantize import ERROR_BOUND, QMAX
from salt_vla.cache.store_writer import failure_lines, merged_manifest
from salt_vla.cache.structure import check_shards, rows_text, zarr_metadata_problems
from salt_vla.cache.verify_data import (
    VerifyProgress,
    full_shard,
    pick_rows,
    sample_bytes,
    sample_shard,
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Checks run (name, ok, detail) and the problems found; ``ok`` when there are none."""

    root: Path
    mode: str = "full"
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0  # data bytes read (latents, scales, frames; not the JSON files)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, name: str, problems: list[str], detail: str) -> None:
        # A failed check keeps its counts (an interrupted store: "3/9" shards committed).
        if problems:
            detail = f"{len(problems)} problem(s)" + (f"; {detail}" if detail else "")
        self.checks.append(Check(name, not problems, detail))
        self.problems.extend(problems)

    def table(self) -> str:
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}")
        return "\n".join(lines)


def print_progress(stream: TextIO | None = None, log_interval: float = 30.0
                   ) -> Callable[[VerifyProgress], None]:
    """A :class:`VerifyProgress` callback for ``salt cache verify``: redraws one line on a
    terminal; on a file or pipe prints a line every ``log_interval`` seconds and at the end."""
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    last = [0.0]

    def show(p: VerifyProgress) -> None:
        now = time.monotonic()
        if tty:
            out.write("\r" + p.line() + ("\n" if p.finished else ""))
        elif p.finished or now - last[0] >= log_interval:
            last[0] = now
            out.write(p.line() + "\n")
        out.flush()

    return show


def verify_store(
    root: Path | str,
    *,
    quick: bool = False,
    sample: float | None = None,
    recompute: int | str = 0,
    teacher_ckpt: Path | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[VerifyProgress], None] | None = None,
) -> VerifyReport:
    """Check the store at ``root``: the structure (``quick``), plus a random fraction
    ``sample`` of the rows, or (neither) every byte; see the module docstring.
    ``recompute``: re-run the teacher on about that many rows, at least one per committed
    shard (``"all"``: every row). ``progress`` is called with a :class:`VerifyProgress`
    during the data pass."""
    if sample is not None and not 0.0 < sample <= 1.0:
        raise ValueError(f"sample={sample}: a fraction in (0, 1]")
    root = Path(root)
    mode = "quick" if quick else ("sample" if sample is not None else "full")
    report = VerifyReport(root, mode)
    t0 = time.perf_counter()
    try:
        meta = read_manifest(root)
    except CacheFormatError as e:
        report.add("manifest", [str(e)], "")
        return report
    try:
        if meta.get("status") != STATUS_COMPLETE:
            # An unfinished build's cache.json lags its commit records (rewritten every few
            # seconds, and not after a SIGKILL): the records are the truth, as for `salt
            # cache info`, so both count the same shards and rows.
            meta = merged_manifest(root, meta)
            report.notes.append("an unfinished build: shards and rows counted from the commit "
                                "records (as `salt cache info` does)")
        _verify(report, root, meta, mode, sample, seed, threads, progress)
        if recompute == "all" or (isinstance(recompute, int) and recompute > 0):
            _recompute(report, root, meta, recompute, teacher_ckpt, device, seed)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        # A manifest edited into another shape: say so instead of a traceback.
        report.add("manifest fields", [f"{StorePaths(root).manifest} is malformed "
                                       f"({type(e).__name__}: {e}); rebuild the cache"], "")
    report.seconds = time.perf_counter() - t0
    return report


def _manifest_problems(paths: StorePaths, meta: dict) -> list[str]:
    probs = []
    digest = identity_digest(meta)
    if digest != meta.get("identity_sha256"):
        probs.append(f"{paths.manifest}: identity digest mismatch (stored "
                     f"{str(meta.get('identity_sha256'))[:16]}..., content gives "
                     f"{digest[:16]}...): cache.json was edited after the build")
    lat = meta["latents"]
    rows = meta["rows"]
    n = rows["count"]
    for key in ("video_id", "view_index", "label"):
        if len(rows[key]) != n:
            probs.append(f"{paths.manifest}: row table '{key}' has {len(rows[key])} entries "
                         f"for {n} rows")
    if lat["shape"][0] != n or lat["tokens"] != lat["shape"][1] or lat["dim"] != lat["shape"][2]:
        probs.append(f"{paths.manifest}: latents shape {lat['shape']} disagrees with rows/"
                     f"tokens/dim")
    if int(np.prod(lat["grid"])) != lat["tokens"]:
        probs.append(f"{paths.manifest}: grid {lat['grid']} does not give {lat['tokens']} tokens")
    if lat["dtype"] not in DTYPES:
        probs.append(f"{paths.manifest}: latents dtype {lat['dtype']!r} is not one of "
                     f"{', '.join(DTYPES)}")
    if meta.get("status") != STATUS_COMPLETE:
        probs.append(f"{paths.manifest}: status is {meta.get('status')!r}, not complete: "
                     f"re-run `salt cache build` with the same options to finish")
    return probs


def _view_problems(paths: StorePaths, meta: dict) -> list[str]:
    try:
        from salt_vla.data.view import ViewSpec

        current = ViewSpec.from_dict(meta["view"]["spec"]).hash()
    except (ValueError, TypeError, KeyError) as e:
        return [f"view spec in {paths.manifest} is not readable by this code: {e}"]
    if current != meta["view"]["hash"]:
        return [f"view-hash mismatch: cache.json records {meta['view']['hash']}, the current "
                f"code computes {current} for the stored view spec (the view code or the "
                f"manifest changed; rebuild the cache)"]
    return []


def _verify(report: VerifyReport, root: Path, meta: dict, mode: str, sample: float | None,
            seed: int, threads: int | None,
            progress: Callable[[VerifyProgress], None] | None) -> None:
    paths = StorePaths(root)
    lat = meta["latents"]
    n = meta["rows"]["count"]
    report.add("manifest", _manifest_problems(paths, meta), f"{n} rows, {lat['num_shards']} "
               f"shards, format v{meta['format_version']}")
    report.add("zarr metadata", zarr_metadata_problems(root, meta),
               f"[{', '.join(map(str, lat['shape']))}] {lat['dtype']}, {lat['shard_size']} "
               "rows/shard")
    report.add("view hash", _view_problems(paths, meta), f"{meta['view']['hash']}")

    # --- shards: structure, then the data pass of the mode ----------------------------------
    shards = meta["shards"]
    committed = [s for s in shards if s["status"] == SHARD_COMMITTED]
    pending = [f"shard {s['index']} (rows {s['row_start']}..{s['row_stop'] - 1}) is not "
               "committed" for s in shards if s["status"] != SHARD_COMMITTED]
    workers = max(1, threads or min(8, os.cpu_count() or 1))
    checks = check_shards(root, meta, committed, threads=workers)
    quantized = lat["dtype"] in QUANTIZED_DTYPES
    sampled = 0
    if mode != "quick":
        by_index = {c.index: c for c in checks}
        if mode == "sample":
            assert sample is not None
            picks = pick_rows(committed, sample, seed)
            sampled = sum(len(p) for p in picks.values())
            total = sum(sample_bytes(meta, s, len(picks[s["index"]])) for s in committed)
        else:
            picks = {}
            total = sum(s["latents"]["bytes"] + s["frames"]["bytes"]
                        + s.get("scale", {}).get("bytes", 0) for s in committed)
        prog = VerifyProgress(total, len(committed), progress)

        def data_pass(s: dict) -> int:
            check = by_index[s["index"]]
            if mode == "sample":
                nbytes = sample_shard(root, meta, s, check, picks[s["index"]], prog)
            else:
                nbytes = full_shard(root, meta, s, check, prog)
            prog.add(shards=1)
            return nbytes

        with ThreadPoolExecutor(max_workers=workers) as ex:
            report.bytes_read = sum(ex.map(data_pass, committed))
    failed = sum(len(s["failures"]) for s in committed)
    # Rows of the committed shards only: an interrupted build has written no others.
    present = sum(s["row_stop"] - s["row_start"] for s in committed) - failed
    report.add("shards committed", pending + [p for c in checks for p in c.commit],
               f"{len(committed)}/{len(shards)}")
    what = {"quick": "index, sizes",
            "sample": f"index, sizes; {sampled} sampled rows: crc32c, finite",
            "full": "index, sizes, sha256, row crc32c, finite"}[mode]
    report.add("latent shards", [p for c in checks for p in c.latents],
               f"{present} rows present, {failed} failed ({what})")
    if quantized:
        report.add("latent scales", [p for c in checks for p in c.scale],
                   f"int8 per-token float16 scales ({what})")
    fwhat = {"quick": "sizes, member tables",
             "sample": f"sizes, member tables; {sampled} sampled rows: headers, .json, JPEGs",
             "full": "sizes, member tables, every header, sha256"}[mode]
    report.add("frame shards", [p for c in checks for p in c.frames],
               f"{present} samples ({fwhat})")

    # --- failures.jsonl -------------------------------------------------------------------
    probs = []
    if meta.get("status") == STATUS_COMPLETE:
        try:
            if paths.failures.read_bytes() != failure_lines(meta):
                probs.append(f"{paths.failures} does not list the failures recorded in "
                             f"cache.json")
        except FileNotFoundError:
            probs.append(f"{paths.failures} is missing")
    report.add("failures.jsonl", probs, f"{failed} failed rows, "
               f"{len(meta['rows']['missing_video_ids'])} missing videos")

    if mode == "sample":
        report.notes.append(
            f"sampled {sampled} of {present} rows ({100 * sampled / max(1, present):.2g}"
            f"%, every shard): a passing sample is not a proof; rows not drawn were not read "
            "and file sha256 sums were not computed (run without --sample for that)")
    if mode == "quick" and any("members" not in s["frames"] for s in committed):
        report.notes.append("format-version-1 shards have no member tables: --quick checked "
                            "their tars' sizes only (a full or sampled verify reads the headers)")
    stale = list(paths.tmp.glob("*")) if paths.tmp.exists() else []
    if stale:
        report.notes.append(f"{len(stale)} leftover temporary file(s) in {paths.tmp} (from an "
                            f"interrupted build; harmless, removed by the next build)")


# --- recompute -----------------------------------------------------------------------------


def recompute_rows(meta: dict, k: int | str, seed: int) -> list[int]:
    """The rows ``--recompute k`` checks: ``"all"`` rows with latents, else about ``k`` drawn
    with ``seed``, at least one in every committed shard (a swap of rows inside one shard is
    then caught in every shard it happens in, not in k of the shards by luck)."""
    committed = [s for s in meta["shards"] if s.get("status") == SHARD_COMMITTED]
    total = sum(s["row_stop"] - s["row_start"] - len(s["failures"]) for s in committed)
    fraction = 1.0 if k == "all" or total == 0 else min(1.0, int(k) / total)
    return sorted(r for rows in pick_rows(committed, fraction, seed).values() for r in rows)


def _recompute(report: VerifyReport, root: Path, meta: dict, k: int | str,
               teacher_ckpt: Path | str | None, device: str, seed: int) -> None:
    """Re-run the teacher on rows' stored frames (:func:`recompute_rows`) and compare with
    their latents."""
    from salt_vla.cache.latent_store import LatentStore

    pick = recompute_rows(meta, k, seed)
    shards = len({r // meta["latents"]["shard_size"] for r in pick})
    name = f"recompute {'all' if k == 'all' else k} rows"
    source = str(teacher_ckpt) if teacher_ckpt is not None else meta.get("teacher_source", "")
    t = meta["teacher"]
    if not source.startswith("random:") and not Path(source).is_file():
        report.add(name, [f"cannot recompute: the teacher checkpoint {source!r} recorded in "
                          f"cache.json does not exist here; pass --teacher PATH"], "")
        return
    try:
        import torch

        from salt_vla.cache.build import make_teacher_fn
        from salt_vla.models.teacher import TeacherSpec, load_teacher

        spec = TeacherSpec(arch=t["arch"], num_frames=t["num_frames"], img_size=t["img_size"],
                           tubelet=t["tubelet"], patch=t["patch"], layer=t["layer"],
                           target_norm=t["target_norm"])
        teacher = load_teacher(source, spec, device=device)
    except (ValueError, OSError, KeyError) as e:
        report.add(name, [f"cannot recompute: loading teacher {source!r} failed: {e}"], "")
        return
    if teacher.sha256 != t["sha256"]:
        report.add(name, [f"cannot recompute: {source} has sha256 {teacher.sha256[:16]}..., "
                          f"the cache was built from {str(t['sha256'])[:16]}..."], "")
        return
    store = LatentStore(root, allow_incomplete=True, verify_reads=False)  # verified above
    frames = _frames_of_rows(root, meta, pick)
    got_rows = [r for r in pick if r in frames]
    lost = sorted(set(pick) - set(got_rows))
    probs = [f"recompute: no stored frames found for rows {rows_text(lost)}"] if lost else []
    fn = make_teacher_fn(teacher, device, meta["latents"]["dtype"])
    bf16 = meta["teacher"].get("compute", {}).get("precision") == "bf16-autocast" or (
        torch.device(device).type == "cuda")
    worst = 0.0
    bad = []
    for r in got_rows:
        ref = store.get([r])[0].astype(np.float32)
        new = fn(frames[r][None])[0].astype(np.float32)
        scale = float(np.sqrt(np.mean(ref**2))) or 1.0
        if store.quantized:
            # int8: the documented bound, per token, relative to its max |x| (quantize.py),
            # plus fp32-vs-fp32 summation noise (bf16 on CUDA: its RMS noise instead).
            amax = np.abs(new).max(axis=-1, keepdims=True) + 1e-12
            err = float(np.max(np.abs(new - ref) / amax))
            tol = ERROR_BOUND / QMAX + (3e-2 if bf16 else 2e-3)
        elif bf16:
            # bf16 autocast differs run to run at ~1e-2 relative: compare in RMS.
            err = float(np.sqrt(np.mean((new - ref) ** 2))) / scale
            tol = 3e-2
        else:
            # fp32 both times: only fp16 storage rounding (2^-11 relative) and summation order.
            err = float(np.max(np.abs(new - ref) / (np.abs(ref) + 1e-2 * scale)))
            tol = 4e-3
        worst = max(worst, err)
        if not err <= tol:
            bad.append(r)
    if bad:
        probs.append(f"recomputed latents differ from the stored ones beyond tolerance "
                     f"(worst relative error {worst:.3g}) in rows {rows_text(bad)}")
    report.add(name, probs, f"{len(got_rows)} rows in {shards} shards, worst relative error "
               f"{worst:.2g}{' (bf16 RMS)' if bf16 and not store.quantized else ''}"
               f"{' (int8: of the token max)' if store.quantized else ''}")


def _frames_of_rows(root: Path, meta: dict, rows: list[int]) -> dict[int, np.ndarray]:
    """Decoded stored frames of ``rows`` (reads only the shards holding them)."""
    size = meta["latents"]["shard_size"]
    want = set(rows)
    out: dict[int, np.ndarray] = {}
    by_shard = sorted({r // size for r in rows})
    for i in by_shard:
        s = meta["shards"][i]
        try:
            for key, files in iter_tar_files(root / s["frames"]["path"]):
                if int(key) in want:
                    out[int(key)] = group_sample(key, files)["frames"]
        except (OSError, ValueError, json.JSONDecodeError):  # FramesIndexError is a ValueError
            continue
    return out




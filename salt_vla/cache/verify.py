"""``salt cache verify``: check that a store is whole, consistent and what it claims to be.

Every check adds a line to the report; every failure adds a problem naming the file, shard or
rows. ``quick`` skips reading the data (checksums and finite values) and checks only the
structure: manifest, commit records, file sizes, shard indexes, tar headers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from salt_vla.cache.format import (
    DTYPES,
    SHARD_COMMITTED,
    STATUS_COMPLETE,
    CacheFormatError,
    StorePaths,
    dumps,
    frame_key,
    identity_digest,
    read_json,
    read_manifest,
    zarr_array_metadata,
)
from salt_vla.cache.frames_reader import (
    FramesIndexError,
    Member,
    group_sample,
    iter_tar_files,
    scan_members,
    split_member_name,
    table_members,
)
from salt_vla.cache.shard import EMPTY, ShardIndexError, crc32c, read_index
from salt_vla.cache.store_writer import failure_lines

_SHOW = 8  # row ids shown per problem line


def _rows_text(rows: list[int]) -> str:
    more = f", ... ({len(rows)} rows)" if len(rows) > _SHOW else ""
    return ", ".join(map(str, rows[:_SHOW])) + more


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Checks run (name, ok, detail) and the problems found; ``ok`` when there are none."""

    root: Path
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, name: str, problems: list[str], detail: str) -> None:
        self.checks.append(Check(name, not problems, detail if not problems else
                                 f"{len(problems)} problem(s)"))
        self.problems.extend(problems)

    def table(self) -> str:
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}")
        return "\n".join(lines)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _all_finite(data: np.ndarray, dtype: np.dtype) -> bool:
    """No NaN/inf in ``data`` (raw bytes of ``dtype``). For float16, test the exponent bits
    as integers: numpy's float16 arithmetic is emulated and ~10x slower."""
    if dtype == np.dtype("<f2"):
        return not np.any((data.view("<u2") & 0x7C00) == 0x7C00)
    return bool(np.isfinite(data.view(dtype)).all())


def _check_latent_shard(root: Path, meta: dict, shard: dict, quick: bool) -> list[str]:
    lat = meta["latents"]
    path = root / shard["latents"]["path"]
    i = shard["index"]
    where = f"shard {i} latents {path}"
    if not path.exists():
        return [f"missing shard: {where} does not exist"]
    size = path.stat().st_size
    problems = []
    if size != shard["latents"]["bytes"]:
        problems.append(f"truncated or resized file: {where} has {size} bytes, cache.json "
                        f"records {shard['latents']['bytes']}")
    try:
        offsets, nbytes, _ = read_index(path, lat["shard_size"])
    except ShardIndexError as e:
        return problems + [f"damaged shard index: {e}"]
    dtype = DTYPES[lat["dtype"]]
    row_nbytes = lat["tokens"] * lat["dim"] * dtype.itemsize
    start = shard["row_start"]
    failed = {f["row"] for f in shard["failures"]}
    missing, unexpected, badsize = [], [], []
    for local in range(lat["shard_size"]):
        row = start + local
        present = offsets[local] != EMPTY
        expected = row < shard["row_stop"] and row not in failed
        if expected and not present:
            missing.append(row)
        elif present and not expected:
            unexpected.append(row)
        elif present and nbytes[local] != row_nbytes:
            badsize.append(row)
    if missing:
        problems.append(f"rows missing from {where} (not recorded as failures): "
                        f"{_rows_text(missing)}")
    if unexpected:
        problems.append(f"{where} holds rows recorded as failed or past the end: "
                        f"{_rows_text(unexpected)}")
    if badsize:
        problems.append(f"{where}: rows not stored as {row_nbytes} raw bytes: "
                        f"{_rows_text(badsize)}")
    if quick or badsize:
        return problems
    sha = _sha256_file(path)
    if sha != shard["latents"]["sha256"]:
        problems.append(f"checksum mismatch: {where} sha256 {sha[:16]}..., cache.json records "
                        f"{shard['latents']['sha256'][:16]}...")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    crc_bad, nonfinite = [], []
    for local in range(shard["row_stop"] - start):
        off = offsets[local]
        if off == EMPTY:
            continue
        data = mm[int(off):int(off) + row_nbytes]
        want = shard["row_crc32c"][local]
        if want is None or f"{crc32c(data):08x}" != want:
            crc_bad.append(start + local)
        if not _all_finite(data, dtype):
            nonfinite.append(start + local)
    del mm
    if crc_bad:
        problems.append(f"checksum mismatch in {where}, rows {_rows_text(crc_bad)}")
    if nonfinite:
        problems.append(f"non-finite values (NaN/inf) in {where}, rows {_rows_text(nonfinite)}")
    return problems


def _check_frames_shard(root: Path, meta: dict, shard: dict, quick: bool) -> list[str]:
    path = root / shard["frames"]["path"]
    i = shard["index"]
    where = f"shard {i} frames {path}"
    if not path.exists():
        return [f"missing frames shard: {where} does not exist"]
    problems = []
    size = path.stat().st_size
    if size != shard["frames"]["bytes"]:
        problems.append(f"truncated or resized file: {where} has {size} bytes, cache.json "
                        f"records {shard['frames']['bytes']}")
    failed = {f["row"] for f in shard["failures"]}
    want_keys = [frame_key(r) for r in range(shard["row_start"], shard["row_stop"])
                 if r not in failed]
    num_frames = meta["frames"]["num_frames"]
    # Headers only (no data read): the sha256 below covers the content.
    try:
        scanned = scan_members(path)
    except FramesIndexError as e:
        return problems + [f"truncated or unreadable frames tar, {where}: {e}"]
    members: dict[str, list[str]] = {}
    for name, _, _ in scanned:
        key, ext = (p.decode("utf-8", "surrogateescape") for p in split_member_name(name))
        members.setdefault(key, []).append(ext)
    table = shard["frames"].get("members")  # format version 2
    if table is not None:
        problems += _check_member_table(root, where, shard, table, scanned)
    keys = list(members)
    bad = [k for k, exts in members.items()
           if sum(e.endswith(".jpg") for e in exts) != num_frames or "json" not in exts]
    if keys != want_keys:
        problems.append(f"frame count mismatch: {where} has {len(keys)} samples, expected "
                        f"{len(want_keys)} (rows of the shard minus failures)")
    if bad:
        problems.append(f"{where}: samples without {num_frames} frames and a .json: "
                        f"{_rows_text([int(k) for k in bad])}")
    if not quick and not problems:
        sha = _sha256_file(path)
        if sha != shard["frames"]["sha256"]:
            problems.append(f"checksum mismatch: {where} sha256 {sha[:16]}..., cache.json "
                            f"records {shard['frames']['sha256'][:16]}...")
    return problems


def _check_member_table(root: Path, where: str, shard: dict, table: list,
                        scanned: list[Member]) -> list[str]:
    """The recorded member table must say exactly what the tar headers say: the trainer
    reads frames at the recorded offsets without looking at the headers."""
    fix = (f"delete {StorePaths(root).commit_record(shard['index'])} and re-run `salt cache "
           "build` with the same options to rewrite the shard")
    rows = shard["row_stop"] - shard["row_start"]
    try:
        if len(table) != rows:
            raise ValueError(f"{len(table)} entries for {rows} rows")
        recorded = table_members(shard["row_start"], table)
    except (TypeError, ValueError, IndexError) as e:
        return [f"{where}: malformed member table in cache.json ({e}); {fix}"]
    if recorded == scanned:
        return []
    first = next((a for a, b in zip(recorded, scanned, strict=False) if a != b), None)
    if first is None:  # one list is a prefix of the other
        first = max(recorded, scanned, key=len)[min(len(recorded), len(scanned))]
    return [f"{where}: member table in cache.json disagrees with the tar headers (first at "
            f"{first[0].decode(errors='replace')}): the tar or the record changed after the "
            f"build; {fix}"]


def _check_commit_record(paths: StorePaths, meta: dict, shard: dict) -> list[str]:
    rec_path = paths.commit_record(shard["index"])
    try:
        rec = read_json(rec_path, "commit record")
    except CacheFormatError as e:
        return [f"shard {shard['index']}: {e}"]
    if rec.get("identity_sha256") != meta.get("identity_sha256"):
        return [f"shard {shard['index']}: commit record {rec_path} belongs to another build"]
    entry = {k: v for k, v in shard.items() if k != "status"}
    rec = {k: v for k, v in rec.items() if k != "identity_sha256"}
    if rec != entry:
        diff = sorted(k for k in set(rec) | set(entry) if rec.get(k) != entry.get(k))
        return [f"shard {shard['index']}: cache.json differs from commit record {rec_path} "
                f"in {', '.join(diff)} (cache.json edited?)"]
    return []


def verify_store(
    root: Path | str,
    *,
    quick: bool = False,
    recompute: int = 0,
    teacher_ckpt: Path | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check the store at ``root``; see the module docstring and docs/cache-format.md."""
    root = Path(root)
    report = VerifyReport(root)
    try:
        meta = read_manifest(root)
    except CacheFormatError as e:
        report.add("manifest", [str(e)], "")
        return report
    try:
        _verify(report, root, meta, quick, threads, progress)
        if recompute > 0:
            _recompute(report, root, meta, recompute, teacher_ckpt, device, seed)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        # A manifest edited into another shape: say so instead of a traceback.
        report.add("manifest fields", [f"{StorePaths(root).manifest} is malformed "
                                       f"({type(e).__name__}: {e}); rebuild the cache"], "")
    return report


def _verify(report: VerifyReport, root: Path, meta: dict, quick: bool, threads: int | None,
            progress: Callable[[int, int], None] | None) -> None:
    paths = StorePaths(root)

    # --- manifest -------------------------------------------------------------------------
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
    if lat["shape"][0] != n or lat["tokens"] * 1 != lat["shape"][1] or lat["dim"] != \
            lat["shape"][2]:
        probs.append(f"{paths.manifest}: latents shape {lat['shape']} disagrees with rows/"
                     f"tokens/dim")
    if int(np.prod(lat["grid"])) != lat["tokens"]:
        probs.append(f"{paths.manifest}: grid {lat['grid']} does not give {lat['tokens']} tokens")
    if meta.get("status") != STATUS_COMPLETE:
        probs.append(f"{paths.manifest}: status is {meta.get('status')!r}, not complete: "
                     f"re-run `salt cache build` with the same options to finish")
    report.add("manifest", probs, f"{n} rows, {lat['num_shards']} shards, format "
               f"v{meta['format_version']}")

    # --- zarr metadata --------------------------------------------------------------------
    probs = []
    want = zarr_array_metadata(*lat["shape"], lat["dtype"], lat["shard_size"])
    try:
        got = read_json(paths.zarr_json, "zarr array metadata")
        if dumps(got) != dumps(want):
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            probs.append(f"{paths.zarr_json} differs from what cache.json implies in "
                         f"{', '.join(diff)}")
    except CacheFormatError as e:
        probs.append(str(e))
    report.add("zarr metadata", probs, f"[{', '.join(map(str, lat['shape']))}] {lat['dtype']}, "
               f"{lat['shard_size']} rows/shard")

    # --- view -----------------------------------------------------------------------------
    probs = []
    try:
        from salt_vla.data.view import ViewSpec

        current = ViewSpec.from_dict(meta["view"]["spec"]).hash()
        if current != meta["view"]["hash"]:
            probs.append(f"view-hash mismatch: cache.json records {meta['view']['hash']}, the "
                         f"current code computes {current} for the stored view spec (the "
                         f"view code or the manifest changed; rebuild the cache)")
    except (ValueError, TypeError, KeyError) as e:
        probs.append(f"view spec in {paths.manifest} is not readable by this code: {e}")
    report.add("view hash", probs, f"{meta['view']['hash']}")

    # --- shards ---------------------------------------------------------------------------
    shards = meta["shards"]
    commit_probs, lat_probs, frame_probs = [], [], []
    committed = [s for s in shards if s["status"] == SHARD_COMMITTED]
    for s in shards:
        if s["status"] != SHARD_COMMITTED:
            commit_probs.append(f"shard {s['index']} (rows {s['row_start']}.."
                                f"{s['row_stop'] - 1}) is not committed")
    def check_shard(s: dict) -> tuple[list[str], list[str], list[str]]:
        return (_check_commit_record(paths, meta, s), _check_latent_shard(root, meta, s, quick),
                _check_frames_shard(root, meta, s, quick))

    # Shards are independent and hashing releases the GIL: check several at once, report
    # in shard order.
    with ThreadPoolExecutor(max_workers=max(1, threads or min(8, os.cpu_count() or 1))) as ex:
        futures = [ex.submit(check_shard, s) for s in committed]
        results = []
        for k, fut in enumerate(futures):
            results.append(fut.result())
            if progress is not None:
                progress(k + 1, len(committed))
    for c, lp, fp in results:
        commit_probs += c
        lat_probs += lp
        frame_probs += fp
    failed = sum(len(s["failures"]) for s in committed)
    report.add("shards committed", commit_probs, f"{len(committed)}/{len(shards)}")
    what = "index, sizes" if quick else "index, sizes, sha256, row crc32c, finite"
    report.add("latent shards", lat_probs, f"{n - failed} rows present, {failed} failed ({what})")
    report.add("frame shards", frame_probs, f"{n - failed} samples"
               + ("" if quick else ", sha256"))

    # --- failures.jsonl -------------------------------------------------------------------
    probs = []
    if meta.get("status") == STATUS_COMPLETE:
        try:
            got_f = paths.failures.read_bytes()
            if got_f != failure_lines(meta):
                probs.append(f"{paths.failures} does not list the failures recorded in "
                             f"cache.json")
        except FileNotFoundError:
            probs.append(f"{paths.failures} is missing")
    report.add("failures.jsonl", probs, f"{failed} failed rows, "
               f"{len(rows['missing_video_ids'])} missing videos")

    stale = list(paths.tmp.glob("*")) if paths.tmp.exists() else []
    if stale:
        report.notes.append(f"{len(stale)} leftover temporary file(s) in {paths.tmp} (from an "
                            f"interrupted build; harmless, removed by the next build)")


def _recompute(report: VerifyReport, root: Path, meta: dict, k: int,
               teacher_ckpt: Path | str | None, device: str, seed: int) -> None:
    """Re-run the teacher on ``k`` random rows' stored frames and compare with their latents."""
    from salt_vla.cache.latent_store import LatentStore

    name = f"recompute {k} rows"
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
    store = LatentStore(root, allow_incomplete=True)
    valid = store.valid_rows
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(valid, size=min(k, valid.size), replace=False))
    frames = _frames_of_rows(root, meta, pick.tolist())
    got_rows = [r for r in pick.tolist() if r in frames]
    lost = sorted(set(pick.tolist()) - set(got_rows))
    probs = [f"recompute: no stored frames found for rows {_rows_text(lost)}"] if lost else []
    fn = make_teacher_fn(teacher, device, meta["latents"]["dtype"])
    bf16 = meta["teacher"].get("compute", {}).get("precision") == "bf16-autocast" or (
        torch.device(device).type == "cuda")
    worst = 0.0
    bad = []
    for r in got_rows:
        ref = store.get([r])[0].astype(np.float32)
        new = fn(frames[r][None])[0].astype(np.float32)
        scale = float(np.sqrt(np.mean(ref**2))) or 1.0
        if bf16:
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
                     f"(worst relative error {worst:.3g}) in rows {_rows_text(bad)}")
    report.add(name, probs, f"{len(got_rows)} rows, worst relative error {worst:.2g}"
               f"{' (bf16 RMS)' if bf16 else ''}")


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




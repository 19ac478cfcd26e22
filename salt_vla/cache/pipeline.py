"""The build pipeline of one process: decode workers -> teacher batches -> shard writer.

Three stages overlap through bounded queues:

* a decode thread drives the DecodePool (worker processes: decode, view, JPEG round trip)
  and hands results over in row order;
* the calling thread groups them into teacher batches and runs the teacher;
* a writer thread streams rows into the current shard transaction and commits it.

Batches never span shards and hold up to ``batch_size`` decoded rows in row order, so a
row's batch depends only on its shard's contents: a resumed or multi-rank build feeds the
teacher exactly the batches an uninterrupted single-process build does (bitwise equal
results with a deterministic teacher, e.g. fp32 on CPU).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.decode_pool import DecodePool, DecodeResult, DecodeTask, Loader
from salt_vla.cache.progress import Progress
from salt_vla.cache.store_writer import ShardTransaction

TeacherFn = Callable[[np.ndarray], np.ndarray]
"""uint8 ``[B, T, H, W, 3]`` JPEG-decoded pixels -> latents ``[B, tokens, dim]``."""

_END = object()


@dataclass(frozen=True)
class PipelineConfig:
    """Throughput knobs; none of them changes the bytes of the store except ``batch_size``
    on a non-deterministic (GPU) teacher."""

    batch_size: int = 32
    workers: int = 4
    decode_timeout: float | None = 120.0
    prefetch: int = 2
    queue_batches: int = 2
    jpeg_quality: int = 90
    start_method: str = "forkserver"


def default_decoders() -> int:
    """Decoder processes per rank when none are asked for: this rank's share of the CPU cores
    it may use, minus one for the process that runs the teacher and writes the store."""
    import os

    from salt_vla.distributed import rank_env

    return max(1, len(os.sched_getaffinity(0)) // max(1, rank_env().local_world) - 1)


@dataclass
class PipelineStats:
    """What one process did (for the end-of-build summary and the benchmarks)."""

    rows_ok: int = 0
    rows_failed: int = 0
    shards: int = 0
    bytes_written: int = 0
    decode_seconds: float = 0.0  # summed over workers
    teacher_seconds: float = 0.0
    write_seconds: float = 0.0
    wall_seconds: float = 0.0
    respawns: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def run_pipeline(
    root: Path,
    manifest: dict[str, Any],
    shard_tasks: Sequence[tuple[int, list[DecodeTask]]],
    loader: Loader,
    teacher: TeacherFn,
    cfg: PipelineConfig,
    *,
    on_commit: Callable[[int, dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
) -> PipelineStats:
    """Build the shards in ``shard_tasks`` (``(shard index, its tasks in row order)``).

    Each shard's tasks must cover exactly its rows. Returns when every shard is committed;
    raises the first error of any stage (after stopping the others and dropping the
    uncommitted shard's temporary files).
    """
    stats = PipelineStats()
    t_start = time.perf_counter()
    stop = threading.Event()
    errors: list[BaseException] = []
    q_dec: queue.Queue = queue.Queue(maxsize=max(1, cfg.batch_size * cfg.queue_batches))
    q_write: queue.Queue = queue.Queue(maxsize=max(1, cfg.queue_batches))
    lat = manifest["latents"]
    expect = (manifest["frames"]["num_frames"], manifest["frames"]["height"],
              manifest["frames"]["width"], 3)

    def decode_stage() -> None:
        try:
            pool = DecodePool(loader, workers=cfg.workers, timeout=cfg.decode_timeout,
                              prefetch=cfg.prefetch, quality=cfg.jpeg_quality,
                              expect_shape=expect, start_method=cfg.start_method)
            with pool:
                tasks = (t for _, ts in shard_tasks for t in ts)
                for res in pool.imap(tasks):
                    stats.decode_seconds += res.seconds
                    _put(q_dec, res, stop)
                stats.respawns = pool.respawns
            _put(q_dec, _END, stop)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)
            stop.set()

    def write_stage() -> None:
        txn: ShardTransaction | None = None
        try:
            while True:
                try:
                    msg = q_write.get(timeout=0.2)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if msg is _END:
                    return
                t0 = time.perf_counter()
                kind, shard = msg[0], msg[1]
                if kind == "rows":
                    if txn is None:
                        txn = ShardTransaction(root, manifest, shard)
                    for row, latents, jpegs, reason in msg[2]:
                        if reason is None:
                            txn.add_row(row, latents, jpegs)
                        else:
                            txn.add_failure(row, reason)
                elif kind == "end":
                    if txn is None:
                        txn = ShardTransaction(root, manifest, shard)
                    record = txn.commit()
                    txn = None
                    stats.shards += 1
                    stats.bytes_written += record["latents"]["bytes"] + record["frames"]["bytes"]
                    stats.failures.extend(record["failures"])
                    if on_commit is not None:
                        on_commit(shard, record)
                stats.write_seconds += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)
            stop.set()
        finally:
            if txn is not None:
                txn.abort()

    threads = [threading.Thread(target=decode_stage, name="cache-decode", daemon=True),
               threading.Thread(target=write_stage, name="cache-write", daemon=True)]
    for t in threads:
        t.start()

    def next_result() -> Any:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                return q_dec.get(timeout=0.2)
            except queue.Empty:
                continue

    shard_of = {}
    for shard, ts in shard_tasks:
        for t in ts:
            shard_of[t.row] = shard
    ends = {ts[-1].row: shard for shard, ts in shard_tasks if ts}
    batch: list[DecodeResult] = []

    def flush(shard: int) -> None:
        ok = [r for r in batch if r.ok]
        out: np.ndarray | None = None
        if ok:
            t0 = time.perf_counter()
            out = np.asarray(teacher(np.stack([r.pixels for r in ok])))
            stats.teacher_seconds += time.perf_counter() - t0
            if out.shape != (len(ok), lat["tokens"], lat["dim"]):
                raise ValueError(f"teacher returned {out.shape}, expected "
                                 f"{(len(ok), lat['tokens'], lat['dim'])}")
        items = []
        k = 0
        for r in batch:
            if r.ok:
                assert out is not None
                items.append((r.task.row, out[k], r.jpegs, None))
                k += 1
            else:
                items.append((r.task.row, None, None, r.reason))
        _put(q_write, ("rows", shard, items), stop)
        if progress is not None:
            progress.update(ok=len(ok), failed=len(batch) - len(ok))
        stats.rows_ok += len(ok)
        stats.rows_failed += len(batch) - len(ok)
        batch.clear()

    try:
        while True:
            res = next_result()
            if res is _END:
                break
            row = res.task.row
            shard = shard_of[row]
            batch.append(res)
            if sum(r.ok for r in batch) >= cfg.batch_size or row in ends:
                flush(shard)
            if row in ends:
                _put(q_write, ("end", shard), stop)
        _put(q_write, _END, stop)
        for t in threads:
            t.join()
    except BaseException as e:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        if isinstance(e, _Stop) and errors:
            raise errors[0] from None
        raise
    if errors:
        raise errors[0]
    stats.wall_seconds = time.perf_counter() - t_start
    return stats

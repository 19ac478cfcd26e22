"""Training data: a deterministic sample stream, the clip dataset, and the batch feeder.

The stream is the concatenation of one seeded permutation of the rows per epoch; optimiser
step ``s`` takes global positions ``[s * B, (s + 1) * B)`` (``B`` = global batch), split
into contiguous slices per gradient-accumulation micro-step and per rank. So:

- the data position is just the step: resuming at step ``s`` replays nothing and skips
  nothing, and that holds even when the number of processes changes;
- within an epoch every row appears exactly once across all ranks and workers (workers get
  whole micro-batches from the DataLoader's batch sampler, in order);
- no row is ever dropped: a batch that straddles an epoch boundary takes the end of one
  permutation and the start of the next.

Workers decode only frames (uint8, the smallest form of a batch: nothing wider crosses
``/dev/shm``). Targets are read from the memory-mapped store by a thread in the main
process, which also overlaps that read and the pinned copy with the step.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

_DOMAIN = 0x5A17_DA7A  # keeps the data-order stream apart from mask/view streams
FEEDER_DEPTH = 2  # batches the feeder thread keeps ready beyond the loader's prefetch
READ_AHEAD = 1  # batches whose targets are being read while the feeder waits for frames


class FrameSource(Protocol):
    """Random access to a clip's uint8 frames ``[T, H, W, 3]`` by store row."""

    def __len__(self) -> int: ...

    def frames(self, row: int) -> np.ndarray: ...


class TargetSource(Protocol):
    """Random access to teacher latents ``[len(rows), N, D]`` by store row."""

    def get(self, rows: Sequence[int]) -> np.ndarray: ...


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of ``epoch``: a permutation of ``range(num_rows)`` from (seed, epoch)."""
    ss = np.random.SeedSequence([_DOMAIN, int(seed), int(epoch)])
    return np.random.Generator(np.random.PCG64(ss)).permutation(num_rows)


@dataclass(frozen=True)
class StreamLayout:
    """How a global batch is cut: ``world_size`` ranks x ``grad_accum`` micro-steps."""

    num_rows: int
    batch_size: int
    world_size: int = 1
    grad_accum: int = 1

    def __post_init__(self) -> None:
        per = self.world_size * self.grad_accum
        if self.batch_size % per:
            raise ValueError(
                f"batch_size={self.batch_size} must be divisible by processes x grad_accum = "
                f"{self.world_size} x {self.grad_accum}; change batch_size or grad_accum"
            )
        if self.num_rows <= 0:
            raise ValueError("the dataset has no rows")

    @property
    def micro_batch(self) -> int:
        """Clips per process per forward/backward."""
        return self.batch_size // (self.world_size * self.grad_accum)

    def steps_for(self, epochs: float) -> int:
        """Optimiser steps in ``epochs`` passes over the rows."""
        return int(epochs * self.num_rows // self.batch_size)

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` optimiser steps."""
        return step * self.batch_size / self.num_rows

    def positions(self, step: int, micro: int, rank: int) -> range:
        """Global stream positions for (optimiser step, micro-step, rank)."""
        b = self.micro_batch
        start = step * self.batch_size + micro * self.world_size * b + rank * b
        return range(start, start + b)


class StreamBatches:
    """Batch sampler: yields this rank's micro-batches as lists of ``(epoch, index)`` keys,
    for optimiser steps ``start_step .. total_steps - 1``."""

    def __init__(
        self, layout: StreamLayout, rank: int, seed: int, start_step: int, total_steps: int
    ) -> None:
        self.layout = layout
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _key(self, pos: int) -> tuple[int, int]:
        epoch, i = divmod(pos, self.layout.num_rows)
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.layout.num_rows, self.seed, epoch)
            self._perm_epoch = epoch
        return epoch, int(self._perm[i])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.layout.grad_accum):
                yield [self._key(p) for p in self.layout.positions(step, micro, self.rank)]

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.layout.grad_accum


class ClipDataset(Dataset):
    """Map-style dataset keyed by ``(epoch, index)``; ``index`` counts the rows in use and
    ``rows[index]`` is the store row. Samples: ``{"index", "epoch", "row", "frames"}``.

    ``threads`` > 1 decodes a batch's clips in that many threads of the calling process
    (JPEG decoding releases the GIL): the loader mode that needs no /dev/shm at all.
    """

    def __init__(self, frames: FrameSource, rows: np.ndarray, threads: int = 0) -> None:
        self.source = frames
        self.rows = np.asarray(rows, dtype=np.int64)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None  # threads do not cross processes
        return state

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """A batch's samples (the DataLoader calls this instead of one ``[]`` per key)."""
        if self.threads <= 1:
            return [self[k] for k in keys]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="salt-decode")
        return list(self._pool.map(self.__getitem__, keys))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        row = int(self.rows[index])
        frames = np.ascontiguousarray(self.source.frames(row))
        # "index" keys the masks: the store row, so a clip's masks depend on (seed, epoch,
        # row) only, not on which rank or worker loaded it.
        return {"index": row, "epoch": epoch, "row": row, "frames": torch.from_numpy(frames)}


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    """Bytes available on the shared-memory filesystem DataLoader workers send batches
    through (None where there is none)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def plan_loader(
    num_workers: int, decode_threads: int, prefetch_factor: int, batch_bytes: int,
    shm_free: int | None,
) -> tuple[int, int, str | None]:
    """``(num_workers, decode_threads, warning)`` to use.

    Worker processes hand batches to the main process through /dev/shm: up to
    ``num_workers * prefetch_factor`` batches of uint8 frames in flight, plus the
    :class:`BatchFeeder` queue, the batch in training and one being collated (measured:
    ``benchmarks/bench_train_tiny.py``). Where that does not fit (docker's
    default /dev/shm is 64 MiB; one batch of 32 clips at 16 x 224 is 77 MB) workers would
    die with a bus error, so decode in as many threads instead.
    """
    if num_workers == 0 or shm_free is None:
        return num_workers, decode_threads, None
    need = (num_workers * prefetch_factor + FEEDER_DEPTH + READ_AHEAD + 2) * batch_bytes
    if need * 5 // 4 <= shm_free:
        return num_workers, decode_threads, None
    return 0, max(num_workers, decode_threads), (
        f"/dev/shm has {shm_free / 2**20:.0f} MiB free but {num_workers} workers x "
        f"{prefetch_factor} prefetched batches of {batch_bytes / 2**20:.0f} MiB need "
        f"{need / 2**20:.0f} MiB: decoding in {max(num_workers, decode_threads)} threads of "
        "the main process instead (no /dev/shm). Raise /dev/shm (docker: --shm-size) to use "
        "worker processes."
    )


def make_loader(
    dataset: ClipDataset,
    batches: StreamBatches,
    collate_fn: Any,
    num_workers: int,
    prefetch_factor: int,
    pin_memory: bool,
) -> DataLoader:
    """DataLoader over the stream: order fixed by ``batches`` whatever ``num_workers``."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False}
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **extra,
    )


@dataclass
class Batch:
    """One micro-batch, host side: frames ``[B, T, H, W, 3]`` uint8, targets ``[B, N, D]``
    (None for online targets), masks per group, the store rows and the batch's epoch."""

    frames: torch.Tensor
    targets: torch.Tensor | None
    masks: list[tuple[torch.Tensor, torch.Tensor]]
    rows: torch.Tensor
    epoch: int

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(
            frames=self.frames.to(device, non_blocking=nb),
            targets=None if self.targets is None else self.targets.to(device, non_blocking=nb),
            masks=[(c.to(device, non_blocking=nb), t.to(device, non_blocking=nb))
                   for c, t in self.masks],
            rows=self.rows,
            epoch=self.epoch,
        )


class BatchFeeder:
    """Iterates :class:`Batch` es: a thread pulls collated batches from the DataLoader, adds
    the targets for their rows from ``targets`` (pinned when ``pin``), and queues ``depth``
    ahead. Exceptions from the loader or the store are re-raised in the caller."""

    _END = object()

    def __init__(
        self, loader: DataLoader, targets: TargetSource | None, pin: bool,
        depth: int = FEEDER_DEPTH,
    ) -> None:
        self.loader = loader
        self.targets = targets
        self.pin = pin
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._iter: Iterator[dict[str, Any]] | None = None
        self._thread = threading.Thread(target=self._run, name="salt-batch-feeder", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._iter = iter(self.loader)
            # A store with get_async (LatentStore) reads a batch's targets while the next
            # batch's frames are awaited: READ_AHEAD batches of targets in flight at most.
            pending: deque[tuple[dict[str, Any], Any]] = deque()
            for raw in self._iter:
                pending.append((raw, self._read(raw["row"])))
                if len(pending) > READ_AHEAD and not self._emit(*pending.popleft()):
                    return
            while pending:
                if not self._emit(*pending.popleft()):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def _read(self, rows: torch.Tensor) -> Any:
        if self.targets is None:
            return None
        start = getattr(self.targets, "get_async", None)
        return start(rows.tolist()) if start is not None else self.targets.get(rows.tolist())

    def _emit(self, raw: dict[str, Any], read: Any) -> bool:
        targets = None
        if read is not None:
            arr = read.result() if hasattr(read, "result") else read
            targets = torch.from_numpy(np.ascontiguousarray(arr))
            if self.pin:
                targets = targets.pin_memory()
        epoch = raw["epoch"]
        return self._put(Batch(
            frames=raw["frames"],
            targets=targets,
            masks=raw["masks"],
            rows=raw["row"],
            epoch=int(epoch[0]) if isinstance(epoch, torch.Tensor) else int(epoch),
        ))

    def __iter__(self) -> BatchFeeder:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and the loader's workers (safe to call twice)."""
        self._stop.set()
        self._thread.join(timeout=10)
        # Shut the workers down now rather than at garbage collection.
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

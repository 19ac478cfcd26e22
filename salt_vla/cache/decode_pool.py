"""Decoder worker processes that survive bad videos: exceptions, crashes and hangs.

Each worker owns a pipe; the pool sends it a few tasks ahead, the worker answers them in
order. A worker that dies (a segfault in a codec, the OOM killer) or takes longer than
``timeout`` on one video is killed and replaced; that video is reported as failed with the
reason, the tasks queued behind it are re-sent elsewhere, and the build goes on. Results
come back in task order, and at most ``workers * prefetch`` tasks are in flight, so memory
stays bounded whatever the dataset size.

A worker runs ``loader(path, video_id, view_index) -> uint8 [T, H, W, 3]`` then the JPEG
round trip (frames.jpeg_round_trip), so the expensive CPU work all happens in workers.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from salt_vla.cache.frames import jpeg_round_trip
from salt_vla.errors import ConfigError

Loader = Callable[[str, str, int], np.ndarray]


@dataclass(frozen=True)
class DecodeTask:
    """One row to decode: the video at ``path`` (``video_id``), view ``view_index``."""

    row: int
    path: str
    video_id: str
    view_index: int


@dataclass
class DecodeResult:
    """Outcome of a task: ``pixels`` (the teacher's input, JPEG-decoded) and ``jpegs``, or a
    ``reason`` when the video could not be decoded."""

    task: DecodeTask
    pixels: np.ndarray | None = None
    jpegs: list[bytes] | None = None
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ViewLoader:
    """The build's loader: view ``view_index`` of a video per a ViewSpec (picklable, and
    importing only the video code in the worker, not torch)."""

    spec: Any  # salt_vla.data.view.ViewSpec
    backend: str = "auto"

    def __call__(self, path: str, video_id: str, view_index: int) -> np.ndarray:
        from salt_vla.data.view import load_view

        return load_view(path, self.spec, video_id, view_index, backend=self.backend)


def decode_one(loader: Loader, task: DecodeTask, quality: int,
               expect: tuple[int, ...] | None) -> tuple[np.ndarray, list[bytes]]:
    """Load, check and JPEG-round-trip one view (what a worker does for a task)."""
    frames = loader(task.path, task.video_id, task.view_index)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"loader returned {frames.dtype} {frames.shape}, expected uint8 "
                         f"[T, H, W, 3]")
    if expect is not None and tuple(frames.shape) != tuple(expect):
        raise ValueError(f"loader returned shape {frames.shape}, expected {tuple(expect)}")
    jpegs, pixels = jpeg_round_trip(frames, quality)
    return pixels, jpegs


def _worker_main(conn: Connection, loader: Loader, quality: int,
                 expect: tuple[int, ...] | None) -> None:
    # Ctrl-C reaches the whole process group; the parent decides how to stop, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # parent gone: nothing left to do
            return
        if task is None:
            return
        t0 = time.perf_counter()
        try:
            pixels, jpegs = decode_one(loader, task, quality, expect)
            msg: tuple[Any, ...] = ("ok", pixels, jpegs, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - any failure of one video is data, not a bug
            msg = ("fail", f"{type(e).__name__}: {e}"[:2000], time.perf_counter() - t0)
        try:
            conn.send(msg)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, loader: Loader, quality: int,
                 expect: tuple[int, ...] | None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, loader, quality, expect),
                                daemon=True)
        self.proc.start()
        child.close()
        self.queue: deque[tuple[int, DecodeTask]] = deque()  # sent, not yet answered
        self.head_since = time.monotonic()

    def send(self, seq: int, task: DecodeTask) -> None:
        if not self.queue:
            self.head_since = time.monotonic()
        self.queue.append((seq, task))
        self.conn.send(task)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class DecodePool:
    """``workers`` decoder processes; ``imap(tasks)`` yields a DecodeResult per task in order.

    ``timeout`` seconds per video (None: no limit). ``start_method`` defaults to forkserver:
    forking the build process (torch, CUDA, threads) is unsafe, and forkserver makes
    replacing a killed worker cheap.
    """

    def __init__(self, loader: Loader, *, workers: int = 4, timeout: float | None = 120.0,
                 prefetch: int = 2, quality: int = 90, expect_shape: tuple[int, ...] | None = None,
                 start_method: str = "forkserver") -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.loader = loader
        self.workers = workers
        self.timeout = timeout
        self.prefetch = max(1, prefetch)
        self.quality = quality
        self.expect = expect_shape
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # Workers fork from a server that already imported the decoders: a replacement
            # for a killed worker starts in milliseconds.
            self.ctx.set_forkserver_preload(["salt_vla.cache.decode_pool", "salt_vla.data.view"])
        self._pool: list[_Worker] = []
        self.respawns = 0

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.loader, self.quality, self.expect)

    def __enter__(self) -> DecodePool:
        self._pool = [self._spawn() for _ in range(self.workers)]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for w in self._pool:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2.0
        for w in self._pool:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
        self._pool = []

    def _replace(self, w: _Worker) -> list[tuple[int, DecodeTask]]:
        """Kill ``w``, start a fresh worker in its place; returns the tasks ``w`` still held."""
        left = list(w.queue)
        w.kill()
        self._pool[self._pool.index(w)] = self._spawn()
        self.respawns += 1
        return left

    def imap(self, tasks: Iterable[DecodeTask]) -> Iterator[DecodeResult]:
        if not self._pool:
            raise RuntimeError("use the DecodePool as a context manager")
        source = iter(tasks)
        retry: deque[tuple[int, DecodeTask]] = deque()
        done: dict[int, DecodeResult] = {}
        next_seq = 0  # next new task's sequence number
        next_out = 0  # next result to yield
        exhausted = False
        window = self.workers * self.prefetch
        while True:
            # Dispatch: fill each worker up to `prefetch`, never more than `window` ahead.
            for i, w in enumerate(self._pool):
                if not w.queue and not w.proc.is_alive():  # died idle: nothing to blame
                    self._replace(w)
                    w = self._pool[i]
                while len(w.queue) < self.prefetch:
                    if retry:
                        seq, task = retry.popleft()
                    elif not exhausted and next_seq < next_out + window:
                        try:
                            task = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        seq = next_seq
                        next_seq += 1
                    else:
                        break
                    try:
                        w.send(seq, task)
                    except (BrokenPipeError, OSError):
                        w.queue.append((seq, task))  # handled as a dead worker below
                        break
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if exhausted and next_out == next_seq:
                return
            busy = [w for w in self._pool if w.queue]
            if not busy:
                continue
            now = time.monotonic()
            wait_for = 1.0
            if self.timeout is not None:
                wait_for = max(0.0, min(w.head_since + self.timeout for w in busy) - now)
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                             timeout=min(wait_for, 1.0)))
            for w in list(busy):
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None:
                        seq, task = w.queue.popleft()
                        w.head_since = time.monotonic()
                        if msg[0] == "ok":
                            done[seq] = DecodeResult(task, pixels=msg[1], jpegs=msg[2],
                                                     seconds=msg[3])
                        else:
                            done[seq] = DecodeResult(task, reason=msg[1], seconds=msg[2])
                        continue
                if w.conn in ready or w.proc.sentinel in ready:
                    # Died: its head task killed it (crash/OOM); re-send the rest.
                    w.proc.join(timeout=1)
                    code = w.proc.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
                    seq, task = w.queue.popleft()
                    done[seq] = DecodeResult(
                        task, reason=f"decoder process died (exit {how}) on this video")
                    retry.extend(self._replace(w))
                elif self.timeout is not None and now - w.head_since > self.timeout:
                    seq, task = w.queue.popleft()
                    done[seq] = DecodeResult(
                        task, reason=f"decoding timed out after {self.timeout:g} s",
                        seconds=now - w.head_since)
                    retry.extend(self._replace(w))
            if retry:
                retry = deque(sorted(retry, key=lambda x: x[0]))

"""How the store's readers touch files: a bounded LRU of open descriptors, the process's
open-file budget, exact-size ``pread`` s, and counters of the bytes asked for vs needed.

A store of SSv2's train split has 660 shards (2,640 with 4 views), two files each; a reader
that keeps every touched file open dies with ``EMFILE`` under the common ``ulimit -n 1024``.
So each reader (:class:`OpenFiles`: the latents, the int8 scales, the frames tars) keeps at
most ``N`` descriptors and closes the least recently used one first, with

    N = max(2, (soft - min(128, soft // 2)) // 4)

where ``soft`` is the process's ``RLIMIT_NOFILE`` soft limit after :func:`raise_nofile_limit`
(soft raised to the hard limit, once per process). ``min(128, soft // 2)`` is left for
everything else (the interpreter, torch's DataLoader pipes and shared-memory descriptors,
sockets, W&B, logs), and a quarter of the rest per reader leaves room for three readers in
one process plus, after a fork, a fourth (descriptors a forked child inherits are closed in
the child at once, see :func:`_close_in_child`). ``soft=1024`` gives ``N=224``.

Two kinds of handle, both reading exactly the bytes asked for:

- ``kind="fd"``: descriptors advised ``POSIX_FADV_RANDOM`` for ``pread`` s (the frames
  tars: a row's JPEGs are one short read);
- ``kind="map"``: read-only memory maps advised ``MADV_RANDOM`` (a fault maps its page and
  reads no other; without it a fault reads the device's whole read-around window, 8 MB on the
  VM this was measured on: 4.4-4.6x the needed bytes of a cold shuffled read), on which the
  latents reader hints a batch's row ranges with ``MADV_WILLNEED`` (the kernel queues exactly
  those pages at once: the device sees a deep queue) before copying them out. A map holds one
  descriptor (Python's mmap keeps a duplicate), so the LRU bounds maps and descriptors alike.
  Copying from a map is a user-space copy from the page cache: warm reads run at memory-map
  speed, which a ``pread`` into the caller's array does not reach on the measuring VM
  (``benchmarks/bench_latent_store.py``).
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError

RESERVE = 128  # descriptors left to the rest of the process (at most half the limit)
READER_SHARE = 4  # each reader may use 1/READER_SHARE of what is left
MIN_OPEN = 2  # a reader needs at least this many to make progress with a few threads
# setrlimit refuses values above fs.nr_open (1,048,576 by default) even when the hard limit
# is RLIM_INFINITY.
_NR_OPEN_DEFAULT = 1 << 20

_raised: tuple[int, int] | None = None
_raise_lock = threading.Lock()


class TooManyOpenFilesError(SaltError, OSError):
    """The process ran out of file descriptors (EMFILE/ENFILE); the message names the limit
    and the fix."""


def nofile_limits() -> tuple[int, int]:
    """``(soft, hard)`` of RLIMIT_NOFILE; an infinite hard limit reads as fs.nr_open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = _nr_open()
    return (cap if soft == resource.RLIM_INFINITY else soft,
            cap if hard == resource.RLIM_INFINITY else hard)


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return _NR_OPEN_DEFAULT


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, once per process (the first reader of
    a store does it); returns ``(soft, hard)`` afterwards. Raising the soft limit needs no
    privilege; where the kernel refuses anyway, the limit stays and the readers' budget
    follows it."""
    global _raised
    with _raise_lock:
        if _raised is None:
            soft, hard = nofile_limits()
            if soft < hard:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
                        resource.RLIMIT_NOFILE)[1]))
                except (ValueError, OSError):
                    pass
            _raised = nofile_limits()
        return nofile_limits()


def reader_budget(soft: int | None = None) -> int:
    """How many descriptors one reader may keep open (the formula in the module docstring)."""
    soft = nofile_limits()[0] if soft is None else soft
    return max(MIN_OPEN, (soft - min(RESERVE, soft // 2)) // READER_SHARE)


def too_many_open_files(path: Path | str, e: OSError) -> TooManyOpenFilesError:
    """The error a reader raises when ``open(path)`` fails with EMFILE/ENFILE."""
    soft, hard = nofile_limits()
    if e.errno == errno.ENFILE:
        what = "the system's open-file table is full (ENFILE, fs.file-max)"
        fix = "close other programs' files or raise fs.file-max (sysctl)"
    else:
        what = (f"this process reached its limit of {soft} open descriptors (ulimit -n; "
                f"hard limit {hard})")
        fix = (f"raise the limit where salt starts, e.g. `ulimit -n {max(4096, 2 * soft)}` "
               f"(the hard limit {hard} is what salt can raise to by itself; a container or "
               "systemd unit sets it: docker --ulimit nofile=65536:65536, LimitNOFILE=)")
    return TooManyOpenFilesError(
        f"cannot open {path}: too many open files: {what}. The store's readers keep at most "
        f"{reader_budget()} shard files open each, so the rest belong to other parts of the "
        f"process (DataLoader workers, sockets). Fix: {fix}.")


@dataclass
class ReadStats:
    """What a reader asked the OS for. ``bytes_needed``: the row (or frame) bytes the caller
    wanted; ``bytes_read``: bytes requested from the kernel (``pread``), so their ratio is the
    reader's own amplification (the index tails it reads once per shard, and for frames the
    tar headers between a row's members). What the device delivered (kernel readahead
    included) is the process's ``read_bytes`` in ``/proc/self/io``: see
    ``benchmarks/bench_latent_store.py --cold``."""

    rows: int = 0
    bytes_needed: int = 0
    bytes_read: int = 0
    reads: int = 0
    opened: int = 0
    closed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, rows: int, needed: int, read: int, reads: int) -> None:
        with self.lock:
            self.rows += rows
            self.bytes_needed += needed
            self.bytes_read += read
            self.reads += reads

    @property
    def amplification(self) -> float:
        return self.bytes_read / self.bytes_needed if self.bytes_needed else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"rows": self.rows, "bytes_needed": self.bytes_needed,
                "bytes_read": self.bytes_read, "reads": self.reads, "opened": self.opened,
                "closed": self.closed, "amplification": round(self.amplification, 4)}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


_LIVE: weakref.WeakSet[OpenFiles] = weakref.WeakSet()


def _close_in_child() -> None:
    """After a fork, in the child: close the descriptors every OpenFiles inherited. They are
    the child's own copies (closing them leaves the parent's open), and kept they would count
    against the child's limit without being tracked by its LRU."""
    for files in list(_LIVE):
        files._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class OpenFiles:
    """At most ``capacity`` read-only handles of ``paths`` open at once (descriptors, or
    memory maps for ``kind="map"``); the least recently used idle one is closed to make room.

    ``with files.fd(i) as h:`` holds handle ``i`` open for the block (one in use by a thread
    is never closed by another; a thread that needs a new one while all ``capacity`` are in
    use waits). Safe across fork (the child starts with none open) and pickling (none cross).
    Descriptors are advised ``POSIX_FADV_RANDOM`` and maps ``MADV_RANDOM``: read exactly the
    pages asked for.
    """

    def __init__(self, paths: Sequence[Path | str], capacity: int | None = None,
                 kind: str = "fd", stats: ReadStats | None = None) -> None:
        if kind not in ("fd", "map"):
            raise ValueError(f"kind={kind!r}: 'fd' or 'map'")
        raise_nofile_limit()
        # As given: os.open takes either, and building thousands of Paths costs a second.
        self.paths = paths
        self.capacity = max(1, reader_budget() if capacity is None else capacity)
        self.kind = kind
        self.stats = stats if stats is not None else ReadStats()
        self._init_state()
        _LIVE.add(self)

    def _init_state(self) -> None:
        self._open: OrderedDict[int, Any] = OrderedDict()  # path index -> handle, LRU first
        self._busy: dict[int, int] = {}  # path index -> holders
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @contextmanager
    def fd(self, i: int) -> Iterator[Any]:
        fd = self._acquire(i)
        try:
            yield fd
        finally:
            with self._cond:
                self._busy[i] -= 1
                if not self._busy[i]:
                    del self._busy[i]
                self._cond.notify()

    def _acquire(self, i: int) -> Any:
        with self._cond:
            while True:
                fd = self._open.get(i)
                if fd is not None:
                    self._open.move_to_end(i)
                    break
                if len(self._open) < self.capacity or self._evict_one():
                    fd = self._open_new(i)
                    break
                self._cond.wait()  # every descriptor is in use by another thread
            self._busy[i] = self._busy.get(i, 0) + 1
            return fd

    def _evict_one(self) -> bool:
        for j in self._open:  # least recently used first
            if j not in self._busy:
                _close_handle(self._open.pop(j))
                with self.stats.lock:
                    self.stats.closed += 1
                return True
        return False

    def _open_new(self, i: int) -> Any:
        path = self.paths[i]
        try:
            handle = self._open_handle(path)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            while self._evict_one():  # other parts of the process used the room: retry once
                pass
            try:
                handle = self._open_handle(path)
            except OSError as e2:
                if e2.errno in (errno.EMFILE, errno.ENFILE):
                    raise too_many_open_files(path, e2) from None
                raise
        self._open[i] = handle
        with self.stats.lock:
            self.stats.opened += 1
        return handle

    def _open_handle(self, path: Path) -> Any:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if self.kind == "fd":
            if hasattr(os, "POSIX_FADV_RANDOM"):
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                except OSError:
                    pass  # advice only
            return fd
        try:
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # keeps its own duplicate
        finally:
            os.close(fd)
        if hasattr(mmap, "MADV_RANDOM"):
            m.madvise(mmap.MADV_RANDOM)
        return m

    def close(self) -> None:
        """Close every idle descriptor (all of them when no thread is reading)."""
        with self._cond:
            while self._evict_one():
                pass

    def _after_fork(self) -> None:
        for handle in self._open.values():
            _close_handle(handle)
        self._init_state()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_open", "_busy", "_cond"):
            del state[k]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_state()
        _LIVE.add(self)

    def __del__(self) -> None:
        try:
            for handle in self._open.values():
                _close_handle(handle)
        except AttributeError:
            pass


def _close_handle(handle: Any) -> None:
    """Close a descriptor or a map. A map still exported (a view of it alive, e.g. in a
    forked child that inherited a copy mid-read) is dropped instead: its descriptor goes
    when the last view does."""
    try:
        if isinstance(handle, int):
            os.close(handle)
        else:
            handle.close()
    except (OSError, BufferError):
        pass


def pread_exact(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` (a writable byte view) from ``offset``; returns the bytes read, fewer
    than ``len(buf)`` only at the end of the file (the caller names the truncated file)."""
    done, want = 0, len(buf)
    while done < want:
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done

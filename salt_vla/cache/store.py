"""Opening a store to read it whole: cache.json read once, the latents reader, the frames
reader, and the check that the store holds what its consumer would produce itself.

A student trained on a store must see the pixels the teacher saw and predict latents of the
token grid and width the store holds. The consumer states what it would produce in a
:class:`StoreExpectation`, in its own words (the trainer names its config keys and the
``--set`` that fixes each value), and :func:`check_store` refuses a store that differs,
naming both values of every mismatch. So this module needs nothing from the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salt_vla.cache.format import read_manifest
from salt_vla.cache.frames_reader import TarFrames
from salt_vla.cache.latent_store import LatentStore
from salt_vla.errors import SaltError


class CacheMismatchError(SaltError, ValueError):
    """The cache was built for another view or teacher than the caller expects."""


@dataclass(frozen=True)
class StoreExpectation:
    """What the consumer of a store would produce itself, and how it names each value.

    ``view`` is a ``salt_vla.data.view.ViewSpec`` (only ``hash()`` and ``to_dict()`` are
    used); ``grid`` the ``(t, h, w)`` token grid; ``dim`` the teacher width. ``adopts_view``:
    ``view`` was taken from the store itself, so a hash mismatch means the view code changed
    since the build, not that the consumer chose another view. The strings go into the error
    message: ``title`` ("experiment 'tiny'"), ``by`` (who holds the expected values:
    "config"), ``view_name`` ("the config's view 'tiny-8x64'"), ``grid_from`` (how the grid
    was derived), ``dim_key`` (the setting that holds ``dim``), and the fixes (``dim_fix`` may
    contain ``{store}``, replaced by the store's width).
    """

    view: Any
    grid: tuple[int, int, int]
    dim: int
    adopts_view: bool = False
    title: str = "the expected store"
    by: str = "expected"
    view_name: str = "the expected view"
    view_fix: str = ""
    grid_from: str = ""
    dim_key: str = "dim"
    dim_fix: str = ""


def store_mismatches(meta: dict[str, Any], expect: StoreExpectation) -> list[str]:
    """Every way the store (``cache.json`` dict) differs from ``expect``, one line each."""
    problems = []
    want_hash, have_hash = expect.view.hash(), meta["view"]["hash"]
    if want_hash != have_hash and expect.adopts_view:
        problems.append(
            f"view: the store records view hash {have_hash} but its spec "
            f"({meta['view'].get('spec')}) hashes to {want_hash} in this version of the "
            "view code: its frames were made by other code; rebuild the cache"
        )
    elif want_hash != have_hash:
        problems.append(
            f"view: the store was built with view hash {have_hash} "
            f"({meta['view'].get('spec')}), {expect.view_name} has hash {want_hash} "
            f"({expect.view.to_dict()}): the student would not see the teacher's pixels"
            + (f" ({expect.view_fix})" if expect.view_fix else "")
        )
    have_grid = tuple(meta["latents"]["grid"])
    if tuple(expect.grid) != have_grid:
        problems.append(
            f"token grid: store {have_grid} (t, h, w), {expect.by} {tuple(expect.grid)}"
            + (f" ({expect.grid_from})" if expect.grid_from else "")
        )
    have_dim = int(meta["teacher"]["dim"])
    if have_dim != expect.dim:
        problems.append(
            f"teacher width: store {have_dim} ({meta['teacher'].get('arch')}), {expect.by} "
            f"{expect.dim_key}={expect.dim}"
            + (f" ({expect.dim_fix.format(store=have_dim)})" if expect.dim_fix else "")
        )
    return problems


def check_store(meta: dict[str, Any], expect: StoreExpectation, where: Path | str) -> None:
    """Refuse a store that does not match ``expect``, naming both values of each mismatch."""
    problems = store_mismatches(meta, expect)
    if problems:
        raise CacheMismatchError(
            f"the cache at {where} does not match {expect.title}:\n  - "
            + "\n  - ".join(problems)
        )


@dataclass
class Store:
    """An opened store: ``latents.get(rows) -> [len(rows), tokens, dim]``,
    ``frames.frames(row) -> uint8 [T, H, W, 3]``, and ``rows``, the rows that have both
    (int64, increasing; failed videos excluded).

    ``meta`` is cache.json as read, less the frames member tables: those live on as the
    frame index's flat arrays, and as Python lists they would hold ~120 MB of ints for the
    SSv2 train split.
    """

    root: Path
    meta: dict[str, Any]
    latents: LatentStore
    frames: TarFrames
    rows: np.ndarray

    @property
    def view_hash(self) -> str:
        return self.meta["view"]["hash"]

    @property
    def teacher(self) -> dict[str, Any]:
        return self.meta["teacher"]


def open_store(root: Path | str,
               expect: StoreExpectation | Callable[[dict[str, Any]], StoreExpectation] | None
               = None, *, threads: int = 8) -> Store:
    """Open the complete store at ``root`` for reading every row.

    Reads cache.json once; checks the latents' metadata, then ``expect`` (or
    ``expect(meta)``, for a consumer whose expectation depends on the store, e.g. one that
    adopts the store's view) before indexing any frames; indexes the frames tars from the
    commit records' member tables (a header scan only for format-version-1 stores); refuses
    a store whose frames lack rows that have latents.
    """
    root = Path(root)
    meta = read_manifest(root)
    latents = LatentStore(root, manifest=meta)
    if expect is not None:
        check_store(meta, expect(meta) if callable(expect) else expect, root)
    frames = TarFrames.from_manifest(root, meta, threads)
    for s in meta["shards"]:
        s.get("frames", {}).pop("members", None)
    rows = np.intersect1d(latents.valid_rows, frames.rows)
    if len(rows) < len(latents.valid_rows):
        missing = np.setdiff1d(latents.valid_rows, frames.rows)[:5].tolist()
        raise CacheMismatchError(
            f"the frames tars of {root} lack rows that have latents (e.g. {missing}); "
            "run `salt cache verify`"
        )
    return Store(root=root, meta=meta, latents=latents, frames=frames, rows=rows)

"""Building a store from tiny synthetic videos, and reading it back every supported way."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CACHE_BAD_VIDEOS

from salt_vla.cache.decode_pool import DecodePool, DecodeTask
from salt_vla.cache.latent_store import LatentStore, MissingRowError


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_store_layout_and_manifest(cache_store: Path) -> None:
    meta = json.loads((cache_store / "cache.json").read_text())
    assert meta["status"] == "complete"
    assert meta["latents"]["shape"] == [13, 64, 192]  # 8 frames of 64 px, tubelet 2, patch 16
    assert meta["latents"]["grid"] == [4, 4, 4] and meta["latents"]["dtype"] == "float16"
    assert meta["teacher"]["arch"] == "vit_tiny" and meta["teacher"]["dim"] == 192
    assert meta["teacher"]["compute"] == {"device_type": "cpu", "precision": "fp32"}
    assert meta["rows"]["video_id"] == [str(101 + i) for i in range(13)]
    assert meta["rows"]["label"] == [i % 2 for i in range(13)]
    assert [s["status"] for s in meta["shards"]] == ["committed"] * 4
    for s in meta["shards"]:
        assert (cache_store / s["latents"]["path"]).is_file()
        assert (cache_store / s["frames"]["path"]).is_file()
        assert (cache_store / "commits" / f"shard-{s['index']:06d}.json").is_file()
    assert not any((cache_store / "tmp").iterdir()), "temporary files left after the build"


def test_corrupt_videos_are_listed_and_the_build_completes(cache_store: Path) -> None:
    lines = [json.loads(x) for x in (cache_store / "failures.jsonl").read_text().splitlines()]
    assert sorted(x["video_id"] for x in lines) == sorted(CACHE_BAD_VIDEOS)
    for x in lines:
        assert x["row"] == int(x["video_id"]) - 101
        assert x["reason"], f"no reason recorded for {x['video_id']}"
    store = LatentStore(cache_store)
    bad_rows = sorted(x["row"] for x in lines)
    assert sorted(set(range(13)) - set(store.valid_rows.tolist())) == bad_rows
    with pytest.raises(MissingRowError, match="failed to decode"):
        store.get([bad_rows[0]])


def test_latent_store_equals_zarr_open(cache_store: Path) -> None:
    zarr = pytest.importorskip("zarr")
    store = LatentStore(cache_store)
    z = zarr.open(str(cache_store / "latents.zarr"), mode="r")
    assert z.shape == store.shape and z.dtype == store.dtype
    rng = np.random.default_rng(0)
    rows = rng.permutation(store.valid_rows)
    got = store.get(rows)
    want = z.oindex[rows]
    assert got.dtype == np.float16 and got.shape == (len(rows), 64, 192)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all() and got.astype(np.float32).std() > 0.1, "latents look empty"
    all_z = z[:]
    bad = sorted(set(range(13)) - set(store.valid_rows.tolist()))
    assert np.isnan(all_z[bad]).all(), "failed rows must read as NaN through zarr"


class _RowsDataset:
    def __init__(self, store: LatentStore) -> None:
        self.store = store
        self.rows = store.valid_rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, int]:
        row = int(self.rows[i])
        return row, self.store[row], os.getpid()


def test_latent_store_in_forked_dataloader_workers(cache_store: Path) -> None:
    import torch.utils.data as tud

    store = LatentStore(cache_store)
    ref = store.get(store.valid_rows)  # maps opened in the parent before the fork
    ds = _RowsDataset(store)
    loader = tud.DataLoader(ds, batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
    seen, pids = {}, set()
    for row, lat, pid in loader:
        seen[int(row)] = np.asarray(lat)
        pids.add(int(pid))
    assert pids and os.getpid() not in pids
    for i, row in enumerate(store.valid_rows):
        np.testing.assert_array_equal(seen[int(row)], ref[i])


def test_frames_pipeline_matches_latent_rows(cache_store: Path) -> None:
    import torch.utils.data as tud

    from salt_vla.cache.frames_reader import frames_pipeline, iter_frames_shard

    store = LatentStore(cache_store)
    shards = store.frames_shards()
    direct = {s["row"]: s for p in shards for s in iter_frames_shard(p)}
    assert sorted(direct) == store.valid_rows.tolist()
    pipe = frames_pipeline(shards, shuffle_shards=True, seed=3)
    loader = tud.DataLoader(pipe, batch_size=None, num_workers=2)
    rows = []
    for sample in loader:
        row = int(sample["row"])
        rows.append(row)
        frames = np.asarray(sample["frames"])
        assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3)
        np.testing.assert_array_equal(frames, direct[row]["frames"])
        assert sample["video_id"] == store.video_ids[row] and int(sample["view"]) == 0
        assert int(sample["label"]) == store.labels[row]
    assert sorted(rows) == store.valid_rows.tolist(), "workers must split shards disjointly"


def test_rerun_skips_committed_shards_and_changes_nothing(
    cache_store: Path, cache_data_root: Path, tmp_path: Path
) -> None:
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import VIEW_PRESETS

    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    before = _tree_bytes(copy)
    cfg = BuildConfig(data_root=cache_data_root, out=copy,
                      teacher="random:vit_tiny:0", view=VIEW_PRESETS["tiny-8x64"], shard_size=4,
                      device="cpu", pipeline=PipelineConfig(batch_size=3, workers=1),
                      command=("salt", "other", "command"), show_progress=False)
    result = build_cache(cfg, log=lambda msg: None)
    assert result.rows_done == 0 and result.rows_skipped == 13
    assert _tree_bytes(copy) == before


def test_resume_refuses_a_different_build(
    cache_store: Path, cache_data_root: Path, tmp_path: Path
) -> None:
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.store_writer import CacheBuildError
    from salt_vla.data.view import VIEW_PRESETS

    copy = tmp_path / "store"
    shutil.copytree(cache_store, copy)
    cfg = BuildConfig(data_root=cache_data_root, out=copy,
                      teacher="random:vit_tiny:1", view=VIEW_PRESETS["tiny-8x64"], shard_size=4,
                      device="cpu", show_progress=False)
    with pytest.raises(CacheBuildError, match="another cache.*teacher"):
        build_cache(cfg, log=lambda msg: None)


def test_info_summarises_the_store(cache_store: Path) -> None:
    from typer.testing import CliRunner

    from salt_vla.cache.info import store_info
    from salt_vla.cli import app

    info = store_info(cache_store)
    assert info["rows"] == 13 and info["written_rows"] == 10 and info["failed_rows"] == 3
    assert info["checksummed_fraction"] == 1.0 and info["status"] == "complete"
    assert info["bytes_on_disk"] >= info["latent_bytes"] + info["frames_bytes"] > 10 * 64 * 192
    res = CliRunner().invoke(app, ["cache", "info", str(cache_store)])
    assert res.exit_code == 0, res.output
    assert "10 written, 3 failed" in res.output and "vit_tiny" in res.output


# --- decoder processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class _FaultyLoader:
    """Frames for most ids; an exception, a crash or a hang for some."""

    def __call__(self, path: str, video_id: str, view_index: int) -> np.ndarray:
        if video_id == "raise":
            raise RuntimeError("bad header")
        if video_id == "crash":
            os._exit(3)
        if video_id == "hang":
            time.sleep(60)
        return np.full((2, 8, 8, 3), int(video_id), dtype=np.uint8)


def test_decode_pool_survives_exceptions_crashes_and_hangs() -> None:
    ids = ["1", "raise", "2", "crash", "3", "hang", "4", "5"]
    tasks = [DecodeTask(i, "unused", v, 0) for i, v in enumerate(ids)]
    with DecodePool(_FaultyLoader(), workers=2, timeout=3.0, prefetch=2,
                    expect_shape=(2, 8, 8, 3)) as pool:
        results = list(pool.imap(tasks))
        assert pool.respawns == 2
    assert [r.task.row for r in results] == list(range(len(ids))), "results out of order"
    by_id = {r.task.video_id: r for r in results}
    assert "RuntimeError: bad header" in by_id["raise"].reason
    assert "died" in by_id["crash"].reason
    assert "timed out" in by_id["hang"].reason
    for v in ("1", "2", "3", "4", "5"):
        r = by_id[v]
        assert r.ok, f"video {v} failed: {r.reason}"
        assert r.pixels.shape == (2, 8, 8, 3) and len(r.jpegs) == 2
        assert abs(int(r.pixels.mean()) - int(v)) <= 2  # JPEG of a flat frame


def test_rows_are_video_major_then_view() -> None:
    from types import SimpleNamespace

    from salt_vla.cache.build import plan_rows

    entries = [SimpleNamespace(id="7", label=2), SimpleNamespace(id="9", label=None),
               SimpleNamespace(id="4", label=0)]
    index = SimpleNamespace(entries=entries, video_path=lambda vid: Path(f"/v/{vid}.webm"))
    ids, views, labels, paths = plan_rows(index, n_views=2, limit=2)
    assert ids == ["7", "7", "9", "9"] and views == [0, 1, 0, 1]
    assert labels == [2, 2, -1, -1] and paths[2] == Path("/v/9.webm")


def test_what_is_not_a_video_is_a_recorded_failure_and_the_build_goes_on(
        tmp_path: Path) -> None:
    """A PNG renamed .webm used to be cached as identical frames with no failure record; a
    directory or FIFO at a video's path was "file not found". Each is now a failure with its
    own reason, and the other videos are cached."""
    from conftest import _moving_square
    from PIL import Image

    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.video import write_webm
    from salt_vla.data.view import VIEW_PRESETS

    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    videos = root / "videos"
    still = Image.fromarray(_moving_square(1, 48, 64, seed=9)[0])
    cases = {  # video id -> what its file is, and the reason the build must record
        "201": ("good", None),
        "202": ("png", "is a still image (PNG data), not a video"),
        "203": ("jpeg", "is a still image (JPEG data), not a video"),
        "204": ("ppm", "is a still image (FFmpeg reads it as ppm_pipe)"),
        "205": ("directory", "is a directory, not a video file"),
        "206": ("fifo", "is a FIFO (named pipe), not a regular file"),
        "207": ("good", None),
    }
    if os.geteuid() != 0:  # root reads any file whatever its mode
        cases["208"] = ("unreadable", "permission denied")
    for vid, (kind, _) in cases.items():
        path = videos / f"{vid}.webm"
        if kind == "good":
            write_webm(path, _moving_square(10, 48, 64, seed=int(vid)), fps=12)
        elif kind in ("png", "jpeg", "ppm"):
            with open(path, "wb") as f:
                still.save(f, format=kind.upper())
        elif kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            write_webm(path, _moving_square(10, 48, 64, seed=1), fps=12)
            path.chmod(0)
    template = "Pushing [something] from left to right"
    (root / "labels.json").write_text(json.dumps({template.replace("[", "").replace("]", ""):
                                                  "0"}))
    (root / "train.json").write_text(json.dumps([
        {"id": vid, "label": "Pushing a cup from left to right", "template": template,
         "placeholders": ["a cup"]} for vid in cases]))
    for split in ("validation", "test"):
        (root / f"{split}.json").write_text("[]")
    out = tmp_path / "store"
    build_cache(BuildConfig(data_root=root, out=out, teacher="random:vit_tiny:0",
                            view=VIEW_PRESETS["tiny-8x64"], shard_size=4, device="cpu",
                            pipeline=PipelineConfig(batch_size=3, workers=1),
                            show_progress=False), log=lambda msg: None)
    failures = {x["video_id"]: x["reason"]
                for x in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    want = {vid: reason for vid, (_, reason) in cases.items() if reason}
    assert failures.keys() == want.keys()
    for vid, reason in want.items():
        assert reason in failures[vid], (vid, failures[vid])
        assert "not found" not in failures[vid]
    store = LatentStore(out)
    good_rows = [i for i, (kind, _) in enumerate(cases.values()) if kind == "good"]
    assert store.valid_rows.tolist() == good_rows
    assert json.loads((out / "cache.json").read_text())["status"] == "complete"

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


# --- what a build costs, before it starts (plan, dry run, destination checks) ---------------

_DRY = ["--teacher", "random:vit_tiny:0", "--view-preset", "tiny-8x64", "--shard-size", "4",
        "--batch-size", "3", "--workers", "1", "--device", "cpu", "--no-progress"]


def _cache_cli(*args: str):
    from typer.testing import CliRunner

    from salt_vla.cli import app

    return CliRunner().invoke(app, ["cache", "build", *args])


def test_row_bytes_of_vit_b_16x224_fp16_are_2408448(cache_data_root: Path, tmp_path: Path):
    """The arithmetic the dry run, the disk check and the README table share."""
    from salt_vla.cache.build import BuildConfig, plan_build
    from salt_vla.cache.estimate import StoreSize, latent_row_bytes
    from salt_vla.data.view import VIEW_PRESETS

    assert latent_row_bytes(1568, 768, "float16") == 1568 * 768 * 2 == 2_408_448
    cfg = BuildConfig(data_root=cache_data_root, out=tmp_path / "store",
                      teacher="random:vit_base:0", view=VIEW_PRESETS["ssv2-16x224"])
    plan = plan_build(cfg)  # no teacher is loaded, nothing is written
    assert (plan.size.tokens, plan.size.dim, plan.arch) == (1568, 768, "vit_base")
    assert plan.size.latent_row_bytes == 2_408_448 and plan.size.rows == 13
    assert any("2,408,448 B a row" in line for line in plan.lines()), plan.lines()
    assert not (tmp_path / "store").exists()
    train = StoreSize(168_913, 1568, 768, "float16", 16, 224, shard_size=256)
    assert train.num_shards == 660
    # rows x row bytes + per shard: a 16 B index entry per row slot and a 4 B checksum
    assert train.latents_bytes() == 168_913 * 2_408_448 + 660 * (256 * 16 + 4)
    assert 406e9 < train.latents_bytes() < 407e9  # the "about 407 GB"
    assert StoreSize(13, 64, 192, "float32", 8, 64).latent_row_bytes == 64 * 192 * 4


def test_latents_estimate_equals_the_bytes_a_build_writes(cache_store: Path) -> None:
    from salt_vla.cache.estimate import StoreSize

    meta = json.loads((cache_store / "cache.json").read_text())
    size = StoreSize(13, 64, 192, "float16", 8, 64, shard_size=4)
    on_disk = sum(p.stat().st_size for p in (cache_store / "latents.zarr" / "c").rglob("*")
                  if p.is_file())
    written = sum(s["latents"]["bytes"] for s in meta["shards"])
    assert on_disk == written
    failed = 3  # an empty row stores no chunk: the estimate is exact for rows that decode
    assert size.latents_bytes() - failed * size.latent_row_bytes == on_disk


def test_dry_run_prints_the_plan_and_writes_nothing(cache_data_root: Path, tmp_path: Path):
    out = tmp_path / "store"
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(out), "--dry-run")
    assert res.exit_code == 0, res.output
    text = res.output
    assert "data: train: layout flat" in text and "videos: 13 in" in text, text
    assert "rows: 13 videos x 1 view = 13 rows in 4 shards of 4" in text, text
    assert "[13, 64, 192] float16 = 24,576 B a row" in text, text
    assert "rule of thumb" in text and "free at" in text and "writable" in text, text
    assert "1 decoder process per rank" in text and "3 clips a batch" in text, text
    assert "dry run: nothing written" in text
    assert not out.exists() and not (cache_data_root / "salt-cache").exists()


def test_estimate_times_a_sample_and_measures_jpeg_sizes(cache_data_root: Path,
                                                         tmp_path: Path):
    out = tmp_path / "store"
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(out), "--dry-run",
                     "--estimate", "5")
    assert res.exit_code == 0, res.output
    text = res.output
    # ids 101..105: 103 is the zero-byte file
    assert "sample: 5 videos (4 rows, 1 failed)" in text, text
    assert "measured" in text and "kB a frame on the sample" in text, text
    assert "time: ~" in text and "for 13 rows in one process" in text, text
    assert not out.exists(), "the sample store must not be left at the destination"


def test_unwritable_destination_is_refused_before_anything_is_written(
    cache_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(blocker / "store"))
    assert res.exit_code == 1, res.output
    assert f"cannot write the cache to {blocker / 'store'}" in res.output, res.output
    assert "is a file, not a folder" in res.output and "--out DIR" in res.output

    def read_only(*args, **kwargs):  # what a read-only data mount answers (root ignores 0555)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    ro = tmp_path / "mnt"
    ro.mkdir()
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(ro / "salt-cache" / "train"))
    assert res.exit_code == 1, res.output
    assert "is not writable (Read-only file system)" in res.output, res.output
    assert "$SALT_CACHE" in res.output and "<data root>/salt-cache/<split>" in res.output
    assert not (ro / "salt-cache").exists()


def test_too_small_a_disk_is_refused_unless_forced(
    cache_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    from salt_vla.cache import estimate

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(estimate.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000,
                                                                        1000))
    out = tmp_path / "store"
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(out))
    assert res.exit_code == 1, res.output
    assert "has 1.0 kB free but the latents alone need 319.8 kB" in res.output, res.output
    assert "--force" in res.output and not out.exists()
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(out), "--dry-run", "--force")
    assert res.exit_code == 0 and "warning (--force)" in res.output, res.output
    # Latents fit, frames may not: a warning, and the build goes ahead.
    monkeypatch.setattr(estimate.shutil, "disk_usage",  # 4 rows: 98.4 kB latents + frames
                        lambda p: usage(10**9, 10**9 - 150_000, 150_000))
    res = _cache_cli(str(cache_data_root), *_DRY, "--out", str(out), "--limit", "4")
    assert res.exit_code == 0, res.output
    assert "the frames" in res.output and "may not" in res.output, res.output
    assert json.loads((out / "cache.json").read_text())["status"] == "complete"


# --- a stage-1 teacher brings its arch and view --------------------------------------------


def _record(tmp_path: Path, arch: str = "vit_tiny", frames: int = 8, size: int = 64,
            view: str | None = "tiny-8x64") -> Path:
    ckpt = tmp_path / "teacher.pth"
    ckpt.write_bytes(b"weights are not read by the choice")
    spec = {"arch": arch, "num_frames": frames, "img_size": size, "tubelet": 2, "patch": 16,
            "layer": -1, "target_norm": True}
    (tmp_path / "teacher.pth.json").write_text(json.dumps({"teacher_spec": spec, "view": view}))
    return ckpt


def test_teacher_record_fills_in_what_was_not_given(tmp_path: Path) -> None:
    from salt_vla.cache.store_writer import CacheBuildError
    from salt_vla.cache.teacher_choice import choose_teacher
    from salt_vla.data.view import VIEW_PRESETS

    ckpt = str(_record(tmp_path))
    c = choose_teacher(ckpt)
    assert c.arch == "vit_tiny" and c.view == VIEW_PRESETS["tiny-8x64"]
    assert "teacher record" in c.notes[0] and "8 frames x 64 px" in c.notes[0]
    # explicit options win where they do not contradict the record
    c = choose_teacher(ckpt, "vit_tiny", "tiny-8x64-mv2")
    assert c.view == VIEW_PRESETS["tiny-8x64-mv2"]
    assert choose_teacher(ckpt, n_views=3).view.n_views == 3
    with pytest.raises(CacheBuildError) as err:
        choose_teacher(ckpt, None, "ssv2-16x224")
    msg = str(err.value)
    assert "--view-preset ssv2-16x224 (16 frames x 224 px)" in msg, msg
    assert "trained at 8 frames x 64 px (view tiny-8x64" in msg and "teacher.pth.json" in msg
    with pytest.raises(CacheBuildError, match=r"--frames 16 \(16 frames x 64 px\)"):
        choose_teacher(ckpt, num_frames=16)
    with pytest.raises(CacheBuildError, match="--teacher-arch vit_base conflicts.*vit_tiny"):
        choose_teacher(ckpt, "vit_base")
    # no record (an official checkpoint, a random teacher): the defaults, as before
    (tmp_path / "teacher.pth.json").unlink()
    c = choose_teacher(ckpt)
    assert c.arch == "vit_base" and c.view == VIEW_PRESETS["ssv2-16x224"] and not c.notes
    assert choose_teacher("random:vit_tiny:0", None, "tiny-8x64").record is None
    # a record with a preset this version does not know keeps its shape
    ckpt = str(_record(tmp_path, view="someone-elses-8x64"))
    c = choose_teacher(ckpt)
    assert (c.view.num_frames, c.view.size) == (8, 64)
    (tmp_path / "teacher.pth.json").write_text("{broken")
    with pytest.raises(CacheBuildError, match="unreadable"):
        choose_teacher(ckpt)


def test_stage1_teacher_on_a_download_layout_then_build_at_its_view(
    cache_data_root: Path, tmp_path: Path
) -> None:
    """The whole path as a user meets it: SSv2 as unpacked, `salt teacher train`, then
    `salt cache build --teacher-ckpt` with no view options."""
    from conftest import ssv2_download_copy
    from typer.testing import CliRunner

    from salt_vla.cli import app
    from salt_vla.data.view import VIEW_PRESETS

    dl = ssv2_download_copy(cache_data_root, tmp_path / "ssv2", naming="prefixed")
    run = tmp_path / "teacher"
    sets = ["decoder_width=32", "decoder_depth=1", "decoder_heads=2", "num_workers=0",
            "log_every=1", "warmup_steps=1", "max_steps=1", "batch_size=4"]
    res = CliRunner().invoke(app, ["teacher", "train", "--data", str(dl), "--exp",
                                   "teacher-tiny", "--out", str(run),
                                   *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert "train: layout SSv2 download, something-something-v2-*.json" in res.output
    assert f"videos: 13 in {dl / '20bn-something-something-v2'}" in res.output
    ckpt = run / "teacher.pth"
    assert (run / "teacher.pth.json").is_file()
    out = tmp_path / "store"
    base = [str(dl), "--teacher-ckpt", str(ckpt), "--limit", "4", "--shard-size", "4",
            "--batch-size", "2", "--workers", "1", "--device", "cpu", "--no-progress"]
    res = _cache_cli(*base, "--view-preset", "ssv2-16x224", "--out", str(out))
    assert res.exit_code == 1, res.output
    assert "--view-preset ssv2-16x224 (16 frames x 224 px) conflicts with teacher" in res.output
    assert "trained at 8 frames x 64 px (view tiny-8x64" in res.output, res.output
    res = _cache_cli(*base, "--teacher-arch", "vit_base", "--out", str(out))
    assert res.exit_code == 1 and "--teacher-arch vit_base conflicts" in res.output
    assert not out.exists()
    res = _cache_cli(*base, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "data: train: layout SSv2 download, something-something-v2-*.json" in res.output
    assert "teacher record:" in res.output and "view tiny-8x64 (the teacher's" in res.output
    meta = json.loads((out / "cache.json").read_text())
    assert meta["view"]["hash"] == VIEW_PRESETS["tiny-8x64"].hash()
    assert meta["teacher"]["arch"] == "vit_tiny" and meta["latents"]["shape"] == [4, 64, 192]


def test_readme_size_table_is_the_dry_run_arithmetic() -> None:
    from salt_vla.cache.estimate import size_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [line for line in size_table() if line not in readme]
    assert not missing, ("README's real-scale table is out of date; paste "
                         f"salt_vla.cache.estimate.size_table() in: {missing}")


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

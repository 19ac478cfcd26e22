"""int8 latents (`salt cache build --latents-dtype int8`): the round trip within its documented
bound, the store readable by plain zarr (latents and scales), the reader's float16 rows,
verify's checks of the scales, training on it; and old stores (format 2) still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from salt_vla.cache.format import StorePaths, identity_digest, read_json, write_json_atomic
from salt_vla.cache.latent_store import LatentStore
from salt_vla.cache.quantize import ERROR_BOUND, dequantize_into, quantize_int8
from salt_vla.cache.store import open_store
from salt_vla.cache.verify import verify_store


def test_round_trip_is_within_the_documented_bound() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 192)).astype(np.float32) * rng.uniform(0.01, 30, (64, 1))
    x[3] = 0.0  # a token of zeros: scale 0, reads back as zeros
    x[5, 7] = 400.0  # an outlier channel: its token gets a coarse scale
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == (64,)
    assert q.min() >= -127 and q.max() <= 127
    for out_dtype in (np.float16, np.float32):
        back = dequantize_into(q, scale, np.empty(x.shape, out_dtype)).astype(np.float32)
        err = np.abs(back - x)
        bound = ERROR_BOUND * scale.astype(np.float32)[:, None]
        assert np.all(err <= bound + 1e-12), float((err / np.maximum(bound, 1e-30)).max())
    assert np.all(back[3] == 0)
    normal = np.delete(np.arange(64), [3, 5])
    rel = np.sqrt(np.mean((back[normal] - x[normal]) ** 2, axis=1)) / np.sqrt(
        np.mean(x[normal] ** 2, axis=1))
    assert rel.max() < 0.012, rel.max()  # ~0.7% for Gaussian tokens (BENCHMARKS.md)


@pytest.fixture(scope="module")
def int8_store(cache_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared fixture store's build again, with --latents-dtype int8."""
    from salt_vla.cache.build import BuildConfig, build_cache
    from salt_vla.cache.pipeline import PipelineConfig
    from salt_vla.data.view import VIEW_PRESETS

    out = tmp_path_factory.mktemp("int8") / "store"
    build_cache(BuildConfig(data_root=cache_data_root, out=out, teacher="random:vit_tiny:0",
                            view=VIEW_PRESETS["tiny-8x64"], shard_size=4, device="cpu",
                            dtype="int8", pipeline=PipelineConfig(batch_size=3, workers=1),
                            show_progress=False), log=lambda msg: None)
    return out


def test_int8_store_reads_as_float16_close_to_the_fp16_store(int8_store: Path,
                                                            cache_store: Path) -> None:
    q8, f16 = LatentStore(int8_store), LatentStore(cache_store)
    assert q8.quantized and q8.stored_dtype == np.int8 and q8.dtype == np.float16
    np.testing.assert_array_equal(q8.valid_rows, f16.valid_rows)
    rows = q8.valid_rows
    a = q8.get(rows).astype(np.float32)
    b = f16.get(rows).astype(np.float32)  # same teacher, same pixels (fp32 on CPU)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    # int8 bound (relative to the token max) + the fp16 store's own rounding of b.
    assert np.all(np.abs(a - b) <= ERROR_BOUND / 127 * amax * 1.001 + 2**-10 * np.abs(b))
    rel = np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2))
    assert 1e-4 < rel < 0.012, rel
    on_disk = sum(f.stat().st_size for f in (int8_store / "latents.zarr" / "c").rglob("*")
                  if f.is_file()) + sum(f.stat().st_size for f in (
                      int8_store / "latents_scale.zarr" / "c").rglob("*") if f.is_file())
    fp16 = sum(f.stat().st_size for f in (cache_store / "latents.zarr" / "c").rglob("*")
               if f.is_file())
    assert on_disk < 0.55 * fp16


def test_int8_size_estimate_equals_the_bytes_a_build_writes(int8_store: Path) -> None:
    """`cache build --dry-run` and the README table state int8 sizes from
    cache/estimate.py: values + float16 scales, and two shard indexes a shard."""
    from salt_vla.cache.estimate import StoreSize

    size = StoreSize(13, 64, 192, "int8", 8, 64, shard_size=4)
    assert size.latent_row_bytes == 64 * 192 + 64 * 2
    on_disk = sum(f.stat().st_size for d in ("latents.zarr", "latents_scale.zarr")
                  for f in (int8_store / d / "c").rglob("*") if f.is_file())
    failed = 3  # the fixture's corrupt videos store no chunk in either file
    assert size.latents_bytes() - failed * size.latent_row_bytes == on_disk


def test_plain_zarr_reads_latents_and_scales(int8_store: Path) -> None:
    zarr = pytest.importorskip("zarr")
    store = LatentStore(int8_store)
    zq = zarr.open(str(int8_store / "latents.zarr"), mode="r")
    zs = zarr.open(str(int8_store / "latents_scale.zarr"), mode="r")
    assert zq.dtype == np.int8 and zs.dtype == np.float16
    assert zq.shape == store.shape and zs.shape == store.shape[:2]
    meta = json.loads((int8_store / "cache.json").read_text())
    assert meta["latents"]["dtype"] == "int8" and meta["format_version"] == 3
    assert meta["latents"]["scale"]["path"] == "latents_scale.zarr"
    for r in store.valid_rows[:4].tolist():
        by_zarr = (np.asarray(zq[r]).astype(np.float32)
                   * np.asarray(zs[r]).astype(np.float32)[:, None]).astype(np.float16)
        np.testing.assert_array_equal(by_zarr, store.get([r])[0])
    failed = sorted(set(range(store.num_rows)) - set(store.valid_rows.tolist()))
    assert np.all(np.isnan(np.asarray(zs[failed[0]])))  # no scale: NaN through zarr


def test_verify_checks_the_scales(int8_store: Path, tmp_path: Path) -> None:
    for how in ({}, {"quick": True}, {"sample": 0.5}):
        report = verify_store(int8_store, **how)
        assert report.ok, (how, report.problems)
        assert any(c.name == "latent scales" for c in report.checks)
    copy = tmp_path / "store"
    shutil.copytree(int8_store, copy)
    path = StorePaths(copy).scale_shard(1)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x40  # a scale of the shard's first row changes
    path.write_bytes(bytes(data))
    report = verify_store(copy)
    assert any("checksum mismatch" in p and "latent scales" in p for p in report.problems), \
        report.problems
    assert verify_store(copy, sample=1.0).problems
    path.unlink()
    report = verify_store(copy, quick=True)
    assert any("missing shard: shard 1 latent scales" in p for p in report.problems), \
        report.problems


def test_a_flipped_scale_byte_fails_its_read(int8_store: Path, tmp_path: Path) -> None:
    from salt_vla.cache.latent_store import RowChecksumError
    from salt_vla.cache.shard import read_index

    copy = tmp_path / "store"
    shutil.copytree(int8_store, copy)
    reader = LatentStore(copy)
    row = int(reader.valid_rows[0])
    path = StorePaths(copy).scale_shard(row // 4)
    offsets = read_index(path, 4)[0]
    data = bytearray(path.read_bytes())
    data[int(offsets[row % 4]) + 3] ^= 0x01  # one scale of one token
    path.write_bytes(bytes(data))
    with pytest.raises(RowChecksumError) as e:
        LatentStore(copy).get([row])
    assert f"row {row} " in str(e.value) and "int8 scales" in str(e.value), str(e.value)
    LatentStore(copy).get(reader.valid_rows[1:])  # the other rows read


def test_training_on_an_int8_store(int8_store: Path, tmp_path: Path) -> None:
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    cfg = resolve("tiny", ["student_dim=64", "student_depth=1", "student_heads=2",
                           "predictor_width=32", "predictor_depth=1", "predictor_heads=2",
                           "max_steps=3", "warmup_steps=1", "batch_size=4", "num_workers=0"])
    res = train(cfg, RunSpec(out=tmp_path, cache=int8_store), echo=lambda s: None)
    assert res.step == 3 and all(np.isfinite(res.losses))


def test_format_version_2_store_still_reads(cache_store: Path, tmp_path: Path) -> None:
    """A store written by the previous format version (2: same files, no int8) opens, reads
    the same bytes and verifies."""
    copy = tmp_path / "v2"
    shutil.copytree(cache_store, copy)
    paths = StorePaths(copy)
    meta = read_json(paths.manifest, "cache manifest")
    meta["format_version"] = 2
    meta["identity_sha256"] = identity_digest(meta)
    write_json_atomic(paths.manifest, meta)
    for rec_path in sorted(paths.commits.glob("shard-*.json")):
        rec = read_json(rec_path, "commit record")
        rec["identity_sha256"] = meta["identity_sha256"]
        write_json_atomic(rec_path, rec)
    old, new = open_store(copy), open_store(cache_store)
    assert old.meta["format_version"] == 2
    assert old.latents.get(old.rows).tobytes() == new.latents.get(new.rows).tobytes()
    assert [old.frames.jpegs(int(r)) for r in old.rows] == [new.frames.jpegs(int(r))
                                                            for r in new.rows]
    for how in ({}, {"quick": True}, {"sample": 0.5}):
        assert verify_store(copy, **how).ok

"""The frozen-encoder attentive probe: learns what is there, finds nothing where nothing is,
and `salt eval probe` runs end to end on a tiny synthetic dataset.

Tiny on purpose: features of 8 tokens x 32 dims for the probe tests; a dozen 8-frame 32 px
videos for the feature and CLI tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.data.view import VIEW_PRESETS
from salt_vla.eval.encoders import EncoderError, resolve_encoder
from salt_vla.eval.features import compute_features
from salt_vla.eval.probe import (
    AttentiveProbe,
    ProbeConfig,
    lr_at,
    probe_heads,
    topk_correct,
    train_probe,
)

TINY_VIEW = VIEW_PRESETS["tiny-8x64"]
K = 4


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise tokens plus a class-specific direction in every token: linearly separable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.normal(size=(n, 8, 32)).astype(np.float32)
    x[np.arange(n), :, y] += 3.0
    return x, y


def test_probe_learns_a_separable_feature_set() -> None:
    tx, ty = _separable(128, 0)
    vx, vy = _separable(64, 1)
    res = train_probe(tx, ty, vx, vy, K, ProbeConfig(epochs=15, batch_size=16, lr=3e-3))
    assert res.top1 >= 0.95, f"probe failed a trivially separable set: {res.history}"
    assert res.top5 == 1.0 and res.top5_k == K  # fewer than 5 classes: top-K is everything
    assert res.val_clips == 64 and res.train_clips == 128 and res.num_classes == K
    assert len(res.history) == 15


def test_attentive4_probe_also_learns_it() -> None:
    tx, ty = _separable(96, 2)
    vx, vy = _separable(48, 3)
    cfg = ProbeConfig(kind="attentive4", epochs=8, batch_size=16, lr=3e-3, heads=4)
    res = train_probe(tx, ty, vx, vy, K, cfg)
    assert res.top1 >= 0.9, f"attentive4 failed a separable set: {res.history}"
    assert len(AttentiveProbe(32, K, cfg).blocks) == 3  # 3 self-attention + 1 cross-attention


def test_probe_is_near_chance_on_shuffled_labels() -> None:
    tx, _ = _separable(128, 0)
    vx, _ = _separable(200, 1)
    rng = np.random.default_rng(7)
    ty, vy = rng.integers(0, K, 128), rng.integers(0, K, 200)  # labels unrelated to features
    res = train_probe(tx, ty, vx, vy, K, ProbeConfig(epochs=15, batch_size=16, lr=3e-3))
    assert 0.1 <= res.top1 <= 0.42, f"val top-1 {res.top1} on random labels is not ~chance 0.25"


def test_probe_is_deterministic_given_seed() -> None:
    tx, ty = _separable(32, 0)
    cfg = ProbeConfig(epochs=2, batch_size=8)
    a = train_probe(tx, ty, tx, ty, K, cfg)
    b = train_probe(tx, ty, tx, ty, K, cfg)
    assert a.history == b.history


GRID = (2, 2, 2)  # (t, h, w): 8 tokens


def _order_only(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A toy "time-reversal" set: class 0 has content ``a`` at (t=0, y, x) and ``b`` at
    (t=1, y, x) of a random cell (y, x), class 1 the reverse; every other token is noise.

    Both classes have the same multiset of tokens, so only (position x content) separates
    them: a position-free attentive probe (invariant to permuting tokens) must be at chance.
    """
    rng = np.random.default_rng(seed)
    t, h, w = GRID
    hw = h * w
    y = np.arange(n) % 2
    x = rng.normal(size=(n, t * hw, 32)).astype(np.float32)
    a, b = np.zeros(32, np.float32), np.zeros(32, np.float32)
    a[0], b[1] = 4.0, 4.0
    cell = rng.integers(0, hw, n)
    for i in range(n):
        first, second = (a, b) if y[i] == 0 else (b, a)
        x[i, cell[i]] = first + 0.3 * rng.normal(size=32)
        x[i, hw + cell[i]] = second + 0.3 * rng.normal(size=32)
    return x, y


@pytest.mark.parametrize("positions", ["fixed", "learned"])
def test_position_aware_probe_reads_position_x_content(positions: str) -> None:
    tx, ty = _order_only(256, 0)
    vx, vy = _order_only(256, 1)
    # lr 1e-2: a learned table starts at 0.02 next to tokens of RMS ~1 and must grow first
    base = dict(epochs=20, batch_size=32, lr=1e-2, heads=4)
    free = train_probe(tx, ty, vx, vy, 2, ProbeConfig(**base))
    aware = train_probe(tx, ty, vx, vy, 2, ProbeConfig(**base, positions=positions), grid=GRID)
    assert free.top1 <= 0.62, f"position-free probe {free.top1} above chance on order-only data"
    assert aware.top1 >= 0.9, f"{positions} probe {aware.top1}: {aware.history[-3:]}"
    assert aware.positions == positions and free.positions == "none"
    if positions == "fixed":  # the table is scaled to the features' RMS
        assert aware.feature_rms == pytest.approx(float(np.sqrt((tx.astype(np.float64) ** 2)
                                                                .mean())), rel=1e-6)


def test_fixed_table_has_the_features_rms_and_positions_need_a_grid() -> None:
    cfg = ProbeConfig(positions="fixed", heads=4)
    probe = AttentiveProbe(32, 2, cfg, GRID, rms=7.0)
    assert float(probe.pos_table.pow(2).mean().sqrt()) == pytest.approx(7.0, rel=1e-5)
    x = torch.zeros(3, 8, 32)
    torch.testing.assert_close(probe.add_positions(x), probe.pos_table.expand(3, -1, -1))
    with pytest.raises(ValueError, match="grid"):
        AttentiveProbe(32, 2, cfg)
    with pytest.raises(ValueError, match="grid"):
        train_probe(*_order_only(8, 0), *_order_only(8, 1), 2, cfg)
    with pytest.raises(ValueError, match="tokens"):
        train_probe(*_order_only(8, 0), *_order_only(8, 1), 2, cfg, grid=(1, 2, 2))
    with pytest.raises(ValueError, match="positions"):
        ProbeConfig(positions="sincos")


def test_default_probe_is_unchanged_by_the_position_option() -> None:
    """positions="none" builds the same weights as before the option existed: the table
    is drawn after every other parameter."""
    cfg = ProbeConfig(heads=4)
    torch.manual_seed(0)
    plain = AttentiveProbe(32, 2, cfg)
    torch.manual_seed(0)
    learned = AttentiveProbe(32, 2, ProbeConfig(heads=4, positions="learned"), GRID)
    extra = dict(learned.named_parameters())
    assert set(extra) - set(dict(plain.named_parameters())) == {"pos_embed"}
    for name, p in plain.named_parameters():
        assert torch.equal(p, extra[name]), name
    assert plain.pos_embed is None


def test_topk_correct_counts_exactly() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.1, 0.3, 0.2]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, 1) == 1  # only row 0
    assert topk_correct(logits, labels, 2) == 2  # row 1: its label is 2nd; row 2: 3rd
    assert topk_correct(logits, labels, 5) == 3  # k capped at the number of classes


def test_heads_schedule_and_config_checks() -> None:
    assert probe_heads(192, 16) == 16 and probe_heads(100, 16) == 10 and probe_heads(7, 16) == 7
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) < 0.01
    with pytest.raises(ValueError, match="attentive"):
        ProbeConfig(kind="linear")
    with pytest.raises(ValueError, match="labels"):
        train_probe(*_separable(8, 0), *_separable(8, 1), 2, ProbeConfig(epochs=1))


# --- encoders, features and the CLI on a tiny synthetic dataset -----------------------------


@pytest.fixture(scope="session")
def tiny_ssv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from salt_vla.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("eval_probe") / "ds"
    cfg = SynthConfig(videos=16, classes=2, frames=8, height=32, width=32, seed=1,
                      splits=(0.5, 0.5, 0.0))
    generate_dataset(root, cfg, workers=1)
    return root


def make_run_dir(path: Path) -> Path:
    """A run directory as `salt train` leaves it, for the `tiny` preset, without training."""
    from salt_vla.trainer.build import build_model
    from salt_vla.trainer.checkpoint import save_checkpoint
    from salt_vla.trainer.experiments import PRESETS

    cfg = PRESETS["tiny"]
    torch.manual_seed(3)
    model = build_model(cfg, TINY_VIEW.num_frames, TINY_VIEW.size)
    save_checkpoint(path / "ckpt.pt", {"student": model.student.state_dict(),
                                       "predictor": model.predictor.state_dict(),
                                       "config": cfg.to_dict(), "step": 5})
    (path / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "data": {}}))
    return path


def test_encoders_resolve_and_refuse(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="--view-preset"):
        resolve_encoder("random:tiny")
    with pytest.raises(EncoderError, match="random:ARCH"):
        resolve_encoder("random:huge", TINY_VIEW)
    with pytest.raises(EncoderError, match="no such run"):
        resolve_encoder(str(tmp_path / "nope"), TINY_VIEW)
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8)
    a, b = resolve_encoder("random:tiny", TINY_VIEW), resolve_encoder("random:tiny:0", TINY_VIEW)
    assert torch.equal(a.features(frames), b.features(frames))  # same seed, same baseline
    assert not torch.equal(a.features(frames), resolve_encoder("random:tiny:1", TINY_VIEW)
                           .features(frames))
    teacher = resolve_encoder("teacher:random:vit_tiny:0", TINY_VIEW)
    assert teacher.features(frames).shape == (2, 64, 192) and teacher.kind == "teacher"
    assert a.key() != teacher.key()


def test_run_dir_encoder_is_the_trained_student(tmp_path: Path) -> None:
    from salt_vla.trainer.checkpoint import load_checkpoint
    from salt_vla.trainer.experiments import PRESETS

    run = make_run_dir(tmp_path)
    enc = resolve_encoder(str(run))
    assert enc.view == TINY_VIEW and enc.describe["step"] == 5
    from salt_vla.models.student import Student
    from salt_vla.trainer.build import student_config

    student = Student(student_config(PRESETS["tiny"], 8, 64))
    student.load_state_dict(load_checkpoint(run / "ckpt.pt")["student"])
    frames = torch.randint(0, 256, (1, 8, 64, 64, 3), dtype=torch.uint8)
    from salt_vla.models.pixels import frames_to_input

    with torch.no_grad():
        want = student.eval().forward_features(frames_to_input(frames))
    torch.testing.assert_close(enc.features(frames), want)
    with pytest.raises(EncoderError, match="frames"):
        resolve_encoder(str(run), VIEW_PRESETS["ssv2-16x224"])


def test_features_are_computed_once_and_reused(tiny_ssv2: Path, tmp_path: Path) -> None:
    enc = resolve_encoder("random:tiny", TINY_VIEW)
    fs = compute_features(enc, tiny_ssv2, "validation", batch_size=4, cache_dir=tmp_path)
    assert fs.features.shape == (len(fs), 64, 192) and fs.features.dtype == np.float16
    assert len(fs) == 8 and fs.num_classes == 2 and not fs.failed and not fs.reused
    again = compute_features(enc, tiny_ssv2, "validation", cache_dir=tmp_path)
    assert again.reused and again.ids == fs.ids
    np.testing.assert_array_equal(again.features, fs.features)
    np.testing.assert_array_equal(again.labels, fs.labels)
    in_memory = compute_features(enc, tiny_ssv2, "validation", limit=3)
    np.testing.assert_array_equal(in_memory.features, fs.features[:3])


def test_cli_help_lists_every_option() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--help"])
    assert res.exit_code == 0 and "probe" in res.output and "intphys" in res.output
    res = runner.invoke(app, ["eval", "probe", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for opt in ("--encoder", "--data", "--train-split", "--val-split", "--view-preset",
                "--epochs", "--probe", "--batch-size", "--lr", "--seed", "--out", "--features",
                "--feature-cache"):
        assert opt in res.output, f"{opt} missing from `salt eval probe --help`"


def test_cli_probe_runs_on_a_tiny_dataset(tiny_ssv2: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    res = CliRunner().invoke(app, [
        "eval", "probe", "--encoder", "random:tiny", "--data", str(tiny_ssv2), "--view-preset",
        "tiny-8x64", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "top-1" in res.output and str(out) in res.output
    result = json.loads(out.read_text())
    assert result["val"]["clips"] == 8 and result["train"]["clips"] == 8
    assert result["num_classes"] == 2 and 0.0 <= result["top1"] <= 1.0
    assert result["encoder"]["kind"] == "random" and len(result["history"]) == 2
    bad = CliRunner().invoke(app, ["eval", "probe", "--encoder", "random:tiny", "--data",
                                   str(tiny_ssv2)])
    assert bad.exit_code == 1 and "--view-preset" in bad.output


def test_val_every_only_changes_what_the_history_records() -> None:
    tx, ty = _separable(32, 0)
    vx, vy = _separable(16, 1)
    every = train_probe(tx, ty, vx, vy, K, ProbeConfig(epochs=4, batch_size=8))
    sparse = train_probe(tx, ty, vx, vy, K, ProbeConfig(epochs=4, batch_size=8, val_every=0))
    assert sparse.top1 == every.top1 and sparse.top5 == every.top5
    assert all("val_top1" in r for r in every.history)
    assert not any("val_top1" in r for r in sparse.history)
    assert [r["loss"] for r in sparse.history] == [r["loss"] for r in every.history]


def test_cli_probe_positions_fixed_on_streamed_features(tiny_ssv2: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--positions fixed` reaches the probe (the record says so, with the features' RMS) in
    the streaming mode too, and the default output name says which probe it was."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [
        "eval", "probe", "--encoder", "random:tiny", "--data", str(tiny_ssv2), "--view-preset",
        "tiny-8x64", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--positions",
        "fixed", "--features", "stream"])
    assert res.exit_code == 0, res.output
    assert "positions fixed" in res.output, res.output
    rec = json.loads((tmp_path / "probe-random-tiny-pos-fixed.json").read_text())
    assert rec["probe"]["positions"] == "fixed" and rec["positions"] == "fixed"
    assert rec["feature_rms"] > 0 and rec["features"]["mode"] == "stream"
    bad = CliRunner().invoke(app, ["eval", "probe", "--encoder", "random:tiny", "--data",
                                   str(tiny_ssv2), "--view-preset", "tiny-8x64", "--positions",
                                   "sincos"])
    assert bad.exit_code == 1 and "positions" in bad.output and "Traceback" not in bad.output


# --- features at SSv2 size: the mode, the checks before allocating, the same values -----------


def test_memory_check_refuses_a_huge_split_before_allocating(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from salt_vla.eval import features
    from salt_vla.eval.features import FeatureError, plan_features

    ssv2 = {"train": 168_913, "validation": 24_777}  # ViT-B at 16x224: 1,568 tokens x 768
    monkeypatch.setattr(features, "memory_available", lambda: 64 * 2**30)  # a "normal node"
    with pytest.raises(FeatureError) as err:
        plan_features("memory", ssv2, 1568, 768)
    msg = str(err.value)
    assert "(train 168,913 + validation 24,777 clips) x 1,568 tokens x 768" in msg, msg
    assert "= 434.5 GiB" in msg and "MemAvailable 64.0 GiB" in msg, msg
    assert "--features stream" in msg and "--feature-cache DIR" in msg, msg
    assert "--limit-train" in msg, msg
    auto = plan_features("auto", ssv2, 1568, 768)
    assert auto.mode == "stream" and "does not fit in RAM" in auto.reason, auto
    # a feature cache with room: disk; without: refused when asked for, streamed on auto
    monkeypatch.setattr(features, "disk_free", lambda p: 2 * 2**40)
    assert plan_features("auto", ssv2, 1568, 768, tmp_path).mode == "disk"
    monkeypatch.setattr(features, "disk_free", lambda p: 100 * 2**30)
    assert plan_features("auto", ssv2, 1568, 768, tmp_path).mode == "stream"
    with pytest.raises(FeatureError, match="do not fit on disk.*100.0 GiB free"):
        plan_features("disk", ssv2, 1568, 768, tmp_path)
    # what a killed run left behind is named, not deleted (another probe may be writing)
    stale = tmp_path / "train-0123" / ".features.npy.tmp-99999-abc"
    stale.parent.mkdir()
    stale.write_bytes(b"x" * 8192)
    with pytest.raises(FeatureError, match=r"unfinished features of killed runs.*delete them"):
        plan_features("disk", ssv2, 1568, 768, tmp_path)
    assert stale.exists()
    assert plan_features("auto", ssv2, 1568, 768, tmp_path, cached=True).mode == "disk"
    with pytest.raises(FeatureError, match="needs --feature-cache"):
        plan_features("disk", ssv2, 1568, 768)
    # the demo's size fits in memory
    assert plan_features("auto", {"train": 420, "validation": 90}, 64, 192).mode == "memory"


def test_probe_refuses_memory_mode_before_featurising(
    tiny_ssv2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salt_vla.eval import features

    allocated, encoded = [], []
    real_allocate, real_encode = features._allocate, features._encode
    monkeypatch.setattr(features, "_allocate",
                        lambda *a: allocated.append(a) or real_allocate(*a))
    monkeypatch.setattr(features, "_encode", lambda *a: encoded.append(1) or real_encode(*a))
    monkeypatch.setattr(features, "memory_available", lambda: 100_000)  # < 2 x 196,608 B
    args = ["eval", "probe", "--encoder", "random:tiny", "--data", str(tiny_ssv2),
            "--view-preset", "tiny-8x64", "--epochs", "1", "--batch-size", "4", "--workers",
            "0"]
    res = CliRunner().invoke(app, [*args, "--features", "memory", "--out",
                                   str(tmp_path / "m.json")])
    assert res.exit_code == 1, res.output
    assert "do not fit in RAM" in res.output and "--features stream" in res.output
    assert allocated == [] and encoded == [], "allocated or encoded before the check"
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "auto.json")])
    assert res.exit_code == 0, res.output
    assert "features: stream" in res.output and allocated == [], res.output
    record = json.loads((tmp_path / "auto.json").read_text())
    assert record["features"]["mode"] == "stream" and record["val"]["clips"] == 8


def test_cli_probe_reads_the_download_layout(tiny_ssv2: Path, tmp_path: Path) -> None:
    from conftest import ssv2_download_copy

    dl = ssv2_download_copy(tiny_ssv2, tmp_path / "ssv2", naming="labels")
    res = CliRunner().invoke(app, [
        "eval", "probe", "--encoder", "random:tiny", "--data", str(dl), "--view-preset",
        "tiny-8x64", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out",
        str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert "data: train: layout SSv2 download, labels/" in res.output, res.output
    assert f"videos: 8 in {dl / '20bn-something-something-v2'}" in res.output
    assert "features: memory" in res.output
    assert json.loads((tmp_path / "p.json").read_text())["features"]["mode"] == "memory"


def _stream_rows(stream, order: np.ndarray, size: int) -> dict[int, np.ndarray]:
    return {int(r): f for rows, feats in stream.iter_features(order, size)
            for r, f in zip(rows, feats.cpu().numpy(), strict=True)}


def test_streamed_disk_and_in_memory_features_are_the_same(tiny_ssv2: Path,
                                                            tmp_path: Path) -> None:
    """Bitwise when the encoder sees the same batches; to float16 rounding otherwise.

    The probe reads float16 features in every mode. In-memory (and disk) features are
    encoded in file-order batches; a stream encodes each epoch's shuffled batches. A CPU
    matmul may sum in another order for another batch (another blocking), which moves the
    float32 result by an ulp or so, and the cast to float16 can then round a value to its
    neighbour: one float16 ulp (2^-10 relative) is the honest bound, bitwise is not promised.
    """
    from salt_vla.eval.features import StreamedFeatures, load_clips

    enc = resolve_encoder("random:tiny", TINY_VIEW)
    mem = compute_features(enc, tiny_ssv2, "validation", batch_size=4)
    disk = compute_features(enc, tiny_ssv2, "validation", batch_size=4, cache_dir=tmp_path)
    assert isinstance(disk.features, np.memmap)
    np.testing.assert_array_equal(disk.features, mem.features)
    stream = StreamedFeatures(enc, load_clips(tiny_ssv2, "validation"))
    assert stream.shape == mem.features.shape and stream.labels.tolist() == mem.labels.tolist()
    n = len(mem)
    same = _stream_rows(stream, np.arange(n), 4)  # the precompute's batches
    np.testing.assert_array_equal(np.stack([same[i] for i in range(n)]), mem.features)
    order = np.random.default_rng(0).permutation(n)  # an epoch's batches
    shuffled = _stream_rows(stream, order, 3)
    got = np.stack([shuffled[i] for i in range(n)]).astype(np.float32)
    np.testing.assert_allclose(got, mem.features.astype(np.float32), rtol=2**-10, atol=2**-14)
    assert not stream.failed


def test_streamed_probe_matches_the_in_memory_probe(tiny_ssv2: Path) -> None:
    from salt_vla.eval.features import StreamedFeatures, load_clips

    enc = resolve_encoder("random:tiny", TINY_VIEW)
    cfg = ProbeConfig(epochs=3, batch_size=4, lr=3e-3)
    tr, va = (compute_features(enc, tiny_ssv2, s, batch_size=4) for s in ("train", "validation"))
    ref = train_probe(tr.features, tr.labels, va.features, va.labels, 2, cfg)
    st, sv = (StreamedFeatures(enc, load_clips(tiny_ssv2, s)) for s in ("train", "validation"))
    got = train_probe(st, st.labels, sv, sv.labels, 2, cfg)
    assert got.top1 == ref.top1 and got.val_clips == ref.val_clips == 8
    for a, b in zip(got.history, ref.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3), (got.history, ref.history)


def test_failed_clips_are_dropped_in_every_mode(tiny_ssv2: Path, tmp_path: Path) -> None:
    import shutil

    from salt_vla.eval.features import StreamedFeatures, load_clips

    root = Path(shutil.copytree(tiny_ssv2, tmp_path / "ds"))
    clips = load_clips(root, "validation")
    clips.paths[2].write_text("not a video")  # the third clip of the split
    enc = resolve_encoder("random:tiny", TINY_VIEW)
    mem = compute_features(enc, root, "validation", batch_size=3)
    disk = compute_features(enc, root, "validation", batch_size=3, cache_dir=tmp_path / "c")
    assert len(mem) == 7 and [f["id"] for f in mem.failed] == [clips.ids[2]]
    assert mem.ids == clips.ids[:2] + clips.ids[3:] and mem.features.shape[0] == 7
    # the disk entry was compacted in place: a valid .npy of 7 rows, equal to RAM's
    back = np.load(disk.path)
    assert back.shape == (7, 64, 192) and disk.ids == mem.ids
    np.testing.assert_array_equal(back, mem.features)
    assert compute_features(enc, root, "validation", cache_dir=tmp_path / "c").reused
    ok = compute_features(enc, tiny_ssv2, "validation", batch_size=3)
    np.testing.assert_array_equal(mem.features, np.delete(ok.features, 2, axis=0))
    stream = StreamedFeatures(enc, clips)
    rows = _stream_rows(stream, np.arange(8), 3)
    assert sorted(rows) == [0, 1, 3, 4, 5, 6, 7] and list(stream.failed) == [clips.ids[2]]


def test_readme_probe_table_is_the_features_arithmetic() -> None:
    from salt_vla.eval.features import probe_size_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [line for line in probe_size_table() if line not in readme]
    assert not missing, ("README's probe table is out of date; paste "
                         f"salt_vla.eval.features.probe_size_table() in: {missing}")
    assert "`--features`" in readme and "--feature-cache" in readme

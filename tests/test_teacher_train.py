"""Stage 1 (`salt teacher train`): pixel reconstruction falls, resume is exact, the exported
encoder loads through the teacher loader unchanged, and decoding failures are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.errors import ConfigError
from salt_vla.models.checkpoint import file_sha256
from salt_vla.models.pixels import frames_to_input
from salt_vla.models.teacher import load_teacher
from salt_vla.runs.rundir import FAILURES_NAME, loss_curve
from salt_vla.trainer.checkpoint import load_checkpoint
from salt_vla.trainer.loop import RunSpec
from salt_vla.trainer.pixel_objective import patchify, pixel_targets
from salt_vla.trainer.sources import memory_sources
from salt_vla.trainer.teacher_experiments import TEACHER_PRESETS, resolve_teacher
from salt_vla.trainer.teacher_export import TeacherExportError, export_teacher, teacher_spec
from salt_vla.trainer.teacher_train import build_pixel_model, train_teacher
from salt_vla.trainer.video_source import VideoClips, read_failures

# teacher-tiny's encoder (vit_tiny, 8 x 64 px) with a small decoder; no worker processes.
SMALL = ["decoder_width=32", "decoder_depth=1", "decoder_heads=2", "num_workers=0",
         "log_every=1", "warmup_steps=3"]


def moving_squares(n: int, seed: int) -> np.ndarray:
    """``[n, 8, 64, 64, 3]`` uint8: a coloured square gliding over a two-colour gradient —
    structure a pixel decoder can learn in a few dozen steps (noise could not fall)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    clips = np.empty((n, 8, 64, 64, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 255, (3, 3))
        bg = a * x[..., None] + b * y[..., None] * 0.5 + 0.3 * c
        side = int(rng.integers(14, 26))
        y0, x0 = rng.integers(0, 64 - side, 2)
        vy, vx = rng.integers(-3, 4, 2)
        for t in range(8):
            frame = bg.copy()
            top = int(np.clip(y0 + vy * t, 0, 64 - side))
            left = int(np.clip(x0 + vx * t, 0, 64 - side))
            frame[top:top + side, left:left + side] = c
            clips[i, t] = np.clip(frame, 0, 255)
    return clips


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return moving_squares(32, seed=0)


def run(out: Path, clips: np.ndarray, sets: list[str], resume: str | None = None):
    cfg = resolve_teacher("teacher-tiny", SMALL + sets)
    return train_teacher(cfg, RunSpec(out=out, resume=resume),
                         memory_sources(cfg, clips, None), echo=lambda s: None)


@pytest.fixture(scope="module")
def trained(clips: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher_run")
    # VideoMAE's per-patch normalised targets (teacher-base's; teacher-tiny uses raw pixels)
    res = run(out, clips, ["max_steps=40", "batch_size=8", "lr=2e-3", "min_lr=2e-4",
                           "norm_pix=true"])
    return out, res


def test_reconstruction_loss_falls(trained) -> None:
    out, res = trained
    losses = res.train.losses
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, f"pixel loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
    assert [s for s, _ in loss_curve(out)] == list(range(1, 41))  # metrics.jsonl, every step
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert set(ckpt) >= {"encoder", "decoder", "optimizer", "step", "config"}
    assert "student" not in ckpt


def test_finished_run_exports_the_encoder_in_the_official_layout(trained) -> None:
    out, res = trained
    exp = res.export
    assert exp is not None and exp.path == out / "teacher.pth"
    state = torch.load(exp.path, map_location="cpu", weights_only=True)
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias",
            "blocks.0.attn.v_bias", "blocks.3.mlp.fc2.bias"} <= set(state)
    assert not any(k.startswith(("decoder", "encoder.", "mask_token", "pos_embed"))
                   for k in state), sorted(state)[:5]
    assert "blocks.0.attn.qkv.bias" not in state  # VideoMAEv2's q/v biases, not timm's
    assert exp.sha256 == file_sha256(exp.path)
    assert exp.sha_path.read_text() == f"{exp.sha256}  teacher.pth\n"
    meta = json.loads(exp.meta_path.read_text())
    assert meta["sha256"] == exp.sha256 and meta["source"]["step"] == 40


def test_export_round_trips_through_load_teacher(trained, clips: np.ndarray,
                                                 tmp_path: Path) -> None:
    out, _ = trained
    exp = export_teacher(out, tmp_path / "t.pth")
    cfg = resolve_teacher("teacher-tiny", SMALL)
    spec = teacher_spec(cfg)
    teacher = load_teacher(exp.path, spec)  # strict key check
    assert teacher.sha256 == exp.sha256 and teacher.ignored_keys == ()
    encoder = build_pixel_model(cfg, 8, 64).encoder
    encoder.load_state_dict(load_checkpoint(out / "ckpt.pt")["encoder"])
    x = frames_to_input(torch.from_numpy(clips[:2]))
    with torch.no_grad():
        assert torch.equal(teacher.features(x), encoder.eval().features(x))


def test_trained_teacher_latents_differ_from_random(trained, clips: np.ndarray) -> None:
    out, res = trained
    spec = teacher_spec(resolve_teacher("teacher-tiny", SMALL))
    x = frames_to_input(torch.from_numpy(clips[:2]))
    trained_t = load_teacher(res.export.path, spec).targets(x)
    random_t = load_teacher("random:vit_tiny:0", spec).targets(x)
    torch.manual_seed(0)  # the run's own initialisation (seed 0), before any step
    init = build_pixel_model(resolve_teacher("teacher-tiny", SMALL), 8, 64).encoder.eval()
    init_t = init.targets(x)
    for name, other in (("random:vit_tiny:0", random_t), ("the untrained init", init_t)):
        gap = (trained_t - other).abs().mean().item()
        assert gap > 0.05, f"trained teacher's latents ~ {name}'s (mean abs diff {gap:.4f})"


def test_resume_continues_exactly(clips: np.ndarray, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sets = ["max_steps=6", "batch_size=4", "limit_rows=12"]
    full = run(tmp_path / "full", clips, sets)
    part = run(tmp_path / "part", clips, sets + ["stop_at=3"])
    assert part.train.step == 3 and part.export is None  # stopped early: nothing exported
    rest = run(tmp_path / "part", clips, sets, resume="yes")
    assert rest.train.start_step == 3 and rest.train.step == 6
    assert part.train.losses + rest.train.losses == full.train.losses  # bitwise
    a = load_checkpoint(tmp_path / "full" / "ckpt.pt")
    b = load_checkpoint(tmp_path / "part" / "ckpt.pt")
    for part_name in ("encoder", "decoder"):
        assert all(torch.equal(a[part_name][k], b[part_name][k]) for k in a[part_name])
    assert rest.export is not None and rest.export.sha256 == full.export.sha256


def test_pixel_targets_follow_token_order_and_are_normalised() -> None:
    x = torch.randn(2, 3, 4, 32, 48)
    pix = patchify(x, 2, 16)
    assert pix.shape == (2, 2 * 2 * 3, 2 * 16 * 16, 3)
    t, y, w = 1, 1, 2  # token t*(h*w) + y*w + w in the time-major order
    want = x[1, :, 2:4, 16:32, 32:48].permute(1, 2, 3, 0).reshape(-1, 3)
    assert torch.equal(pix[1, t * 6 + y * 3 + w], want)
    tgt = pixel_targets(x, 2, 16).reshape(2, 12, 512, 3)
    torch.testing.assert_close(tgt.mean(2), torch.zeros(2, 12, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tgt.std(2), torch.ones(2, 12, 3), atol=1e-4, rtol=0)


def test_presets_and_lr_scaling() -> None:
    base = resolve_teacher("teacher-base")
    assert (base.arch, base.view, base.mask_ratio) == ("vit_base", "ssv2-16x224", 0.9)
    assert base.lr == pytest.approx(1.5e-4 * base.batch_size / 256)
    assert resolve_teacher("teacher-base", ["batch_size=512"]).lr == pytest.approx(3e-4)
    own = resolve_teacher("teacher-base", ["lr=1e-4"])
    assert (own.lr, own.blr) == (1e-4, 0.0)
    tiny = resolve_teacher("teacher-tiny")
    assert (tiny.arch, tiny.view, tiny.mask_strategy) == ("vit_tiny", "tiny-8x64", "multiblock")
    for name, cfg in TEACHER_PRESETS.items():
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
    with pytest.raises(ConfigError, match="did you mean 'decoder_depth'"):
        resolve_teacher("teacher-tiny", ["decoder_dept=2"])
    with pytest.raises(ConfigError, match="arch='vit_tiniest'"):
        resolve_teacher("teacher-tiny", ["arch=vit_tiniest"])


def test_video_clips_skip_unreadable_videos(cache_data_root: Path, tmp_path: Path) -> None:
    from salt_vla.data.view import VIEW_PRESETS

    failures = tmp_path / FAILURES_NAME
    clips = VideoClips(cache_data_root, "train", VIEW_PRESETS["tiny-8x64"], failures)
    assert len(clips) == 13
    bad = {clips.ids.index(v) for v in ("103", "107", "112")}
    for row in sorted(bad):
        got = clips.frames(row)  # the next decodable clip instead
        assert np.array_equal(got, clips.frames(row + 1)), row
    assert {r["id"] for r in read_failures(failures)} == {"103", "107", "112"}


def test_cli_train_then_export(cache_data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = SMALL + ["max_steps=2", "batch_size=4"]
    args = ["teacher", "train", "--data", str(cache_data_root), "--exp", "teacher-tiny",
            "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "step 2/2" in res.output and "sha256:" in res.output
    assert (out / "teacher.pth").is_file() and (out / "metrics.jsonl").is_file()
    again = CliRunner().invoke(app, args)  # a finished run is not overwritten
    assert again.exit_code != 0 and "--resume" in again.output
    res = CliRunner().invoke(app, ["teacher", "export", str(out), "--out",
                                   str(tmp_path / "t.pth")])
    assert res.exit_code == 0, res.output
    sha = file_sha256(tmp_path / "t.pth")
    assert sha in res.output and (tmp_path / "t.pth.sha256").read_text().startswith(sha)
    with pytest.raises(TeacherExportError, match="no checkpoint"):
        export_teacher(tmp_path / "nowhere")

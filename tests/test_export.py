"""`salt export` -> `salt_vla.load_encoder`: the same features as the trained student, from a
checkpoint saved by the trainer's own save function; and the code sample in docs/export.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import salt_vla
from salt_vla.cli import app
from salt_vla.export import ExportError, export_encoder, read_export_config
from salt_vla.models.pixels import frames_to_input
from salt_vla.runs.rundir import checkpoint_path
from salt_vla.trainer.build import build_model
from salt_vla.trainer.checkpoint import save_checkpoint
from salt_vla.trainer.experiments import resolve

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
SMALL = ["student_dim=64", "student_depth=2", "student_heads=2", "predictor_width=32",
         "predictor_depth=1", "predictor_heads=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """A run dir whose ckpt.pt holds a tiny student with non-default weights, saved with
    the trainer's checkpoint writer in the trainer's layout."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = resolve("tiny", SMALL)
    torch.manual_seed(0)
    model = build_model(cfg, 8, 64)
    with torch.no_grad():  # stand-in for training: move every weight off its init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(checkpoint_path(run_dir), {
        "student": model.student.state_dict(), "predictor": model.predictor.state_dict(),
        "step": 7, "total_steps": 10, "config": cfg.to_dict()})
    return run_dir, model.student.eval()


def test_export_matches_the_trained_student(trained_run, tmp_path: Path) -> None:
    run_dir, student = trained_run
    res = export_encoder(run_dir, tmp_path / "enc.safetensors")
    assert res.sidecar == tmp_path / "enc.json"
    side = json.loads(res.sidecar.read_text())
    assert side["source"]["step"] == 7 and side["source"]["exp"] == "tiny"
    assert side["embed_dim"] == 64 and side["grid"] == [4, 4, 4] and len(side["sha256"]) == 64
    enc = salt_vla.load_encoder(res.weights)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = student.forward_features(frames_to_input(frames))
        tokens, pooled = enc(frames)
        tokens_f, _ = enc(frames_to_input(frames))  # normalised float input
    assert tokens.shape == (2, 64, 64) and pooled.shape == (2, 64)
    torch.testing.assert_close(tokens, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens_f, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, want.mean(1))
    with pytest.raises(ValueError, match=r"\[B, 8, 64, 64, 3\]"):
        enc(frames[:, :4])


def test_bf16_export_and_cli(trained_run, tmp_path: Path) -> None:
    run_dir, student = trained_run
    out = tmp_path / "bf16.safetensors"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--dtype",
                                   "bfloat16"])
    assert res.exit_code == 0, res.output
    assert "weights:" in res.output and str(out.resolve()) in res.output
    enc = salt_vla.load_encoder(out)
    assert enc.student.patch_embed.weight.dtype == torch.bfloat16
    frames = torch.randint(0, 256, (1, 8, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        tokens, _ = enc(frames)
        want = student.forward_features(frames_to_input(frames))
    assert tokens.dtype == torch.bfloat16
    assert (tokens.float() - want).abs().mean() < 0.05 * want.abs().mean()


def test_bad_inputs(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "e.st")])
    assert res.exit_code == 1 and "no checkpoint" in res.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError, match="not a safetensors file"):
        read_export_config(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ExportError, match="not written by `salt export`"):
        salt_vla.load_encoder(plain)


def test_docs_code_sample_runs(trained_run, tmp_path: Path, monkeypatch) -> None:
    """The exact Python block of docs/export.md, run where `encoder.safetensors` exists."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/export.md should hold exactly one python sample"
    export_encoder(trained_run[0], tmp_path / "encoder.safetensors")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)
    assert scope["tokens"].shape == (2, 64, 64) and scope["pooled"].shape == (2, 64)


def test_one_resolver_and_probing_an_export(trained_run, tmp_path: Path) -> None:
    """A run directory, its checkpoint and its export each resolve to what they are, and
    `--encoder` takes the export: the same features as the run's student, on its view."""
    from salt_vla.eval.encoders import resolve_encoder
    from salt_vla.runs.rundir import RunDirError, resolve_run_path

    run_dir, _ = trained_run
    out = export_encoder(run_dir, tmp_path / "enc.safetensors").weights
    assert resolve_run_path(run_dir).kind == "run"
    assert resolve_run_path(checkpoint_path(run_dir)).kind == "checkpoint"
    got = resolve_run_path(out)
    assert got.kind == "encoder" and got.run_dir == tmp_path and got.file == out
    with pytest.raises(RunDirError, match="exported encoder"):
        resolve_run_path(out, ("run", "checkpoint"))
    with pytest.raises(RunDirError, match="holds no checkpoint"):
        resolve_run_path(tmp_path)
    with pytest.raises(ExportError, match="exported encoder"):
        export_encoder(out)
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    from_run, from_export = resolve_encoder(str(run_dir)), resolve_encoder(str(out))
    assert from_export.kind == "encoder" and from_export.view == from_run.view
    torch.testing.assert_close(from_export.features(frames), from_run.features(frames),
                               rtol=0, atol=1e-6)

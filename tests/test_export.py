"""`salt export` -> `salt_vla.load_encoder`: the directory a teammate can read (0644 files,
config.json with provenance, a model card with the run's probe results), the same features
as the trained student (bit for bit), timm's key names, every command that takes an encoder
taking the export, and the code blocks of docs/export.md (the policy-head example included).

The run is a real `salt train` run (3 steps on the shared tiny store), so the provenance is
what the trainer writes, not a hand-made config.json.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import salt_vla
from salt_vla.cli import app
from salt_vla.errors import ConfigError
from salt_vla.export import ExportError, read_export_config
from salt_vla.export.write import export_encoder
from salt_vla.models.checkpoint import file_sha256
from salt_vla.models.pixels import frames_to_input
from salt_vla.models.student import Student
from salt_vla.runs.rundir import RunDirError, checkpoint_path, is_run_dir, resolve_run_path

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
SMALL = ["student_dim=64", "student_depth=2", "student_heads=2", "predictor_width=32",
         "predictor_depth=1", "predictor_heads=2"]
PROBE_ARGS = ["--epochs", "2", "--batch-size", "4", "--workers", "0"]


def _frames(n: int, t: int = 8, h: int = 64, w: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, t, h, w, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained_run(cache_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 3-step `salt train` run on the shared tiny store, and its student (eval mode)."""
    from salt_vla.trainer.build import student_config
    from salt_vla.trainer.checkpoint import load_checkpoint
    from salt_vla.trainer.experiments import resolve
    from salt_vla.trainer.loop import RunSpec, train

    run_dir = tmp_path_factory.mktemp("export") / "run"
    cfg = resolve("tiny", SMALL + ["max_steps=3", "batch_size=4", "num_workers=0"])
    train(cfg, RunSpec(out=run_dir, cache=cache_store), echo=lambda s: None)
    state = load_checkpoint(checkpoint_path(run_dir))
    student = Student(student_config(cfg, 8, 64))
    student.load_state_dict(state["student"])
    return run_dir, student.eval()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory: pytest.TempPathFactory):
    """The directory export of the run (outside the run, so probes of the run do not mix)."""
    return export_encoder(trained_run[0], tmp_path_factory.mktemp("exp") / "encoder")


@pytest.fixture(scope="module")
def tiny_ssv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from salt_vla.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("export_probe") / "ds"
    generate_dataset(root, SynthConfig(videos=16, classes=2, frames=8, height=32, width=32,
                                       seed=1, splits=(0.5, 0.5, 0.0)), workers=1)
    return root


def test_directory_export_is_readable_and_records_its_provenance(trained_run, exported,
                                                                 cache_store: Path) -> None:
    from salt_vla.cache.format import read_manifest

    run_dir, _ = trained_run
    res = exported
    names = sorted(p.name for p in res.path.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    for p in res.path.iterdir():  # a teammate on a shared disk can read every file
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, f"{p.name} is not 0644"
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o755
    config = json.loads(res.config_path.read_text())
    assert config == {**read_export_config(res.path), "weights": "model.safetensors",
                      "sha256": file_sha256(res.weights)}
    a, g, p = config["architecture"], config["grid"], config["provenance"]
    assert (a["embed_dim"], a["depth"], a["num_heads"]) == (64, 2, 2)
    assert (a["num_frames"], a["img_size"], a["tubelet_size"], a["patch_size"]) == (8, 64, 2, 16)
    assert "not a standard ViT size" in a["description"] and a["student_size"] == "tiny"
    assert (g["t"], g["h"], g["w"], g["num_tokens"]) == (4, 4, 4, 64)
    assert config["view"]["spec"]["num_frames"] == 8 and config["dtype"] == "float32"
    manifest = read_manifest(cache_store)
    assert p["step"] == 3 and p["total_steps"] == 3 and p["exp"] == "tiny"
    assert p["checkpoint_sha256"] == file_sha256(checkpoint_path(run_dir))
    assert p["run_dir"] == str(run_dir.resolve()) and p["targets"] == "cached"
    assert p["teacher"]["sha256"] == manifest["teacher"]["sha256"] == "random:vit_tiny:0"
    assert p["store"]["identity_sha256"] == manifest["identity_sha256"]
    assert p["store"]["path"] == str(cache_store)
    assert not is_run_dir(res.path), "an export's config.json must not make it a run dir"


def test_export_gives_the_trained_students_features_bit_for_bit(trained_run, exported) -> None:
    _, student = trained_run
    frames = _frames(2)
    with torch.no_grad():
        want = student.forward_features(frames_to_input(frames))
    for path in (exported.path, exported.weights):  # the directory, or its weights file alone
        enc = salt_vla.load_encoder(path)
        assert not enc.training and not any(q.requires_grad for q in enc.parameters())
        with torch.no_grad():
            tokens, pooled = enc(frames)
            tokens_f, _ = enc(frames_to_input(frames))  # normalised float input
            per_frame = enc.forward_per_frame(frames)
        assert torch.equal(tokens, want) and torch.equal(tokens_f, want)
        torch.testing.assert_close(pooled, want.mean(1))
        assert per_frame.shape == (2, 4, 16, 64)
        assert torch.equal(per_frame, want.reshape(2, 4, 16, 64))
    with pytest.raises(ValueError, match="does not cut into tubelets"):
        enc(frames[:, :5])


def test_keys_are_timm_vit_keys_and_timm_blocks_reproduce_the_tokens(exported) -> None:
    """Every key exists in a timm ViT with the same shape, except the patch embedding's Conv3d
    kernel; timm's own blocks and norm, loaded from the file, give the encoder's tokens."""
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    tensors = load_file(str(exported.weights))
    # A 2-D timm ViT with as many patches (8 x 8 = 64) as the export's 4 x 4 x 4 tokens.
    vit = VisionTransformer(img_size=128, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                            class_token=False, global_pool="avg", fc_norm=False, num_classes=0)
    theirs = vit.state_dict()
    assert set(tensors) == set(theirs)
    differ = {k for k in tensors if tensors[k].shape != theirs[k].shape}
    assert differ == {"patch_embed.proj.weight"}
    assert tensors["pos_embed"].shape == (1, 64, 64)
    assert tensors["patch_embed.proj.weight"].shape == (64, 3, 2, 16, 16)
    loaded = vit.load_state_dict({k: v for k, v in tensors.items() if k not in differ},
                                 strict=False)
    assert loaded.missing_keys == ["patch_embed.proj.weight"] and not loaded.unexpected_keys
    enc = salt_vla.load_encoder(exported.path)
    x = frames_to_input(_frames(2, seed=4))
    with torch.no_grad():
        want = enc.forward_features(x)
        got = vit.eval().norm(vit.blocks(enc.embed(x)))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_single_file_and_bf16_export_through_the_cli(trained_run, tmp_path: Path) -> None:
    run_dir, student = trained_run
    out = tmp_path / "bf16.safetensors"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--dtype",
                                   "bfloat16"])
    assert res.exit_code == 0, res.output
    assert f"weights: {out.resolve()}" in res.output and "not a standard ViT size" in res.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sha256"] == file_sha256(out) and side["provenance"]["step"] == 3
    enc = salt_vla.load_encoder(out)
    assert enc.patch_embed.proj.weight.dtype == torch.bfloat16
    frames = _frames(1)
    with torch.no_grad():
        tokens, _ = enc(frames)
        want = student.forward_features(frames_to_input(frames))
    assert tokens.dtype == torch.bfloat16
    assert (tokens.float() - want).abs().mean() < 0.05 * want.abs().mean()


def test_version_1_single_file_exports_still_load(trained_run, tmp_path: Path) -> None:
    """The layout `salt export` wrote before: student key names, pos_embed [N, D]."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    _, student = trained_run
    tensors = {k: v.contiguous() for k, v in student.state_dict().items()}
    tensors["pos_embed"] = student.pos_embed.contiguous()
    v1 = {"format": "salt-vla-encoder", "version": 1, "student": asdict(student.cfg),
          "embed_dim": 64, "depth": 2, "heads": 2, "grid": [4, 4, 4],
          "view": {"spec": {"num_frames": 8, "size": 64, "sampling": "segment"}, "hash": "x"},
          "source": {"step": 3, "exp": "tiny"}}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"salt_vla_encoder": json.dumps(v1)})
    enc = salt_vla.load_encoder(path)
    frames = _frames(1, seed=5)
    with torch.no_grad():
        assert torch.equal(enc(frames)[0], student.forward_features(frames_to_input(frames)))
    assert enc.config["provenance"]["step"] == 3


def test_bad_inputs_name_the_file_and_the_fix(trained_run, exported, tmp_path: Path) -> None:
    from salt_vla.eval.trained_run import load_run

    run_dir, _ = trained_run
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "e")])
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
    with pytest.raises(ExportError, match="holds no model.safetensors"):
        salt_vla.load_encoder(tmp_path)
    # Never into a run directory (its config.json would be overwritten) or a foreign folder.
    before = (run_dir / "config.json").read_bytes()
    with pytest.raises(ExportError, match="holding other files"):
        export_encoder(run_dir, run_dir)
    assert (run_dir / "config.json").read_bytes() == before
    # An export has no predictor: commands that need one refuse it, naming the run to pass.
    for path in (exported.path, exported.weights):
        with pytest.raises(ExportError, match="no predictor"):
            export_encoder(path)
        with pytest.raises(RunDirError, match="provenance.run_dir"):
            load_run(path)  # what `salt eval intphys --run` loads
    with pytest.raises(ConfigError, match="choose one of"):
        salt_vla.load_encoder(exported.path, time_positions="linear")


def test_one_resolver_names_what_each_path_is(trained_run, exported, tmp_path: Path) -> None:
    from salt_vla.eval.encoders import resolve_encoder

    run_dir, _ = trained_run
    assert resolve_run_path(run_dir).kind == "run"
    assert resolve_run_path(checkpoint_path(run_dir)).kind == "checkpoint"
    for path in (exported.path, exported.weights):
        got = resolve_run_path(path)
        assert got.kind == "encoder" and got.file == exported.weights
        assert got.run_dir == exported.path
    with pytest.raises(RunDirError, match="holds no checkpoint"):
        resolve_run_path(tmp_path)
    frames = _frames(2, seed=2)
    from_run, from_export = resolve_encoder(str(run_dir)), resolve_encoder(str(exported.path))
    assert from_export.kind == "encoder" and from_export.view == from_run.view
    assert torch.equal(from_export.features(frames), from_run.features(frames))


def test_probing_an_export_and_its_model_card(trained_run, tiny_ssv2: Path,
                                              tmp_path: Path) -> None:
    """`salt eval probe` takes the export and scores exactly what the run scores; the card
    lists the run's probe results, each marked with the encoder it measured."""
    run_dir, _ = trained_run
    data = ["--data", str(tiny_ssv2)]
    res = CliRunner().invoke(app, ["eval", "probe", "--encoder", str(run_dir), *data,
                                   *PROBE_ARGS])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["eval", "probe", "--encoder", "random:tiny:0", *data,
                                   "--view-preset", "tiny-8x64", *PROBE_ARGS, "--out",
                                   str(run_dir / "probe-random.json")])
    assert res.exit_code == 0, res.output
    run_rec = json.loads((run_dir / "probe.json").read_text())
    out = tmp_path / "encoder"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 probe result(s) from the run" in res.output
    card = (out / "README.md").read_text()
    assert "| this encoder | attentive | validation | " \
           f"{100 * run_rec['top1']:.1f}% |" in card, card
    assert "random-init tiny student (baseline)" in card and "not a standard ViT size" in card
    identity = read_export_config(out)["provenance"]["store"]["identity_sha256"]
    assert f"identity `{identity}`" in card

    res = CliRunner().invoke(app, ["eval", "probe", "--encoder", str(out), *data, *PROBE_ARGS])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "probe.json").read_text())
    assert rec["encoder"]["kind"] == "encoder" and rec["view"] == run_rec["view"]
    assert rec["top1"] == run_rec["top1"] and rec["history"] == run_rec["history"]

    # Another clip shape through --view-preset: 16 frames of 224 px on an 8 x 64 encoder.
    other = tmp_path / "probe-16x224.json"
    res = CliRunner().invoke(app, ["eval", "probe", "--encoder", str(out), *data,
                                   "--view-preset", "ssv2-16x224", *PROBE_ARGS, "--out",
                                   str(other)])
    assert res.exit_code == 0, res.output
    assert "grid (8, 14, 14)" in res.output
    rec = json.loads(other.read_text())
    assert rec["view"]["spec"]["num_frames"] == 16
    assert rec["encoder"]["positions"] == {"time": "scaled", "space": "scaled"}


def test_docs_code_blocks_run_in_order(exported, tmp_path: Path, monkeypatch) -> None:
    """Every python block of docs/export.md, in order, in one namespace, where `encoder` is
    an export: loading, other clip shapes, and the policy head, which must learn the toy
    action from the frozen features (held-out R^2 far above predicting the mean)."""
    import shutil

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3, "docs/export.md: load, other shapes, policy head"
    shutil.copytree(exported.path, tmp_path / "encoder")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)
    assert scope["tokens"].shape == (2, 64, 64) and scope["pooled"].shape == (2, 64)
    assert scope["per_frame"].shape == (2, 4, 16, 64)
    assert scope["longer"].shape == scope["wider"].shape == (1, 128, 64)
    assert not any(p.requires_grad for p in scope["encoder"].parameters())
    assert scope["r2"] > 0.8, f"the policy head did not learn the toy action: R^2 {scope['r2']}"

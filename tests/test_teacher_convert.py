"""`salt teacher convert`: Hugging Face transformers VideoMAE checkpoints -> the official
VideoMAEv2 layout, checked against transformers' own forward (the reference of
tests/test_teacher_reference.py): the converted teacher's tokens match ``VideoMAEModel``'s.

Every parameter of the transformers model is randomised (q/v biases and norms included), so a
conversion that drops or swaps a weight cannot agree by accident.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.models.checkpoint import StateDictError, file_sha256
from salt_vla.models.hf_videomae import ConvertError, convert_hf_teacher, hf_to_official
from salt_vla.models.teacher import TeacherSpec, load_teacher

transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (the reference; pip install .[test])"
)

TOL = 1e-4
SPEC = TeacherSpec(arch="vit_tiny", num_frames=6, img_size=48, target_norm=False)  # 27 tokens


def hf_config(**kw) -> transformers.VideoMAEConfig:
    args = dict(
        image_size=48, patch_size=16, num_channels=3, num_frames=6, tubelet_size=2,
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
        hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, use_mean_pooling=True,
        attn_implementation="eager")
    return transformers.VideoMAEConfig(**{**args, **kw})


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
            elif "layernorm" in name or "norm" in name.split(".")[-2]:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def hf_model():
    model = transformers.VideoMAEModel(hf_config()).eval()
    randomise(model, 0)
    att = model.encoder.layer[0].attention.attention
    q_bias = att.q_bias if hasattr(att, "q_bias") else att.query.bias  # transformers < 5 / >= 5
    assert q_bias.abs().sum() > 0, "q bias not randomised: the test could not see it dropped"
    x = torch.randn(2, 3, SPEC.num_frames, SPEC.img_size, SPEC.img_size,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state
    return model, x, want


def _check(path: Path, x: torch.Tensor, want: torch.Tensor) -> None:
    teacher = load_teacher(path, SPEC)
    err = (teacher.targets(x) - want).abs().max().item()
    assert err <= TOL, f"converted teacher differs from transformers by {err:.3g}"


def test_save_pretrained_directory_converts_and_matches_transformers(hf_model, tmp_path: Path
                                                                     ) -> None:
    model, x, want = hf_model
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "teacher.pth"
    res = CliRunner().invoke(app, ["teacher", "convert", str(tmp_path / "hf"), "--out",
                                   str(out)])
    assert res.exit_code == 0, res.output
    assert "VideoMAEv2 vit_tiny" in res.output and "--teacher-arch vit_tiny" in res.output
    _check(out, x, want)
    sha = file_sha256(out)
    assert (tmp_path / "teacher.pth.sha256").read_text() == f"{sha}  teacher.pth\n"
    meta = json.loads((tmp_path / "teacher.pth.json").read_text())
    assert meta["sha256"] == sha and meta["teacher_spec"]["num_frames"] == 6
    assert load_teacher(out, SPEC).sha256 == sha


def test_in_memory_names_and_a_classification_model_convert(hf_model, tmp_path: Path) -> None:
    """transformers >= 5 names q/v biases query.bias / value.bias in memory; the video
    classification model adds the videomae. prefix, fc_norm and a classifier."""
    from safetensors.torch import save_file

    model, x, want = hf_model
    bare = tmp_path / "state.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    res = convert_hf_teacher(bare, tmp_path / "a.safetensors")
    _check(res.path, x, want)

    cls = transformers.VideoMAEForVideoClassification(hf_config(num_labels=5)).eval()
    cls.videomae.load_state_dict(model.state_dict())
    cls.save_pretrained(tmp_path / "cls")
    res = convert_hf_teacher(tmp_path / "cls", tmp_path / "b.pth")
    _check(res.path, x, want)
    assert {"fc_norm.weight", "head.weight"} <= set(load_teacher(res.path, SPEC).ignored_keys)


def test_pretraining_checkpoint_keeps_the_encoder_and_drops_the_decoder(hf_model,
                                                                        tmp_path: Path) -> None:
    model, x, want = hf_model
    pre = transformers.VideoMAEForPreTraining(hf_config(use_mean_pooling=False)).eval()
    missing = pre.videomae.load_state_dict(model.state_dict(), strict=False)
    assert set(missing.missing_keys) == {"layernorm.weight", "layernorm.bias"}
    pre.save_pretrained(tmp_path / "pre")
    res = convert_hf_teacher(tmp_path / "pre", tmp_path / "c.pth")
    assert any(k.startswith("decoder.") for k in res.dropped) and "mask_token" in res.dropped
    _check(res.path, x, want)  # the teacher reads block outputs, before the final layernorm


def test_key_bias_is_dropped_because_softmax_cancels_it() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, b = (torch.randn(1, 3, 5, 8, generator=g) for _ in range(3))
    b = b[:, :, :1]  # one bias vector shared by every key
    torch.testing.assert_close(torch.softmax(q @ (k + b).transpose(-1, -2), -1),
                               torch.softmax(q @ k.transpose(-1, -2), -1))
    d = 4
    state = {"embeddings.patch_embeddings.projection.weight": torch.zeros(d, 3, 2, 16, 16),
             **{f"encoder.layer.0.attention.attention.{n}.weight": torch.eye(d)
                for n in ("query", "key", "value")},
             "encoder.layer.0.attention.attention.key.bias": torch.ones(d)}
    conv = hf_to_official(state)
    assert torch.equal(conv.state["blocks.0.attn.qkv.weight"], torch.eye(d).repeat(3, 1))
    assert not conv.state["blocks.0.attn.q_bias"].any()  # no q/v biases: zeros, noted
    assert "encoder.layer.0.attention.attention.key.bias" in conv.dropped
    assert any("softmax" in n for n in conv.notes) and any("zeros" in n for n in conv.notes)


def test_refusals_say_what_the_file_is(hf_model, tmp_path: Path) -> None:
    model, _, _ = hf_model
    teacher = load_teacher("random:vit_tiny:0", SPEC)
    official = teacher.save_checkpoint(tmp_path / "official.pth")
    with pytest.raises(ConvertError, match="already in the official VideoMAEv2 layout"):
        convert_hf_teacher(official, tmp_path / "x.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ConvertError, match="not a transformers VideoMAE"):
        convert_hf_teacher(tmp_path / "other.pth", tmp_path / "x.pth")
    with pytest.raises(ConvertError, match="no such file"):
        convert_hf_teacher(tmp_path / "nope", tmp_path / "x.pth")
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(StateDictError, match="salt teacher convert"):  # the loader's hint
        load_teacher(tmp_path / "hf" / "model.safetensors", SPEC)
    res = CliRunner().invoke(app, ["teacher", "convert", str(tmp_path / "other.pth"), "--out",
                                   str(tmp_path / "x.pth")])
    assert res.exit_code == 1 and "not a transformers VideoMAE" in res.output

"""VideoMAEv2 teacher: layout, loading from every wrapper form, readable failures, targets."""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from salt_vla.models.checkpoint import (
    KeyDiff,
    StateDictError,
    diff_state_dict,
    file_sha256,
    strip_uniform_prefix,
)
from salt_vla.models.grid import TokenGrid
from salt_vla.models.teacher import (
    ARCHS,
    Teacher,
    TeacherSpec,
    load_teacher,
    parse_random_source,
    sinusoid_table,
)

SPEC = TeacherSpec(arch="vit_tiny", num_frames=4, img_size=32)  # 2 x 2 x 2 = 8 tokens
SOURCE = "random:vit_tiny:0"
BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.q_bias",
    "attn.v_bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return load_teacher(SOURCE, SPEC)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, SPEC.num_frames, SPEC.img_size, SPEC.img_size, generator=g)


@pytest.fixture(scope="module")
def state(teacher: Teacher) -> dict[str, torch.Tensor]:
    return teacher.official_state_dict()


def _head_keys(dim: int) -> dict[str, torch.Tensor]:
    """What an official fine-tuned file carries besides the encoder (mean pooling on)."""
    return {
        "fc_norm.weight": torch.ones(dim),
        "fc_norm.bias": torch.zeros(dim),
        "head.weight": torch.zeros(174, dim),
        "head.bias": torch.zeros(174),
    }


# --- architecture and layout ------------------------------------------------------------


def test_vit_base_16x224_gives_1568_tokens_of_768_on_meta():
    spec = TeacherSpec()
    assert spec.arch == "vit_base" and spec.grid == TokenGrid(8, 14, 14)
    with torch.device("meta"):  # shapes only: no ViT-B compute in tests
        model = Teacher(spec)
        out = model.targets(torch.empty(1, 3, 16, 224, 224))
    assert tuple(out.shape) == (1, 1568, 768)
    d, hidden = 768, 3072
    per_block = 4 * d + 3 * d * d + 2 * d + d * d + d + d * hidden + hidden + hidden * d + d
    expected = d * 3 * 2 * 16 * 16 + d + 12 * per_block
    assert sum(p.numel() for p in model.parameters()) == expected  # no qkv bias, no extras


@pytest.mark.parametrize(
    "arch, dim, depth, heads, hidden",
    [
        ("vit_tiny", 192, 4, 3, 768),
        ("vit_small", 384, 12, 6, 1536),
        ("vit_base", 768, 12, 12, 3072),
        ("vit_large", 1024, 24, 16, 4096),
        ("vit_huge", 1280, 32, 16, 5120),
        ("vit_giant", 1408, 40, 16, 6144),
    ],
)
def test_arch_sizes(arch, dim, depth, heads, hidden):
    patch = 14 if arch == "vit_giant" else 16
    with torch.device("meta"):
        model = Teacher(TeacherSpec(arch=arch, patch=patch))
    a = ARCHS[arch]
    assert (a.dim, a.depth, a.heads, a.mlp_hidden) == (dim, depth, heads, hidden)
    assert len(model.blocks) == depth and model.dim == dim
    assert tuple(model.blocks[0].mlp.fc1.weight.shape) == (hidden, dim)
    assert tuple(model.patch_embed.proj.weight.shape) == (dim, 3, 2, patch, patch)


def test_state_dict_is_the_official_layout(state):
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    expected |= {f"blocks.{i}.{k}" for i in range(4) for k in BLOCK_KEYS}
    assert set(state) == expected  # no pos_embed (fixed), no qkv.bias, no final norm


def test_sinusoid_table_formula():
    d = 16
    table = sinusoid_table(5, d)
    assert table.shape == (5, d) and table.dtype == torch.float32
    for p in range(5):
        for j in range(d):
            angle = p / 10000 ** (2 * (j // 2) / d)
            want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[p, j].item() == pytest.approx(want, abs=1e-6), (p, j)


def test_tokens_are_time_major(teacher, x):
    """Token t*(h*w) + y*w + x is the tubelet at (t, y, x), as the shared grid says."""
    grid = teacher.grid
    emb = teacher.patch_embed(x)
    w, b = teacher.patch_embed.proj.weight, teacher.patch_embed.proj.bias
    tub, p = SPEC.tubelet, SPEC.patch
    for t in range(grid.t):
        for yy in range(grid.h):
            for xx in range(grid.w):
                clip = x[
                    0, :, t * tub : (t + 1) * tub, yy * p : (yy + 1) * p, xx * p : (xx + 1) * p
                ]
                want = torch.einsum("dcthw,cthw->d", w, clip) + b
                got = emb[0, t * grid.per_frame + yy * grid.w + xx]
                assert torch.allclose(got, want, atol=1e-4), (t, yy, xx)


# --- targets ----------------------------------------------------------------------------


def test_teacher_is_frozen_and_targets_are_float32_without_grad(teacher, x):
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    y = teacher.targets(x.clone().requires_grad_(True))
    assert y.shape == (2, 8, 192) and y.dtype == torch.float32 and y.grad_fn is None


def test_target_norm_gives_zero_mean_unit_variance_tokens(teacher, x):
    y = teacher.targets(x)
    assert y.mean(-1).abs().max() < 1e-5
    assert (y.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    raw = load_teacher(SOURCE, TeacherSpec(**{**SPEC.to_dict(), "target_norm": False}))
    r = raw.targets(x)
    assert r.mean(-1).abs().max() > 1e-2  # the raw tokens are not normalised already
    assert torch.allclose(F.layer_norm(r, (192,)), y, atol=1e-5)


def test_layer_selection(teacher, x):
    def at(layer: int) -> Teacher:
        return load_teacher(SOURCE, TeacherSpec(**{**SPEC.to_dict(), "layer": layer}))

    assert teacher.layer_index == 3 and teacher.describe()["layer_index"] == 3
    assert torch.equal(at(3).targets(x), teacher.targets(x))
    assert at(-3).layer_index == 1
    with torch.no_grad():
        h = teacher.patch_embed(x) + teacher.pos_embed
        h = teacher.blocks[1](teacher.blocks[0](h))
    assert torch.allclose(at(1).targets(x), F.layer_norm(h, (192,)), atol=1e-5)
    assert not torch.allclose(at(1).targets(x), teacher.targets(x), atol=1e-2)
    for bad in (4, -5):
        with pytest.raises(ValueError, match="out of range"):
            TeacherSpec(**{**SPEC.to_dict(), "layer": bad})


def test_wrong_input_shape_is_one_clear_error(teacher):
    with pytest.raises(ValueError, match=r"expects normalised input \[B, 3, 4, 32, 32\]"):
        teacher.targets(torch.zeros(1, 3, 8, 32, 32))


def test_describe_for_cache_json(teacher):
    d = teacher.describe()
    assert d == {
        "arch": "vit_tiny",
        "checkpoint": SOURCE,
        "sha256": SOURCE,
        "layer": -1,
        "layer_index": 3,
        "target_norm": True,
        "dim": 192,
        "depth": 4,
        "tubelet": 2,
        "patch": 16,
        "num_frames": 4,
        "img_size": 32,
    }


# --- random init --------------------------------------------------------------------------


def test_random_same_seed_same_weights_other_seed_differs(state):
    again = load_teacher(SOURCE, SPEC).official_state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    other = load_teacher("random:vit_tiny:1", SPEC).official_state_dict()
    assert not any(torch.equal(state[k], other[k]) for k in state)
    assert all(v.abs().sum() > 0 for v in state.values())  # every weight set, biases too


def test_random_arch_overrides_spec_arch():
    t = load_teacher("random:vit_tiny:0", TeacherSpec(num_frames=4, img_size=32))  # vit_base
    assert t.spec.arch == "vit_tiny" and t.dim == 192 and t.describe()["arch"] == "vit_tiny"


@pytest.mark.parametrize("bad", ["random:vit_tiny", "random:vit_nope:0", "random:vit_tiny:x"])
def test_bad_random_source(bad):
    with pytest.raises(ValueError, match="random:ARCH:SEED"):
        parse_random_source(bad)


# --- checkpoint files ----------------------------------------------------------------------


def _write(path: Path, form: str, state: dict[str, torch.Tensor]) -> None:
    full = {**state, **_head_keys(192)}
    if form == "bare":
        torch.save(state, path)
    elif form in ("model", "module", "state_dict"):
        torch.save({form: full, "epoch": 3}, path)
    elif form == "ddp_prefix":
        torch.save({"module": {f"module.{k}": v for k, v in full.items()}}, path)
    elif form == "with_args":  # VideoMAEv2 training scripts save their argparse.Namespace
        torch.save({"model": full, "args": argparse.Namespace(lr=1e-3, model="vit")}, path)
    elif form == "safetensors":
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    elif form == "encoder_prefix_safetensors":
        save_file({f"encoder.{k}": v.contiguous() for k, v in state.items()}, str(path))
    else:
        raise AssertionError(form)


@pytest.mark.parametrize(
    "form, name",
    [
        ("bare", "w.pth"),
        ("model", "w.pth"),
        ("module", "w.pt"),
        ("state_dict", "w.pth"),
        ("ddp_prefix", "w.pth"),
        ("with_args", "w.pth"),
        ("safetensors", "w.safetensors"),
        ("encoder_prefix_safetensors", "w.safetensors"),
    ],
)
def test_every_checkpoint_form_gives_identical_targets(tmp_path, teacher, state, x, form, name):
    path = tmp_path / name
    _write(path, form, state)
    loaded = load_teacher(path, SPEC)
    assert torch.equal(loaded.targets(x), teacher.targets(x)), form
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.describe()["checkpoint"] == str(path.resolve())
    has_head = form not in ("bare", "encoder_prefix_safetensors")
    want_ignored = tuple(sorted(_head_keys(192))) if has_head else ()
    assert loaded.ignored_keys == want_ignored


def test_final_norm_of_a_cls_token_model_is_ignored(tmp_path, teacher, state, x):
    """use_mean_pooling=False files carry ``norm.*``; targets are the block output before it."""
    path = tmp_path / "w.pth"
    torch.save({**state, "norm.weight": torch.rand(192), "norm.bias": torch.rand(192)}, path)
    loaded = load_teacher(path, SPEC)
    assert loaded.ignored_keys == ("norm.bias", "norm.weight")
    assert torch.equal(loaded.targets(x), teacher.targets(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_checkpoint_round_trip(tmp_path, teacher, x, suffix):
    path = teacher.save_checkpoint(tmp_path / f"teacher{suffix}")
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    assert torch.equal(load_teacher(path, SPEC).targets(x), teacher.targets(x))


def test_layer_scale_is_used_when_the_file_has_it(tmp_path, teacher, state, x):
    ones = {f"blocks.{i}.gamma_{j}": torch.ones(192) for i in range(4) for j in (1, 2)}
    torch.save({**state, **ones}, tmp_path / "ls1.pth")
    scaled = load_teacher(tmp_path / "ls1.pth", SPEC)
    assert scaled.layer_scale and not teacher.layer_scale
    assert torch.allclose(scaled.targets(x), teacher.targets(x), atol=1e-6)
    assert "blocks.0.gamma_1" in scaled.official_state_dict()
    half = {k: torch.full((192,), 0.5) for k in ones}
    torch.save({**state, **half}, tmp_path / "ls2.pth")
    other = load_teacher(tmp_path / "ls2.pth", SPEC).targets(x)
    assert not torch.allclose(other, teacher.targets(x), atol=1e-2)


def test_sha256_is_streamed_file_hash(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=777) == hashlib.sha256(data).hexdigest()


# --- readable failures ----------------------------------------------------------------------


def test_wrong_arch_names_the_file_the_diff_and_the_right_arch(tmp_path, state):
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    with pytest.raises(StateDictError) as err:
        load_teacher(path, TeacherSpec(arch="vit_small", num_frames=4, img_size=32))
    msg = str(err.value)
    assert str(path.resolve()) in msg and err.value.path == str(path.resolve())
    assert "does not match VideoMAEv2 vit_small" in msg
    assert "missing from the file (104)" in msg and "blocks.{4-11}.attn.q_bias" in msg
    assert "shape mismatch" in msg and "patch_embed.proj.weight: [192, 3, 2, 16, 16] vs" in msg
    assert "is this a VideoMAEv2 vit_tiny checkpoint?" in msg and "--teacher-arch vit_tiny" in msg


def test_wrong_patch_size_hint(tmp_path, state):
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    with pytest.raises(StateDictError, match="the file's patch is 16: set patch=16"):
        load_teacher(path, TeacherSpec(arch="vit_tiny", num_frames=4, img_size=32, patch=8))


def test_missing_keys_are_listed(tmp_path, state):
    path = tmp_path / "partial.pth"
    broken = {k: v for k, v in state.items() if not k.endswith(("q_bias", "v_bias"))}
    torch.save({"model": broken}, path)
    with pytest.raises(StateDictError) as err:
        load_teacher(path, SPEC)
    msg = str(err.value)
    assert "missing from the file (8)" in msg
    assert "blocks.{0-3}.attn.q_bias" in msg and "blocks.{0-3}.attn.v_bias" in msg
    assert "unexpected" not in msg


def test_renamed_keys_are_listed_as_missing_and_unexpected(tmp_path, state):
    path = tmp_path / "renamed.safetensors"
    renamed = {k.replace("blocks.", "layers."): v.contiguous() for k, v in state.items()}
    save_file(renamed, str(path))
    with pytest.raises(StateDictError) as err:
        load_teacher(path, SPEC)
    msg = str(err.value)
    assert "missing from the file (52)" in msg and "blocks.{0-3}.mlp.fc1.weight" in msg
    assert "unexpected in the file (52)" in msg and "layers.{0-3}.mlp.fc1.weight" in msg


def test_timm_style_qkv_bias_hint(tmp_path, state):
    path = tmp_path / "timm.pth"
    timm = {k: v for k, v in state.items() if not k.endswith(("q_bias", "v_bias"))}
    timm |= {f"blocks.{i}.attn.qkv.bias": torch.zeros(3 * 192) for i in range(4)}
    torch.save(timm, path)
    with pytest.raises(StateDictError, match="full 'attn.qkv.bias'"):
        load_teacher(path, SPEC)


def test_pretraining_checkpoint_hint(tmp_path, state):
    path = tmp_path / "pretrain.pth"
    pre = {f"encoder.{k}": v for k, v in state.items()}
    pre["decoder.blocks.0.norm1.weight"] = torch.ones(4)
    torch.save({"model": pre}, path)
    with pytest.raises(StateDictError, match="PRE-TRAINING checkpoint"):
        load_teacher(path, SPEC)


@pytest.mark.parametrize(
    "content, match",
    [
        ([1, 2, 3], "expected a state dict"),
        ({"optimizer": {"lr": 1.0}, "epoch": 1}, "no state dict found.*'optimizer'"),
    ],
)
def test_not_a_state_dict(tmp_path, content, match):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(StateDictError, match=match):
        load_teacher(path, SPEC)


def test_unreadable_and_absent_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(StateDictError, match="junk.pth: not a readable PyTorch checkpoint"):
        load_teacher(junk, SPEC)
    bad_st = tmp_path / "junk.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(StateDictError, match="not a readable safetensors file"):
        load_teacher(bad_st, SPEC)
    with pytest.raises(StateDictError, match="file not found"):
        load_teacher(tmp_path / "nope.pth", SPEC)


class _Custom:  # an arbitrary pickled class: weights_only loading must refuse it
    pass


def test_arbitrary_pickles_are_refused(tmp_path, state):
    path = tmp_path / "pickle.pth"
    torch.save({"model": state, "extra": _Custom()}, path)
    with pytest.raises(StateDictError, match="weights_only=True"):
        load_teacher(path, SPEC)


# --- checkpoint helpers --------------------------------------------------------------------


def test_uniform_prefix_only():
    t = torch.zeros(1)
    assert strip_uniform_prefix({"module.encoder.a": t, "module.encoder.b": t}) == (
        {"a": t, "b": t},
        "module.encoder.",
    )
    mixed = {"encoder.a": t, "decoder.b": t}
    assert strip_uniform_prefix(mixed) == (mixed, "")


def test_key_diff_format_collapses_block_indices():
    t = torch.zeros(2)
    expected = {f"blocks.{i}.w": t for i in (0, 1, 2, 3, 5)} | {"a": t}
    diff = diff_state_dict({"a": torch.zeros(3), "zz": t, "head.w": t}, expected, ["head\\."])
    assert isinstance(diff, KeyDiff) and not diff.ok and diff.ignored == ("head.w",)
    text = diff.format()
    assert "missing from the file (5):\n    blocks.{0-3,5}.w" in text
    assert "unexpected in the file (1):\n    zz" in text
    assert "a: [3] vs [2]" in text

"""Student ViT and the fixed 3-D sin-cos position table: shapes, sizes, context-only forward."""

from __future__ import annotations

import pytest
import torch

from salt_vla.models.grid import TokenGrid
from salt_vla.models.posembed import axis_dims, sincos_pos_embed_3d
from salt_vla.models.student import Student, StudentConfig, split_weight_decay

# 4 frames x 32 px, tubelet 2, patch 16 -> a 2 x 2 x 2 grid of 8 tokens.
TINY = dict(size="tiny", num_frames=4, img_size=32, embed_dim=32, depth=2, heads=2)


def tiny_student(**kw: object) -> Student:
    torch.manual_seed(0)
    return Student(StudentConfig(**{**TINY, **kw})).eval()


def video(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 4, 32, 32, generator=g)


def tubelet_slice(idx: int, grid: TokenGrid, tubelet: int = 2, patch: int = 16) -> tuple:
    """Pixel region [:, :, T, H, W] of time-major token ``idx``."""
    t, rest = divmod(idx, grid.per_frame)
    y, x = divmod(rest, grid.w)
    return (
        slice(None),
        slice(None),
        slice(t * tubelet, (t + 1) * tubelet),
        slice(y * patch, (y + 1) * patch),
        slice(x * patch, (x + 1) * patch),
    )


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- position table ---------------------------------------------------------------------


def test_pos_embed_shape_dtype_and_determinism() -> None:
    grid = TokenGrid(8, 14, 14)
    a = sincos_pos_embed_3d(768, grid)
    b = sincos_pos_embed_3d(768, grid)
    assert a.shape == (grid.num_tokens, 768)
    assert a.dtype == torch.float32
    assert torch.equal(a, b), "position table is not deterministic"
    assert a.abs().max() <= 1.0
    # every token gets a different position vector
    assert torch.unique(a, dim=0).shape[0] == grid.num_tokens


def test_pos_embed_is_time_major_and_axis_separable() -> None:
    grid = TokenGrid(3, 4, 5)
    dim = 48
    dt, dh, _ = axis_dims(dim)
    table = sincos_pos_embed_3d(dim, grid).view(grid.t, grid.h, grid.w, dim)
    # token (0,0,0): sin(0)=0 then cos(0)=1 in each axis block
    assert torch.allclose(table[0, 0, 0, : dt // 2], torch.zeros(dt // 2))
    assert torch.allclose(table[0, 0, 0, dt // 2 : dt], torch.ones(dt // 2))
    # the time block depends only on t, the height block only on y, the width block only on x
    time_part = table[..., :dt]
    assert torch.equal(time_part, time_part[:, :1, :1].expand_as(time_part))
    h_part = table[..., dt : dt + dh]
    assert torch.equal(h_part, h_part[:1, :, :1].expand_as(h_part))
    w_part = table[..., dt + dh :]
    assert torch.equal(w_part, w_part[:1, :1, :].expand_as(w_part))
    assert not torch.equal(table[1, 0, 0], table[0, 0, 0]), "time does not change the table"


@pytest.mark.parametrize("dim", [6, 32, 192, 384, 768, 1024])
def test_pos_embed_axis_dims_sum_to_dim(dim: int) -> None:
    parts = axis_dims(dim)
    assert sum(parts) == dim and all(p % 2 == 0 and p > 0 for p in parts), parts


def test_pos_embed_rejects_odd_dim() -> None:
    with pytest.raises(ValueError, match="even dim"):
        sincos_pos_embed_3d(33, TokenGrid(1, 2, 2))


def test_student_pos_embed_is_a_fixed_buffer() -> None:
    model = tiny_student()
    names = {n for n, _ in model.named_parameters()}
    assert not any("pos" in n for n in names), f"position table is learned: {names}"
    assert "pos_embed" not in model.state_dict(), "fixed table should not be checkpointed"
    assert torch.equal(model.pos_embed, sincos_pos_embed_3d(32, model.grid))


# --- config and sizes -------------------------------------------------------------------


def test_config_presets_and_overrides() -> None:
    assert StudentConfig(size="base").dims == (768, 12, 12)
    assert StudentConfig(size="tiny").dims == (192, 4, 3)
    assert StudentConfig(size="small").dims == (384, 12, 6)
    assert StudentConfig(size="large").dims == (1024, 24, 16)
    assert StudentConfig(size="small", depth=3).dims == (384, 3, 6)
    with pytest.raises(ValueError, match="unknown student size"):
        StudentConfig(size="huge-ish")
    with pytest.raises(ValueError, match="not divisible"):
        StudentConfig(embed_dim=100, heads=3)
    with pytest.raises(ValueError, match="multiple of patch"):
        StudentConfig(img_size=100)


def test_base_student_has_about_86m_parameters() -> None:
    with torch.device("meta"):
        model = Student(StudentConfig(size="base"))
    count = n_params(model)
    # vit_base_patch16_224 is 86.6M; ours drops cls/pos/head and has a 2-frame tubelet conv.
    assert 84e6 < count < 88e6, f"base student has {count / 1e6:.2f}M parameters, want ~86M"
    assert model.num_tokens == 8 * 14 * 14
    assert model.embed_dim == 768


def test_sizes_grow() -> None:
    with torch.device("meta"):
        counts = [n_params(Student(StudentConfig(size=s))) for s in ("tiny", "small", "large")]
    assert counts[0] < counts[1] < 86e6 < counts[2], counts


def test_blocks_use_fused_sdpa_attention() -> None:
    model = tiny_student()
    assert all(blk.attn.fused_attn for blk in model.blocks), "timm attention is not using SDPA"


def test_init_like_timm_vit() -> None:
    model = Student(StudentConfig(size="small", num_frames=4, img_size=32, depth=2))
    w = model.blocks[0].mlp.fc1.weight
    assert 0.015 < w.std().item() < 0.025, f"linear init std {w.std().item():.4f}, want ~0.02"
    assert model.patch_embed.weight.std().item() < 0.025
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.count_nonzero(model.patch_embed.bias) == 0
    assert torch.all(model.norm.weight == 1)


# --- forward ----------------------------------------------------------------------------


def test_forward_shapes_and_properties() -> None:
    model = tiny_student()
    assert model.grid == TokenGrid(2, 2, 2)
    assert model.num_tokens == 8 and model.embed_dim == 32
    x = video()
    ctx = torch.tensor([[0, 3, 5], [7, 1, 2]])
    assert model(x, ctx).shape == (2, 3, 32)
    assert model(x).shape == (2, 8, 32)
    assert model.forward_features(x).shape == (2, 8, 32)
    assert torch.equal(model(x), model.forward_features(x))


def test_depth0_context_forward_is_a_gather_of_all_tokens() -> None:
    model = tiny_student(depth=0)
    x = video()
    ctx = torch.tensor([[6, 0, 3], [2, 7, 4]])
    full = model.forward_features(x)
    expected = torch.gather(full, 1, ctx[..., None].expand(-1, -1, 32))
    assert torch.allclose(model(x, ctx), expected, atol=1e-6)


def test_permuting_ctx_idx_permutes_outputs() -> None:
    model = tiny_student()
    x = video()
    ctx = torch.tensor([[0, 3, 5, 6], [7, 1, 2, 4]])
    perm = torch.tensor([2, 0, 3, 1])
    out = model(x, ctx)
    out_perm = model(x, ctx[:, perm])
    assert torch.allclose(out_perm, out[:, perm], atol=1e-5)


def test_output_depends_only_on_context_tubelets() -> None:
    model = tiny_student()
    x = video()
    ctx = torch.tensor([[0, 3, 5], [0, 3, 5]])
    base = model(x, ctx)
    outside = x.clone()
    outside[tubelet_slice(6, model.grid)] += 5.0  # token 6 is not in the context
    assert torch.equal(model(outside, ctx), base), "a masked-out tubelet changed the output"
    inside = x.clone()
    inside[tubelet_slice(3, model.grid)] += 5.0
    assert not torch.allclose(model(inside, ctx), base), "a context tubelet had no effect"


def test_input_gradient_is_zero_outside_context() -> None:
    model = tiny_student().train()
    x = video().requires_grad_(True)
    ctx_tokens = [1, 4, 6]
    ctx = torch.tensor([ctx_tokens, ctx_tokens])
    model(x, ctx).pow(2).sum().backward()
    assert x.grad is not None
    for i in range(model.num_tokens):
        g = x.grad[tubelet_slice(i, model.grid)]
        if i in ctx_tokens:
            assert g.abs().sum() > 0, f"no gradient reached context tubelet {i}"
        else:
            assert torch.count_nonzero(g) == 0, f"gradient leaked into masked tubelet {i}"
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_grad_checkpointing_gives_identical_outputs_and_grads() -> None:
    x = video()
    ctx = torch.tensor([[0, 2, 5, 7], [1, 3, 4, 6]])
    results = []
    for ckpt in (False, True):
        model = tiny_student(grad_checkpointing=ckpt, drop_path=0.1).train()
        torch.manual_seed(123)  # same stochastic-depth draws in both runs
        out = model(x, ctx)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6), "checkpointing changed the outputs"
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), f"grad differs: {name}"


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny_student()
    with pytest.raises(ValueError, match="expects normalised video"):
        model(torch.randn(1, 4, 3, 32, 32))  # [B, T, C, H, W] by mistake
    with pytest.raises(ValueError, match="grid has 8 tokens"):
        model(video(1), torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match=r"\[B=2, K\]"):
        model(video(2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="torch.long"):
        model(video(1), torch.tensor([[0.0, 1.0]]))


def test_split_weight_decay_exempts_biases_and_norms() -> None:
    model = tiny_student()
    decay, no_decay = split_weight_decay([model])
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    assert all(p.ndim >= 2 for p in decay)
    decay_ids = {id(p) for p in decay}
    assert id(model.patch_embed.weight) in decay_ids
    assert id(model.blocks[0].attn.qkv.weight) in decay_ids
    no_decay_ids = {id(p) for p in no_decay}
    assert id(model.norm.weight) in no_decay_ids
    assert id(model.blocks[0].attn.qkv.bias) in no_decay_ids
    assert id(model.patch_embed.bias) in no_decay_ids


def test_pos_gain_starts_as_the_plain_student_and_learns() -> None:
    plain, gained = tiny_student(), tiny_student(pos_gain=True)
    x = video()
    gained.load_state_dict({**plain.state_dict(), "pos_scale": torch.ones(1)})
    torch.testing.assert_close(gained(x), plain(x))  # gain 1 at init: the same network
    assert "pos_scale" not in plain.state_dict() and gained.pos_scale is not None
    gained.train()
    gained(x).pow(2).mean().backward()
    assert gained.pos_scale.grad is not None and gained.pos_scale.grad.abs().item() > 0
    with torch.no_grad():
        gained.pos_scale.fill_(3.0)
    tokens = gained.embed(x) - plain.embed(x)
    torch.testing.assert_close(tokens, 2.0 * plain.pos_embed.expand_as(tokens))
    decay, no_decay = split_weight_decay([gained])
    assert any(p is gained.pos_scale for p in no_decay)  # a gain is not weight-decayed

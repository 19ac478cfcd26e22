"""Predictor: shapes, size, target order, and gradients through student + predictor."""

from __future__ import annotations

import pytest
import torch

from salt_vla.models.grid import TokenGrid
from salt_vla.models.predictor import Predictor, PredictorConfig
from salt_vla.models.student import Student, StudentConfig, split_weight_decay

# 4 frames x 32 px, tubelet 2, patch 16 -> a 2 x 2 x 2 grid of 8 tokens.
GRID_KW = dict(num_frames=4, img_size=32)
IN_DIM, OUT_DIM = 32, 48  # teacher width differs from student width on purpose


def tiny_predictor(**kw: object) -> Predictor:
    torch.manual_seed(0)
    cfg = PredictorConfig(
        **{"in_dim": IN_DIM, "out_dim": OUT_DIM, "width": 24, "depth": 2, "heads": 2} | GRID_KW | kw
    )
    return Predictor(cfg).eval()


def tiny_student() -> Student:
    torch.manual_seed(1)
    return Student(
        StudentConfig(size="tiny", embed_dim=IN_DIM, depth=2, heads=2, **GRID_KW)
    ).train()


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


CTX = torch.tensor([[0, 3, 5], [1, 2, 6]])
TGT = torch.tensor([[1, 2, 4, 6, 7], [0, 3, 4, 5, 7]])


def ctx_tokens(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 3, IN_DIM, generator=torch.Generator().manual_seed(seed))


def test_output_shape_any_teacher_width() -> None:
    for out_dim in (48, 7):
        pred = tiny_predictor(out_dim=out_dim)
        assert pred(ctx_tokens(), CTX, TGT).shape == (2, 5, out_dim)
    assert tiny_predictor().grid == TokenGrid(2, 2, 2)


def test_default_predictor_has_about_22m_parameters() -> None:
    with torch.device("meta"):
        pred = Predictor(PredictorConfig(in_dim=768, out_dim=768))
    count = sum(p.numel() for p in pred.parameters())
    assert pred.cfg.depth == 12 and pred.cfg.width == 384
    assert 22e6 * 0.9 < count < 22e6 * 1.1, f"predictor has {count / 1e6:.2f}M, want 22M±10%"
    assert all(blk.attn.fused_attn for blk in pred.blocks), "timm attention is not using SDPA"


def test_for_student_matches_student_width_and_grid() -> None:
    scfg = StudentConfig(size="small", num_frames=8, img_size=64)
    pcfg = PredictorConfig.for_student(scfg, out_dim=768, depth=6)
    assert (pcfg.in_dim, pcfg.out_dim, pcfg.depth, pcfg.width) == (384, 768, 6, 384)
    assert pcfg.grid == scfg.grid


def test_outputs_follow_tgt_idx_order() -> None:
    pred = tiny_predictor()
    ctx = ctx_tokens()
    out = pred(ctx, CTX, TGT)
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert torch.allclose(pred(ctx, CTX, TGT[:, perm]), out[:, perm], atol=1e-5)


def test_context_order_does_not_matter() -> None:
    pred = tiny_predictor()
    ctx = ctx_tokens()
    perm = torch.tensor([2, 0, 1])
    out = pred(ctx, CTX, TGT)
    assert torch.allclose(pred(ctx[:, perm], CTX[:, perm], TGT), out, atol=1e-5)


def test_predictions_depend_on_target_position_and_context() -> None:
    pred = tiny_predictor()
    out = pred(ctx_tokens(), CTX, TGT)
    assert not torch.allclose(out[:, 0], out[:, 1]), "targets got identical predictions"
    assert not torch.allclose(pred(ctx_tokens(seed=9), CTX, TGT), out), "context ignored"


def test_mask_token_and_pos_table() -> None:
    pred = tiny_predictor()
    assert pred.mask_token.shape == (1, 1, 24) and pred.mask_token.requires_grad
    assert 0 < pred.mask_token.std() < 0.05, "mask token not initialised as normal(0, 0.02)"
    assert "pos_embed" not in dict(pred.named_parameters())
    assert "pos_embed" not in pred.state_dict()
    assert pred.pos_embed.shape == (8, 24)


def test_gradients_reach_exactly_the_context_path() -> None:
    student, pred = tiny_student(), tiny_predictor().train()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    x.requires_grad_(True)
    ctx_list = [0, 3, 5]
    ctx = torch.tensor([ctx_list, ctx_list])
    tgt = torch.tensor([[1, 2, 4, 6, 7]] * 2)
    target = torch.randn(2, 5, OUT_DIM)
    loss = (pred(student(x, ctx), ctx, tgt) - target).abs().mean()
    loss.backward()
    for module, tag in ((student, "student"), (pred, "predictor")):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no grad for {tag}.{name}"
    for i in range(student.num_tokens):
        g = x.grad[tubelet_slice(i, student.grid)]
        if i in ctx_list:
            assert g.abs().sum() > 0, f"no gradient reached context tubelet {i}"
        else:
            assert torch.count_nonzero(g) == 0, f"gradient leaked into target tubelet {i}"


def test_grad_checkpointing_gives_identical_outputs_and_grads() -> None:
    ctx = ctx_tokens()
    results = []
    for ckpt in (False, True):
        pred = tiny_predictor(grad_checkpointing=ckpt).train()
        inp = ctx.clone().requires_grad_(True)
        out = pred(inp, CTX, TGT)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in pred.named_parameters()}
        grads["input"] = inp.grad.clone()
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6), "checkpointing changed the outputs"
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), f"grad differs: {name}"


def test_bad_inputs_raise_clear_errors() -> None:
    pred = tiny_predictor()
    with pytest.raises(ValueError, match="in_dim = student width"):
        pred(torch.randn(2, 3, IN_DIM + 1), CTX, TGT)
    with pytest.raises(ValueError, match="ctx_idx has 2 indices"):
        pred(ctx_tokens(), CTX[:, :2], TGT)
    with pytest.raises(ValueError, match="tgt_idx.*grid has 8 tokens"):
        pred(ctx_tokens(), CTX, TGT + 3)
    with pytest.raises(ValueError, match="not divisible"):
        PredictorConfig(in_dim=8, out_dim=8, width=30, heads=4)


def test_weight_decay_split_exempts_mask_token() -> None:
    student, pred = tiny_student(), tiny_predictor()
    decay, no_decay = split_weight_decay([student, pred])
    n_all = len(list(student.parameters())) + len(list(pred.parameters()))
    assert len(decay) + len(no_decay) == n_all
    no_decay_ids = {id(p) for p in no_decay}
    assert id(pred.mask_token) in no_decay_ids
    assert id(pred.proj.bias) in no_decay_ids
    assert id(pred.proj.weight) not in no_decay_ids


def test_without_context_positions_only_the_context_contents_locate_it() -> None:
    """ctx_pos=False: moving a context token to another grid position (same content) leaves
    the prediction unchanged; with the table it changes it."""
    ctx = torch.randn(1, 2, IN_DIM, generator=torch.Generator().manual_seed(0))
    tgt = torch.tensor([[5, 7]])
    for ctx_pos, same in ((False, True), (True, False)):
        pred = tiny_predictor(ctx_pos=ctx_pos)
        with torch.no_grad():
            a = pred(ctx, torch.tensor([[0, 1]]), tgt)
            b = pred(ctx, torch.tensor([[2, 3]]), tgt)
        assert torch.allclose(a, b) == same, f"ctx_pos={ctx_pos}"
    assert tiny_predictor(ctx_pos=False).state_dict().keys() == tiny_predictor().state_dict().keys()
# The state-dict layout of checkpoints written before the predictor and the pixel decoder
# shared their body (models/target_head.py): it must not change, or old runs stop loading.
BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def blocks_keys(depth: int) -> list[str]:
    return [f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS]


def test_predictor_state_dict_keys_are_unchanged() -> None:
    sd = tiny_predictor().state_dict()  # width 24, depth 2, 32 -> 48 channels
    assert list(sd) == ["mask_token", "embed.weight", "embed.bias", *blocks_keys(2),
                        "norm.weight", "norm.bias", "proj.weight", "proj.bias"]
    shapes = {k: tuple(sd[k].shape) for k in ("mask_token", "embed.weight", "proj.weight")}
    assert shapes == {"mask_token": (1, 1, 24), "embed.weight": (24, IN_DIM),
                      "proj.weight": (OUT_DIM, 24)}


def test_pixel_decoder_state_dict_keys_are_unchanged() -> None:
    from salt_vla.models.pixel_decoder import PixelDecoder, PixelDecoderConfig

    dec = PixelDecoder(PixelDecoderConfig(in_dim=IN_DIM, width=24, depth=2, heads=2, **GRID_KW))
    sd = dec.state_dict()
    assert list(sd) == ["mask_token", "in_norm.weight", "in_norm.bias", "embed.weight",
                        "embed.bias", *blocks_keys(2), "norm.weight", "norm.bias",
                        "head.weight", "head.bias"]
    shapes = {k: tuple(sd[k].shape) for k in ("in_norm.weight", "embed.weight", "head.weight")}
    assert shapes == {"in_norm.weight": (IN_DIM,), "embed.weight": (24, IN_DIM),
                      "head.weight": (2 * 16 * 16 * 3, 24)}

"""LR / weight-decay schedules and the optimiser's parameter groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salt_vla.trainer.build import build_model
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.optim import build_optimizer, set_schedules
from salt_vla.trainer.schedules import cosine, lr_at, weight_decay_at


def test_lr_warmup_then_cosine() -> None:
    total, warmup, lr, floor = 1000, 100, 3e-4, 3e-5
    assert lr_at(0, total, warmup, lr, floor) == pytest.approx(lr / warmup)
    assert lr_at(warmup - 1, total, warmup, lr, floor) == pytest.approx(lr)
    assert lr_at(warmup, total, warmup, lr, floor) == pytest.approx(lr)
    mid = warmup + (total - warmup) // 2
    assert lr_at(mid, total, warmup, lr, floor) == pytest.approx((lr + floor) / 2)
    assert lr_at(total, total, warmup, lr, floor) == pytest.approx(floor)
    values = [lr_at(s, total, warmup, lr, floor) for s in range(total)]
    rising, falling = np.diff(values[:warmup]), np.diff(values[warmup:])
    assert (rising > 0).all() and (falling <= 0).all()


def test_weight_decay_rises_along_a_cosine() -> None:
    assert weight_decay_at(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert weight_decay_at(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert weight_decay_at(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(5, 0, 1.0, 2.0) == 2.0


def test_no_weight_decay_on_norms_biases_and_mask_token() -> None:
    cfg = resolve("tiny")
    model = build_model(cfg, 8, 64)
    opt = build_optimizer([model.student, model.predictor], cfg, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["apply_wd"] and not no_decay["apply_wd"]
    names = {id(p): n for n, p in model.named_parameters()}
    nd_names = {names[id(p)] for p in no_decay["params"]}
    d_names = {names[id(p)] for p in decay["params"]}
    assert "predictor.mask_token" in nd_names
    assert all(n.endswith(".bias") or "norm" in n or n == "predictor.mask_token"
               for n in nd_names), nd_names
    assert all(n.endswith(".weight") and "norm" not in n for n in d_names), d_names
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(nd_names) + len(d_names) == n_params
    lr, wd = set_schedules(opt, 0, 100, cfg)
    assert lr == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert decay["weight_decay"] == pytest.approx(cfg.weight_decay) and wd == decay["weight_decay"]
    assert no_decay["weight_decay"] == 0.0
    assert all(g["lr"] == lr for g in opt.param_groups)
    assert math.isclose(opt.defaults["betas"][1], 0.95)


def test_extension_legs_stretch_the_rest_of_the_cosine() -> None:
    from salt_vla.trainer.schedules import progress

    lr, floor, warmup = 1.0, 0.1, 10
    # One leg is exactly the plain schedule.
    for step in range(0, 120, 7):
        assert lr_at(step, 100, warmup, lr, floor, [(0, 100)]) == lr_at(step, 100, warmup, lr,
                                                                          floor)
    # Stopped at 40 of 100, extended to 200: unchanged before 40, continuous at 40, then the
    # remaining part of the cosine spread over 40..200, ending at the floor.
    legs = [(0, 100), (40, 200)]
    for step in range(0, 41, 5):
        assert lr_at(step, 200, warmup, lr, floor, legs) == lr_at(step, 100, warmup, lr, floor)
    p40 = progress(40, warmup, [(0, 100)])
    assert progress(120, warmup, legs) == pytest.approx(p40 + (1 - p40) * 0.5)
    assert lr_at(200, 200, warmup, lr, floor, legs) == pytest.approx(floor)
    values = [lr_at(s, 200, warmup, lr, floor, legs) for s in range(40, 201)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # still decaying
    # A finished run extended stays at the end values; extending during warmup only moves
    # the cosine's end (warmup keeps its length).
    assert lr_at(150, 200, warmup, lr, floor, [(0, 100), (100, 200)]) == pytest.approx(floor)
    assert weight_decay_at(150, 200, 0.04, 0.4, [(0, 100), (100, 200)]) == pytest.approx(0.4)
    early = [(0, 100), (5, 200)]
    assert lr_at(9, 200, warmup, lr, floor, early) == pytest.approx(lr)
    assert lr_at(105, 200, warmup, lr, floor, early) == pytest.approx(
        lr_at(105, 200, warmup, lr, floor))

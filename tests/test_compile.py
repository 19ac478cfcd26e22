"""`compile=true` traces the whole training forward in one graph: zero graph breaks for the
SALT task (student + predictor + loss) and the pixel task (encoder + pixel decoder + loss),
in training mode with drop path, two mask groups and gradient checkpointing; and in the loop
one graph serves every mask count (``dynamic=True``), with no break either.

Dynamo's tracing is what breaks graphs, not the backend, so the loop test compiles with the
``eager`` backend: inductor's code generation takes minutes on a CPU."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import step_scenarios
import torch
from torch._dynamo.utils import counters

from salt_vla.masking.collator import MaskCollator
from salt_vla.trainer.build import build_model, config_grid, mask_config
from salt_vla.trainer.experiments import resolve
from salt_vla.trainer.teacher_experiments import resolve_teacher
from salt_vla.trainer.teacher_train import build_pixel_model

SALT = ["student_dim=64", "student_depth=2", "student_heads=2", "predictor_width=32",
        "predictor_depth=1", "predictor_heads=2", "drop_path=0.1", "mask_strategy=multiblock"]
PIXEL = ["decoder_width=32", "decoder_depth=1", "decoder_heads=2"]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()


def model_and_batch(task: str, grad_checkpointing: bool):  # noqa: ANN201
    """A tiny model of ``task`` in training mode and a batch of 2 clips for it."""
    sets = [f"grad_checkpointing={grad_checkpointing}"]
    if task == "salt":
        cfg = resolve("tiny", SALT + sets)
        model = build_model(cfg, 8, 64)
        targets = torch.randn(2, config_grid(cfg).num_tokens, cfg.teacher_dim)
    else:
        cfg = resolve_teacher("teacher-tiny", PIXEL + sets)
        model = build_pixel_model(cfg, 8, 64)
        targets = None
    masks = MaskCollator(mask_config(cfg), config_grid(cfg), seed=0).batch_masks([0, 1], 0, 0)
    assert len(masks) == 2  # multiblock: two mask groups, so the group loop is traced too
    torch.manual_seed(0)
    return model.train(), (torch.randn(2, 3, 8, 64, 64), masks, targets)


@pytest.mark.parametrize("task,grad_checkpointing",
                         [("salt", False), ("pixel", False), ("salt", True)])
def test_training_forward_has_no_graph_break(task: str, grad_checkpointing: bool) -> None:
    model, batch = model_and_batch(task, grad_checkpointing)
    explained = torch._dynamo.explain(model)(*batch)
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, f"{task}: graph breaks: {reasons}"
    assert explained.graph_count == 1


def test_compiled_loop_traces_one_graph_for_every_mask_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    counts = set()
    real = MaskCollator.batch_masks

    def batch_masks(self, *args):  # noqa: ANN001, ANN202
        masks = real(self, *args)
        counts.add(tuple(t.shape[1] for _, t in masks))
        return masks

    monkeypatch.setattr(MaskCollator, "batch_masks", batch_masks)
    res = step_scenarios.salt_run(tmp_path, ["max_steps=3", "batch_size=4", "limit_rows=8",
                                             "compile=true", "mask_strategy=multiblock"])
    assert res.step == 3 and all(map(torch.isfinite, torch.tensor(res.losses)))
    assert dict(counters["graph_break"]) == {}
    assert len(counts) > 1, "the batches' target counts did not change"
    assert counters["stats"]["unique_graphs"] == 1  # no recompile when the mask counts change

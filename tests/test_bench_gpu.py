"""The GPU benchmark's CPU path and its parts: the FLOP count (a Linear layer's known FLOPs,
attention counted on the CPU as on CUDA), the peak table and MFU, and the largest-batch search
(bounded by memory alone)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salt_vla.trainer.flops import count_flops, mfu, peak_tflops, train_step_flops

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_gpu", None)


class _LinearTask(nn.Module):
    """A task-shaped model (``forward(x, masks, targets) -> (loss, stats)``): one Linear."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x, masks, targets):  # noqa: ANN001, ANN201
        loss = (self.lin(x) - targets).pow(2).mean()
        return loss, loss.detach().reshape(1)


def test_flops_of_a_linear_layer() -> None:
    b, d_in, d_out = 5, 12, 7
    model = _LinearTask(d_in, d_out)
    x, y = torch.randn(b, d_in), torch.randn(b, d_out)
    assert count_flops(lambda: model.lin(x)) == 2 * b * d_in * d_out
    # forward, then the weight gradient (the input needs none): two matmuls of that size
    assert train_step_flops(model, x, None, y) == 2 * (2 * b * d_in * d_out)
    assert model.lin.weight.grad is None  # the count leaves no gradients behind


def test_attention_flops_on_the_cpu_match_the_formula() -> None:
    b, h, n, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    forward = 2 * (2 * b * h * n * n * d)  # q @ k^T and softmax @ v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    total = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert total == forward + 5 * (2 * b * h * n * n * d)  # backward: recompute + 4 matmuls


def test_peak_table_and_mfu() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA L40S", "bf16") == 362.0  # not the L4's 121
    assert peak_tflops("NVIDIA GeForce GTX 1080", "bf16") is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert mfu(494.5e12, 1.0, 989.0) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None


@pytest.mark.parametrize("limit", [0, 1, 37, 128, 300, 5000, 10**6])
def test_largest_batch_is_bounded_by_memory_alone(bench, limit: int) -> None:  # noqa: ANN001
    tried = []

    def fits(b: int) -> bool:
        tried.append(b)
        return b <= limit

    best, tries = bench.largest_batch(fits, start=128, resolution=8)
    assert tries == [(b, b <= limit) for b in tried]
    assert best <= limit and (limit == 0 or best > 0)
    if limit >= 1:  # found within the resolution, at any size (no cap)
        failed = min(b for b, ok in tries if not ok)
        assert failed - best <= 8 or best == limit


def test_cpu_path_prints_the_table(bench, tmp_path: Path,  # noqa: ANN001
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench.main([
        "--device", "cpu", "--exp", "tiny", "--batches", "4", "--compile", "off",
        "--steps", "2", "--warmup", "1", "--log-every", "1", "--rows", "8", "--workers", "0",
        "--peak-tflops", "0.5",
        "--set", "student_dim=64", "--set", "student_depth=1", "--set", "student_heads=2",
        "--set", "predictor_width=32", "--set", "predictor_depth=1",
        "--set", "predictor_heads=2"])
    out = capsys.readouterr().out
    assert "| batch | compile | cudnn.benchmark | clips/s | ms/step | data wait | peak GiB" in out
    assert "# SDPA predictor (2 heads x 64 tokens x head dim 16" in out
    assert len(rows) == 1
    row = rows[0]
    assert (row.batch, row.compile, row.cudnn_benchmark, row.note) == (4, False, False, "")
    assert row.clips_s > 0 and row.ms_step > 0 and 0 <= row.data_wait <= 1
    assert math.isnan(row.peak_gib)  # no GPU memory on a CPU
    assert row.flops_step > 0 and row.mfu == pytest.approx(
        row.flops_step / (row.ms_step / 1000) / 0.5e12)
    assert f"| 4 | off | off | {row.clips_s:.1f} | {row.ms_step:.1f} |" in out
    assert "largest batch" not in out  # no OOM signal on a CPU: the search is CUDA's


@pytest.mark.slow
def test_gpu_check_script_cpu_smoke(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh end to end on the CPU: synthetic videos -> store -> the
    bench_gpu.py table trained from the store (its --cache path)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path), "DEVICE": "cpu",
           "EXP": "tiny", "TEACHER": "random:vit_tiny:0", "VIEW": "tiny-8x64", "SIZE": "64x64",
           "FRAMES": "16", "VIDEOS": "8", "SPLITS": "0.9/0/0", "BATCHES": "4",
           "COMPILE": "off", "STEPS": "2", "WARMUP": "1", "LOG_EVERY": "1", "WORKERS": "1",
           "SYNTH_WORKERS": "1",
           "EXTRA": "--set student_dim=64 --set student_depth=1 --set student_heads=2"}
    script = BENCH.parent / "gpu_check.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"data: {tmp_path / 'cache'}" in done.stdout
    assert "\n| 4 | off | off | " in done.stdout


def _args(bench, tmp_path: Path):  # noqa: ANN001, ANN202
    return bench.parse_args([
        "--device", "cpu", "--exp", "tiny", "--batches", "4", "--steps", "1", "--warmup", "0",
        "--log-every", "1", "--rows", "8", "--workers", "0", "--set", "student_dim=64",
        "--set", "student_depth=1", "--set", "student_heads=2", "--set", "predictor_depth=1"])


def test_cuda_only_helpers_run_their_course_on_the_cpu(bench, tmp_path: Path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync count, the fit test and the OOM handling, driven on the CPU (the sync debug
    mode is stubbed: it needs a CUDA driver), so a GPU session does not find a typo."""
    import warnings

    args = _args(bench, tmp_path)
    data = bench.memory_data(bench.run_cfg(args, 4, False, 1, 1), args.rows)
    from salt_vla.trainer.sources import memory_sources

    sources = memory_sources(bench.run_cfg(args, 4, False, 1, 1), *data)
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    real_train = bench.train

    def train_warning_per_step(cfg, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        for _ in range(cfg.max_steps):  # as a step that synchronised would, once per step
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        return real_train(cfg, *a, **kw)

    monkeypatch.setattr(bench, "train", train_warning_per_step)
    line = bench.syncs_per_step(args, sources, tmp_path, 4, torch.device("cpu"))
    assert line.startswith("1.00 per step (1 in 1 steps, 2 in 2;"), line
    assert modes == ["warn", "default", "warn", "default"]
    monkeypatch.setattr(bench, "train", real_train)

    peaks: dict[int, float] = {}
    assert bench.fits_in_memory(args, sources, tmp_path, torch.device("cpu"), peaks)(4)
    assert list(peaks) == [4] and not list(tmp_path.glob("fit*"))  # run dir removed

    def oom(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bench, "train", oom)
    assert not bench.fits_in_memory(args, sources, tmp_path, torch.device("cpu"), peaks)(8)
    row = bench.timed_row(args, bench.Row(8, False, False), sources, tmp_path,
                          torch.device("cpu"))
    assert row.note == "out of memory" and math.isnan(row.clips_s)
    assert "| 8 | off | off | n/a | n/a | n/a | n/a | n/a | n/a | n/a | out of memory |" in \
        bench.table([row])

"""FLOPs of a training step, the peak FLOP/s of known GPUs, and model FLOPs utilisation.

MFU = FLOPs the step's model needs / (seconds per step x the device's peak FLOP/s). The FLOPs
are counted, not estimated: torch's ``FlopCounterMode`` sees every matmul, convolution and
attention kernel the step dispatches, forward and backward, at the shapes of the actual
batch (mask counts included). It does not count elementwise work (norms, activations,
AdamW), the usual convention for MFU. With gradient checkpointing on, the recomputed forward
is counted too (hardware FLOPs rather than model FLOPs).

Peaks are the vendors' dense (no sparsity) tensor-core figures; a GPU that is not in the
table gets no MFU unless the caller passes its peak (``--peak-tflops`` in the benchmark).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# Dense TFLOP/s per precision, matched in order against torch.cuda.get_device_name() (so the
# more specific spellings come first: "H100 PCIe" before "H100", "L40S" before "L4").
PEAK_TFLOPS: dict[str, tuple[tuple[str, float], ...]] = {
    "bf16": (
        ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # H100 SXM: 989.4
        ("H200 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0),
        ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
        ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ),
    "tf32": (
        ("H100 PCIe", 378.0), ("H100 NVL", 418.0), ("H100", 495.0),
        ("H200 NVL", 418.0), ("GH200", 495.0), ("H200", 495.0),
        ("B200", 1100.0), ("A100", 156.0), ("A800", 156.0),
    ),
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak TFLOP/s of ``device_name`` at ``precision`` (``"bf16"``, ``"tf32"``);
    None when the table does not know the GPU (or the precision, e.g. CPU fp32)."""
    for pattern, value in PEAK_TFLOPS.get(precision, ()):
        if pattern.lower() in device_name.lower():
            return value
    return None


def _sdpa_forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return int(flop_counter.sdpa_flop_count(q, k, v))


def _sdpa_backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None,
                   **kw: Any) -> int:
    return int(flop_counter.sdpa_backward_flop_count(grad, q, k, v))


def _cpu_attention_formulas() -> dict[Any, Any]:
    """torch counts the CUDA attention kernels (flash, memory-efficient, cuDNN) but not the
    CPU's flash kernel; its arguments lead with the same tensors, so the same formulas apply
    and a CPU count matches the CUDA one."""
    aten = torch.ops.aten
    pairs = (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_forward),
             ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward))
    return {getattr(aten, name): fn for name, fn in pairs if hasattr(aten, name)}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``fn()`` dispatches (matmuls, convolutions, attention; forward and backward)."""
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(
    model: nn.Module, x: torch.Tensor, masks: Any, targets: torch.Tensor | None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> int:
    """FLOPs of one forward + backward of a task model (``forward(x, masks, targets)`` ->
    ``(loss, stats)``, see ``task.py``) on this batch; the gradients it leaves are cleared."""

    def step() -> None:
        with autocast or contextlib.nullcontext():
            loss, _ = model(x, masks, targets)
        loss.backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def mfu(flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a peak); ``peak`` in TFLOP/s."""
    if peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (peak * 1e12)

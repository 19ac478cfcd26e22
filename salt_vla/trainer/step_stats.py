"""The training step's statistics and its non-finite gate, kept on the device.

Reading a CUDA tensor on the host (``.item()``, ``.tolist()``, ``float()``, ``bool()``) waits
for every kernel queued before it. Done once per step, that empties the GPU's queue, and the
next step's first kernels then reach an idle GPU. So each step writes what it learnt (loss,
normalised loss, cosine, pre-clip gradient norm, finite or not) into a small device buffer, and
the host reads the buffer every ``log_every`` steps (and before a checkpoint and at the end):
:meth:`DeviceStats.drain`, one read for all the buffered steps.

The non-finite rule is the loop's of old, decided on the device so the same steps are skipped:

- a step is *finite* when its loss and its gradient norm are finite on every rank;
- non-finite steps are counted; the update applies when the step is finite and the count is
  still within ``skip_nonfinite``. Once the count exceeds it, no later update applies either,
  so the weights and the optimiser state stay those of the moment before the offending step
  until the host reads the buffer and stops the run (:meth:`DeviceStats.drain` returns the
  steps in order; the loop replays the rule to find that step, its loss and its rows).

The price of not reading every step: a run that must stop on a non-finite loss stops up to
``log_every - 1`` steps (or a checkpoint) later than the bad step, having computed those steps
without applying them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from salt_vla import distributed as dist_utils

LOSS, NORM_LOSS, COS, GRAD_NORM, FINITE = range(5)  # columns of the device buffer
MAX_BUFFERED = 1000  # steps held on the device before a read, whatever log_every is


@dataclass(frozen=True)
class StepRecord:
    """One step as the host reads it back: ``step`` is the 1-based count of steps done,
    ``values`` = ``[loss, normalised loss, cosine, grad norm]`` (this process's, fp32 values
    as Python floats), ``finite`` the rank-agreed flag, ``rows`` the last micro-batch's store
    rows (host data, kept for error messages)."""

    step: int
    values: tuple[float, float, float, float]
    finite: bool
    rows: Any


class DeviceStats:
    """Per-step statistics on ``device`` plus the skip gate (see the module docstring).

    ``capacity``: steps buffered before :attr:`full` asks for a drain; ``skip_budget``: the
    config's ``skip_nonfinite``.
    """

    def __init__(
        self, capacity: int, skip_budget: int, device: torch.device,
        info: dist_utils.DistInfo,
    ) -> None:
        self.capacity = max(1, min(capacity, MAX_BUFFERED))
        self.skip_budget = skip_budget
        self.info = info
        self._buf = torch.zeros(self.capacity, 5, device=device)
        self._bad = torch.zeros((), dtype=torch.int64, device=device)  # non-finite steps
        self._pending: list[tuple[int, Any]] = []  # (step, rows) of the buffered rows

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.capacity

    def record(
        self, step: int, stats: torch.Tensor, grad_norm: torch.Tensor, rows: Any = None
    ) -> torch.Tensor:
        """Buffer step ``step``'s ``stats`` (``[3]``: loss, normalised loss, cosine) and
        pre-clip ``grad_norm`` (0-d); return the 0-d bool "apply this update" on the device.

        No host read: under torchrun the ranks agree on "finite" with an all-reduce of the
        0/1 flags (their mean is exactly 1 only when every rank's flag is 1).
        """
        if self.full:
            raise RuntimeError("DeviceStats.record: buffer full; drain() first")
        finite = torch.isfinite(stats[LOSS]) & torch.isfinite(grad_norm)
        if self.info.enabled:
            finite = dist_utils.all_reduce_mean(finite.float(), self.info) == 1.0
        self._bad += ~finite
        apply = finite & (self._bad <= self.skip_budget)
        self._buf[len(self._pending)] = torch.cat(
            [stats.float(), grad_norm.float().reshape(1), finite.float().reshape(1)])
        self._pending.append((step, rows))
        return apply

    def drain(self) -> list[StepRecord]:
        """The buffered steps, oldest first (one host read), and an empty buffer."""
        if not self._pending:
            return []
        values = self._buf[: len(self._pending)].tolist()
        out = [StepRecord(step, (v[LOSS], v[NORM_LOSS], v[COS], v[GRAD_NORM]), v[FINITE] == 1.0,
                          rows)
               for (step, rows), v in zip(self._pending, values, strict=True)]
        self._pending = []
        return out

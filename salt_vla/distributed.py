"""Devices and torchrun ranks: the one place that reads ``RANK``/``WORLD_SIZE`` and picks a device.

Training joins a DDP process group (NCCL on GPU, gloo on CPU); a cache build only needs the
environment's ranks (it makes its own gloo group, ``cache/dist.py``); the CLI only asks
whether this process is the one that prints. Outside torchrun (no ``WORLD_SIZE`` in the
environment) everything here is a no-op and the process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from salt_vla.errors import SaltError


class DeviceError(SaltError, ValueError):
    """A device that was asked for but is not there, or is not spelled as one."""


@dataclass(frozen=True)
class RankEnv:
    """This process's place in a torchrun job, read from the environment (no process group).

    ``local_world`` is the number of ranks on this node (``LOCAL_WORLD_SIZE``): CPU cores are
    shared among them.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_env() -> RankEnv:
    """The torchrun variables of this process (rank 0 of 1 without torchrun)."""
    env = os.environ
    return RankEnv(rank=int(env.get("RANK", "0")), world=int(env.get("WORLD_SIZE", "1")),
                   local_rank=int(env.get("LOCAL_RANK", "0")),
                   local_world=int(env.get("LOCAL_WORLD_SIZE", "1")))


def is_main_process() -> bool:
    """True on rank 0, the rank that prints and writes run files."""
    return rank_env().is_main


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA device when CUDA is available, else the CPU; ``cpu``;
    ``cuda`` (this rank's GPU); ``cuda:N`` (that GPU)."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if choice not in ("auto", "cuda") and not (
            choice.startswith("cuda:") and choice[5:].isdigit()):
        raise DeviceError(f"device {choice!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {choice!r} was asked for but torch sees no CUDA device; "
                          "use --device cpu (or auto)")
    return torch.device(choice) if choice.startswith("cuda:") else torch.device("cuda", local_rank)


def setup_distributed(device_choice: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device."""
    env = rank_env()
    world, rank, local_rank = env.world, env.rank, env.local_rank
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over ranks (identity in a single process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def all_min(flags: list[int], info: DistInfo) -> list[int]:
    """Element-wise minimum of small int flags over ranks (one collective for several)."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor(flags, dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [int(v) for v in t.tolist()]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

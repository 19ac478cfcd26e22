"""torchrun coordination of a build: who owns which shard, barriers, sharing errors and counts.

A build only needs barriers and a few small messages, so it always uses a gloo process
group (it works with and without GPUs); the teacher runs on each rank's own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from salt_vla.distributed import rank_env


@dataclass
class BuildRanks:
    """This process's place in the build: ``rank`` of ``world`` (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, shard: int) -> bool:
        """Shard ``i`` belongs to rank ``i % world``: disjoint, and balanced to within one."""
        return shard % self.world == self.rank

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised_here = False


def build_ranks(timeout_hours: float = 48.0) -> BuildRanks:
    """Join the torchrun job when launched by one (``WORLD_SIZE`` > 1), else a world of one.

    The timeout is long because ranks wait for each other at the end of the build, and a
    168K-video build takes hours; a crashed rank makes torchrun stop the others anyway.
    """
    env = rank_env()
    if env.world <= 1:
        return BuildRanks()
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
        here = True
    return BuildRanks(rank=dist.get_rank(), world=dist.get_world_size(),
                      local_rank=env.local_rank, initialised_here=here)

"""Processes and devices: one process per device, started by `torchrun` (or alone).

DDP replicates the model and all-reduces gradients once per step (micro-batches before the last
skip the sync). FSDP (torch's `fully_shard`, FSDP2) shards parameters, gradients and optimizer
state: every decoder / encoder layer (the model's `_no_split_modules`) is its own unit, the rest
is the root. Both need every rank to run the same modules the same number of times per step,
which the trainer ensures (equal micro-batch counts, the vision path always runs).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from mmdata.models.device import pick_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    strategy: str = "none"  # none | ddp | fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def sum(self, x: float) -> float:
        """Sum of a number over ranks (float64, exact for counts)."""
        return self.sums([x])[0]

    def sums(self, xs: list[float]) -> list[float]:
        """Sums over ranks of several numbers, in one all-reduce."""
        if self.world == 1:
            return [float(x) for x in xs]
        t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t)
        return t.tolist()

    def max(self, x: int) -> int:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.int64, device=self.comm_device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    @property
    def comm_device(self) -> str:
        return self.device if tdist.get_backend() == "nccl" else "cpu"


def setup(device: str = "auto", strategy: str = "auto", backend: str | None = None) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev == "cuda":
        dev = f"cuda:{local}"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend or ("nccl" if dev.startswith("cuda") else "gloo"))
    chosen = "none" if world == 1 else ("ddp" if strategy == "auto" else strategy)
    return Dist(rank, world, local, dev, chosen)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, *, bf16: bool) -> nn.Module:
    if d.strategy == "ddp":
        import inspect
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(d.device).index] if d.device.startswith("cuda") else None
        # buffers never change in training; syncing them each forward would be a collective per micro-batch
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        kw = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        # a depthwise conv's weight [C, 1, 3, 3] gets its gradient with another stride on the size-1 axis: the
        # same memory layout, reported by the reducer as a possible slowdown on every step
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(model, device_ids=ids, **kw)
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for part in (model.encoder.tower, model.decoder):
            names = set(getattr(part, "_no_split_modules", None) or [])
            for m in list(part.modules()):
                if type(m).__name__ in names:
                    fully_shard(m, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    return model


def grad_sync(model: nn.Module, d: Dist, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced only on the step's last one."""
    if d.strategy == "ddp" and not sync:
        return model.no_sync()
    if d.strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model

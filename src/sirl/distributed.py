"""Data parallelism: each process samples its own prompts and averages gradients with the others.

Launched by ``torchrun --nproc_per_node N -m sirl.cli train ...``, every process reads its rank from the
environment, draws its own prompts (seeded by rank), computes its loss on its own rollouts, and the
gradients are summed across processes before each optimizer step, so all copies of the policy stay
identical. Loss denominators are counts over all processes (sirl.update), so summing the gradients gives
exactly the gradient of one process on the global batch. Run as a single process (the default), every
method here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Join the process group torchrun describes in the environment; a single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over the processes (each process's loss already divides by the
        global count, so the sum is the global batch's gradient)."""
        if self.world_size == 1:
            return
        for parameter in model.parameters():
            if parameter.grad is None:  # a process whose rows never reached this parameter still takes part
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of numbers over all processes."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather_json(self, value: object) -> list:
        """Every process's ``value`` (plain JSON-like data), in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

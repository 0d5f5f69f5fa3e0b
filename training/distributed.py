"""Training under torchrun: the process group from the environment, and the few collectives the loop needs.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) starts one
process per device. Each process trains its share of the batch's streams; DistributedDataParallel averages
the gradients; the helpers here reduce the losses and validation sums and gather what a checkpoint needs.
Without those variables (or with WORLD_SIZE=1) training is one plain process and nothing here talks to
anyone.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.config import RunConfig

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Distributed:
    """This process' place in the job (rank 0 of 1 when not distributed) and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, samples, checkpoints, plots and exports."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int]:
        """(index, parts) for the data helpers' `part` arguments."""
        return self.rank, self.world_size

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum over all processes (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        """The largest `value` over all processes (float64)."""
        return self._reduce((value,), dist.ReduceOp.MAX)[0]

    def _reduce(self, values: tuple[float, ...], op: dist.ReduceOp.RedOpType) -> list[float]:
        """Element-wise all-reduce of `values` with `op` (float64); the values themselves in one process."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return [float(v) for v in tensor.cpu()]

    def gather_rows(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Concatenate every process' tensors along dim 1 in rank order (the batch dim of an RNN state)."""
        if not self.enabled:
            return tensors
        out = []
        for tensor in tensors:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            out.append(torch.cat(parts, dim=1))
        return tuple(out)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process' `obj` in rank order (pickled between the job's own processes)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def training_device(run: RunConfig, local_rank: int = 0) -> torch.device:
    """The CPU, or the CUDA device of this process' LOCAL_RANK (made the current one)."""
    if run.device != "cuda":
        return CPU
    if not torch.cuda.is_available():
        raise ValueError("run.device=cuda but this PyTorch build or machine has no CUDA device")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def setup(run: RunConfig) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} from the environment are inconsistent")
    device = training_device(run, local_rank)
    if world_size == 1:
        return Distributed(device=device)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        timeout=dt.timedelta(seconds=run.dist_timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    log.info("rank %d of %d (local rank %d), %s on %s", rank, world_size, local_rank, backend, device)
    return Distributed(rank, world_size, local_rank, device)


def teardown(context: Distributed, synchronize: bool) -> None:
    """Leave the process group. After a clean run every process waits for the others first
    (`synchronize`), and whatever still holds the group (DDP's reducer) must be released before: a gloo
    group left to the interpreter's exit can abort the process."""
    if not (context.enabled and dist.is_initialized()):
        return
    gc.collect()
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()

"""Training under ``torchrun``: the process group, each rank's share of the forward, and of the step.

Every rank computes the activations of its own share of the contexts (chunk ``g * world + rank`` of
each group ``g``), and the chunks are gathered so that every rank sees the one-process chunk
sequence; the seeded shuffle then gives every rank the same global batches. From there:

- **data-parallel** (``--distribute data``): each rank steps on its slice of every global batch
  (``batch_size / world`` rows); gradients are averaged, firing counts summed and the logged scalars
  averaged across ranks, so the weights stay identical everywhere and equal a one-process run's with
  the same global batch (to float tolerance: the loss is a mean over tokens). Rank 0 writes the run.
- **site-parallel** (``--distribute sites``): the runs (one per site, or a sweep's grid) are dealt
  out to the ranks round-robin; each rank trains and writes its own runs on the full batches.

gloo on CPUs, NCCL on GPUs (each rank on ``cuda:LOCAL_RANK``). Resume works under both: every rank
replays the same batch sequence up to the checkpoint's step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.errors import SaekitError

DISTRIBUTE_MODES = ("data", "sites")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a torchrun group, and how the group splits the work."""

    rank: int
    world_size: int
    mode: str = "data"
    backend: str = "gloo"

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes what all ranks share (a data-parallel run's directory, the cache lock)."""
        return self.rank == 0

    @property
    def data_parallel(self) -> bool:
        return self.mode == "data"

    @property
    def comm_device(self) -> torch.device:
        """Where collectives run: NCCL needs the rank's GPU, gloo the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def owns(self, run_index: int) -> bool:
        """Whether this rank trains run ``run_index`` (site-parallel deals runs out round-robin)."""
        return self.data_parallel or run_index % self.world_size == self.rank

    def local_rows(self, batch_rows: int) -> slice:
        """This rank's slice of a global batch (data-parallel)."""
        share = batch_rows // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def average(self, tensors: list[Tensor]) -> None:
        """In place: the mean over ranks of each tensor (one flattened all-reduce)."""
        if tensors:
            self._reduce(tensors, average=True)

    def sum(self, tensors: list[Tensor]) -> None:
        """In place: the sum over ranks of each tensor."""
        if tensors:
            self._reduce(tensors, average=False)

    def _reduce(self, tensors: list[Tensor], average: bool) -> None:
        flat = torch.cat([t.reshape(-1).to(self.comm_device, torch.float64 if t.dtype == torch.float64
                                           else torch.float32) for t in tensors])
        dist.all_reduce(flat)
        if average:
            flat /= self.world_size
        offset = 0
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(flat[offset:offset + count].view(tensor.shape).to(tensor.dtype))
            offset += count

    def gather_chunks(self, local: Iterator[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
        """From each rank's own chunks (``rank, rank + world, ...``), the whole sequence in order, on every rank."""
        for chunk in local:
            yield from self._all_gather_chunk(chunk)

    def gather_rows(self, local: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every rank's rows of each tensor, concatenated in rank order, on every rank."""
        parts = self._all_gather_chunk(local)
        return {name: torch.cat([part[name] for part in parts]) for name in local}

    def _all_gather_chunk(self, chunk: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Every rank's chunk of this group, rank order (rows differ: BOS and outliers were dropped)."""
        rows = torch.tensor([next(iter(chunk.values())).shape[0]], device=self.comm_device)
        all_rows = [torch.zeros_like(rows) for _ in range(self.world_size)]
        dist.all_gather(all_rows, rows)
        counts = [int(r) for r in all_rows]
        most = max(counts)
        gathered: list[dict[str, Tensor]] = [{} for _ in range(self.world_size)]
        for name in sorted(chunk):  # every rank sends the sites in one order
            value = chunk[name].to(self.comm_device)
            padded = value.new_zeros((most, *value.shape[1:]))
            padded[:value.shape[0]] = value
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded.contiguous())
            for rank, (part, count) in enumerate(zip(parts, counts)):
                gathered[rank][name] = part[:count]
        return gathered

    def barrier(self) -> None:
        dist.barrier()

    def minimum(self, value: int) -> int:
        """The smallest ``value`` over the ranks."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_group(device: str, mode: str = "data") -> ProcessGroup | None:
    """Join the torchrun group described by the environment (None when not launched by torchrun).

    NCCL for CUDA devices (this rank then uses ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if mode not in DISTRIBUTE_MODES:
        raise SaekitError(f"--distribute must be one of {', '.join(DISTRIBUTE_MODES)}, got {mode!r}")
    if not launched_by_torchrun():
        return None
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SaekitError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start saekit with torchrun "
                          "(torchrun --nproc_per_node N -m saekit train ...)")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), mode, backend)


def leave_group(group: ProcessGroup | None) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()

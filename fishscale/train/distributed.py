"""Ranks and the process group: read the launcher's environment, start deepspeed.comm.

    dist = init_distributed()          # RANK / LOCAL_RANK / WORLD_SIZE from the launcher, or a world of one
    dist.rank, dist.world_size, dist.is_main, dist.device
    if any_rank(loss_is_bad): ...      # the same answer on every rank
    parts = gather_objects(my_part)    # rank 0 gets every rank's object, in rank order

The deepspeed launcher (and torchrun, and SLURM through launch/slurm.sbatch) export RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them this process becomes a
world of one on a free local port, so `fishscale train --nproc 1` still runs a real DeepSpeed
engine. The backend is gloo on the CPU (DeepSpeed's CPU accelerator would pick oneCCL when
installed; gloo is what every PyTorch build has) and the accelerator's own (NCCL) on GPUs.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type != "cpu"


def free_port() -> int:
    """A TCP port nobody listens on right now (for a world of one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_single_process_env() -> None:
    """Make this process rank 0 of a world of one, unless a launcher already set the env."""
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))


def share_cpu_cores() -> None:
    """Split this machine's cores between the local ranks (unless OMP_NUM_THREADS says otherwise):
    two ranks each using every core would slow both down."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
    torch.set_num_threads(max(1, cores // max(1, local_ranks)))


def pick_accelerator() -> None:
    """Tell DeepSpeed it is on the CPU when no GPU is visible (instead of a warning per rank);
    set before DeepSpeed is imported, and inherited by the ranks a launcher starts."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def init_distributed() -> DistInfo:
    """Start (once) the process group through deepspeed.comm; return this process's place."""
    pick_accelerator()
    import deepspeed
    import deepspeed.comm as dist
    from deepspeed.accelerator import get_accelerator

    set_single_process_env()
    accel = get_accelerator()
    on_cpu = accel.device_name() == "cpu"
    backend = "gloo" if on_cpu else accel.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_cpu:
        share_cpu_cores()
    else:
        accel.set_device(local_rank)   # before the first collective, so NCCL binds the right GPU
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    device = torch.device("cpu") if on_cpu else torch.device(accel.device_name(local_rank))
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                    backend=backend, device=device)


def _device() -> torch.device:
    from deepspeed.accelerator import get_accelerator
    accel = get_accelerator()
    return torch.device("cpu") if accel.device_name() == "cpu" else torch.device(accel.current_device_name())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a short list of numbers (float64 on the comm device)."""
    import deepspeed.comm as dist
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one."""
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def max_over_ranks(value: int) -> int:
    import deepspeed.comm as dist
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier() -> None:
    import deepspeed.comm as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any] | None:
    """Rank 0: every rank's `obj` in rank order; other ranks: None."""
    import torch.distributed as tdist
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out if tdist.get_rank() == 0 else None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as tdist
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group cleanly (gloo threads otherwise abort at interpreter exit)."""
    import torch.distributed as tdist
    if tdist.is_initialized():
        try:
            tdist.barrier()
        finally:
            tdist.destroy_process_group()

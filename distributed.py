"""torchrun: where this process stands in a data-parallel job, and the few collectives used.

Without torchrun every helper here is a no-op for a job of one process (rank 0 of 1).
Under ``torchrun --nproc_per_node=N`` the processes join one group (nccl on CUDA, gloo
on CPU); rank 0 alone writes files and prints.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, NamedTuple, NoReturn, TypeVar

import torch


class Distributed(NamedTuple):
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        """The one process that writes checkpoints, logs, metrics and the progress bar."""
        return self.rank == 0


SINGLE_PROCESS = Distributed(0, 1)


def local_rank() -> int:
    """This process's index on its machine (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 (or no torchrun), read from the environment before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """The number of processes in this torchrun job (1 without torchrun), from the environment."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> Distributed:
    """Join the torchrun job described by the environment, if any: nccl on CUDA, gloo on CPU."""
    world = world_size()
    if world == 1:
        return SINGLE_PROCESS
    dist = Distributed(int(os.environ["RANK"]), world)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist


def shut_down(after_error: bool = False) -> None:
    """Leave the process group, if one was joined. After an error that every process met
    (they share rank 0's), gloo processes first wait up to 10 s for each other, so that
    none tears down its connections while another still uses them (that aborted a
    process now and then)."""
    if not joined():
        return
    if after_error and torch.distributed.get_backend() == "gloo":
        try:
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=10))
        except RuntimeError:  # a process that did not arrive: leave anyway
            pass
    torch.distributed.destroy_process_group()


def joined() -> bool:
    """Whether this process is in a process group now."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def await_the_end(seconds: float = 60.0) -> None:
    """Let rank 0 report an error that every process met before any joined the group: a
    torchrun worker other than rank 0 waits here, and torchrun ends it (SIGTERM) once rank 0
    has printed the error and exited. Leaving at once would have torchrun end rank 0 before
    it could print. Without torchrun's agent, the wait ends after SECONDS."""
    time.sleep(seconds)


def exit_process(code: int) -> NoReturn:
    """End this process with exit status CODE. A torchrun worker flushes its streams and
    leaves with ``os._exit``: it skips the interpreter's finalization, where torch's gloo
    threads abort a finished worker now and then ("terminate called without an active
    exception"). Nothing is lost by skipping it: the run closes every file it writes (and
    fsyncs its checkpoints), closes its TensorBoard writer and leaves the process group first."""
    if world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def all_sum(t: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """T summed over all processes (a new tensor; T itself is left alone)."""
    t = t.clone()
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t


T = TypeVar("T")


def all_gather(obj: T, dist: Distributed) -> list[T]:
    """OBJ of every process, in rank order."""
    if dist.world == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.world  # all_gather_object puts every OBJ in place of the Nones
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T, dist: Distributed) -> T:
    """Rank 0's OBJ, on every process (each passes one of the same type)."""
    if dist.world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, dist: Distributed) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics drift apart per process)."""
    if dist.world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def barrier(dist: Distributed) -> None:
    """Wait until every process gets here (so none leaves the group while another still works)."""
    if dist.world > 1:
        torch.distributed.barrier()


def augment_seed(seed: int, rank: int) -> int:
    """Each process's own augmentation stream; rank 0's is the single-process one."""
    return seed + 2 + 1_000_003 * rank

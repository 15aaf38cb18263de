"""Scaling out with ``torch.distributed``: what ``fit`` and ``evaluate`` do when launched by ``torchrun``.

Every rank draws the same meta-batch from the same seeded task stream and adapts its own contiguous share
of the tasks; the meta-gradients (and the loss, and a stop flag) are summed in one ``all_reduce`` and divided
by the world size, and every rank takes the same optimiser step. The ranks together therefore process
exactly the tasks of a single-process run, and end with its parameters up to float rounding.

Launch with ``torchrun --nproc_per_node=N script.py`` (or ``--nnodes=M`` with a rendezvous endpoint): the
script itself does not change. NCCL serves GPUs (each rank takes ``cuda:LOCAL_RANK``), gloo the CPU.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .tasks import TaskBatch

# How long a rank waits for the others in a collective before it gives up with an error.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("MLKIT_DISTRIBUTED_TIMEOUT", 600)))


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class World:
    """This process's place among the ranks of a distributed run."""

    rank: int
    size: int
    local_rank: int

    @property
    def leader(self) -> bool:
        """Rank 0: the one that shows progress and writes checkpoints."""
        return self.rank == 0

    def shard(self, batch: TaskBatch) -> TaskBatch:
        """This rank's contiguous share of the tasks of ``batch`` (the same share size on every rank)."""
        share = batch.tasks // self.size
        return batch[self.rank * share:(self.rank + 1) * share]

    def reduce(self, gradients: list[Tensor], *numbers: float, device: torch.device) -> list[float]:
        """Average ``gradients`` in place over the ranks, in one all_reduce that also averages ``numbers``.

        Returns the averaged numbers."""
        dtype = gradients[0].dtype if gradients else torch.float64
        flat = torch.cat([g.reshape(-1) for g in gradients] + [torch.tensor(numbers, dtype=dtype, device=device)])
        self._collective(dist.all_reduce, flat, what="averaging the meta-gradients")
        flat /= self.size
        offset = 0
        for g in gradients:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[offset:].tolist()

    def broadcast(self, obj):
        """``obj`` as rank 0 has it, on every rank."""
        box = [obj]
        self._collective(dist.broadcast_object_list, box, what="receiving rank 0's state", src=0)
        return box[0]

    def gather(self, values: list[float]) -> list[float]:
        """Every rank's ``values``, concatenated in rank order, on every rank."""
        boxes: list = [None] * self.size
        self._collective(dist.all_gather_object, boxes, values, what="gathering the evaluation")
        return [v for box in boxes for v in box]

    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        for tensor in [*module.parameters(), *module.buffers()]:
            self._collective(dist.broadcast, tensor.data, what="copying rank 0's parameters", src=0)

    def _collective(self, function, *args, what: str = "", **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as error:
            raise RuntimeError(f"rank {self.rank} of {self.size} gave up {what or 'waiting'} after at most "
                               f"{TIMEOUT.total_seconds():.0f} s: another rank failed or stalled (see its own error "
                               f"above; set MLKIT_DISTRIBUTED_TIMEOUT to wait longer). Cause: {error}") from error



def setup(distributed: bool | None, device: torch.device | str) -> World | None:
    """Join (or create) the process group when the run is distributed; ``None`` for one process.

    A group created here lives until the process exits; a group the caller created is used as it is.

    Args:
        distributed: ``None`` detects a ``torchrun`` launch from the environment; ``True`` requires one;
            ``False`` runs alone even under a launcher.
        device: the device asked of ``fit`` (decides NCCL or gloo).
    """
    if distributed is None:
        distributed = launched() or (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
    if not distributed:
        return None
    if not dist.is_available():
        raise ValueError("distributed=True but this PyTorch build has no torch.distributed")
    if dist.is_initialized():
        return current()
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"distributed=True but {', '.join(missing)} are not set: launch the script with torchrun, "
                         "e.g. torchrun --nproc_per_node=2 script.py")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    # Kept for the next fit or evaluate of this process and destroyed when it exits: a torchrun worker cannot
    # create its default group a second time (the rendezvous store keeps the first one's keys).
    atexit.register(_destroy)
    return current()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> World | None:
    """The world of an already-initialised process group of several ranks, else ``None``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return None

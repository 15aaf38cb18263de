"""TaskBatch: a batch of few-shot tasks as tensors whose leading dimension is the task."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """Support and query sets of ``tasks`` tasks, stacked.

    Attributes:
        support_x: ``[tasks, n_support, *in]``; support_y: ``[tasks, n_support, *out]``.
        query_x: ``[tasks, n_query, *in]``; query_y: ``[tasks, n_query, *out]``.
        info: optional per-task facts (e.g. a sinusoid's ``amplitude`` and ``phase``, each ``[tasks]``).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ("support_x", "support_y", "query_x", "query_y")
        for name in names:
            if not isinstance(getattr(self, name), Tensor):
                raise ValueError(f"TaskBatch.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        for name in names:
            if getattr(self, name).dim() < 2:
                raise ValueError(f"TaskBatch.{name} must be at least [tasks, examples], got shape {tuple(getattr(self, name).shape)}")
        sx, sy, qx, qy = (getattr(self, n) for n in names)
        if len({sx.shape[0], sy.shape[0], qx.shape[0], qy.shape[0]}) != 1:
            raise ValueError("TaskBatch tensors disagree on the number of tasks (dim 0): "
                             f"support_x {tuple(sx.shape)}, support_y {tuple(sy.shape)}, query_x {tuple(qx.shape)}, query_y {tuple(qy.shape)}")
        if sx.shape[1] != sy.shape[1]:
            raise ValueError(f"support_x has {sx.shape[1]} examples per task but support_y has {sy.shape[1]}")
        if qx.shape[1] != qy.shape[1]:
            raise ValueError(f"query_x has {qx.shape[1]} examples per task but query_y has {qy.shape[1]}")
        if sx.shape[2:] != qx.shape[2:]:
            raise ValueError(f"support_x and query_x disagree on the input shape: {tuple(sx.shape[2:])} vs {tuple(qx.shape[2:])}")
        if sy.shape[2:] != qy.shape[2:]:
            raise ValueError(f"support_y and query_y disagree on the target shape: {tuple(sy.shape[2:])} vs {tuple(qy.shape[2:])}")

    @property
    def tasks(self) -> int:
        """Number of tasks in the batch."""
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "TaskBatch":
        """The same batch with every tensor on ``device``."""
        info = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.info.items()}
        return TaskBatch(self.support_x.to(device), self.support_y.to(device),
                         self.query_x.to(device), self.query_y.to(device), info)

    def __getitem__(self, index) -> "TaskBatch":
        """A sub-batch of tasks (an int keeps the task dimension with length 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        info = {k: v[index] if isinstance(v, Tensor) else v for k, v in self.info.items()}
        return TaskBatch(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index], info)

"""TaskBatch: a batch of few-shot tasks as tensors whose leading dimension is the task."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """Support and query sets of ``tasks`` tasks, stacked.

    Attributes:
        support_x: ``[tasks, n_support, *in]``; support_y: ``[tasks, n_support, *out]`` (class labels:
            ``[tasks, n_support]``).
        query_x: ``[tasks, n_query, *in]``; query_y: ``[tasks, n_query, *out]``.
        info: optional per-task facts (e.g. a sinusoid's ``amplitude`` and ``phase``, each ``[tasks]``).
        unlabeled_x: optional unlabelled inputs ``[tasks, n_unlabeled, *in]`` (semi-supervised episodes); no
            label tensor goes with them.

    Inputs have at least three dimensions, ``[tasks, examples, features...]``: one task's ``[n, 1]`` inputs
    are ``x[None]``. Every shape is checked when the batch is made.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict = field(default_factory=dict)
    unlabeled_x: Tensor | None = None

    def __post_init__(self) -> None:
        names = ("support_x", "support_y", "query_x", "query_y")
        for name in names:
            if not isinstance(getattr(self, name), Tensor):
                raise ValueError(f"TaskBatch.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        sx, sy, qx, qy = (getattr(self, n) for n in names)
        for name, x in (("support_x", sx), ("query_x", qx)):
            if x.dim() < 3:
                raise ValueError(f"TaskBatch.{name} must be [tasks, examples, *features] (3 or more dims), got shape "
                                 f"{list(x.shape)}; for a single task add the task dimension with x[None]")
        for name, y in (("support_y", sy), ("query_y", qy)):
            if y.dim() < 2:
                raise ValueError(f"TaskBatch.{name} must be at least [tasks, examples], got shape {list(y.shape)}")
        if len({sx.shape[0], sy.shape[0], qx.shape[0], qy.shape[0]}) != 1:
            raise ValueError("TaskBatch tensors disagree on the number of tasks (dim 0): "
                             f"support_x {list(sx.shape)}, support_y {list(sy.shape)}, query_x {list(qx.shape)}, query_y {list(qy.shape)}")
        if sx.shape[1] != sy.shape[1]:
            raise ValueError(f"support_x has {sx.shape[1]} examples per task but support_y has {sy.shape[1]}")
        if qx.shape[1] != qy.shape[1]:
            raise ValueError(f"query_x has {qx.shape[1]} examples per task but query_y has {qy.shape[1]}")
        if sx.shape[2:] != qx.shape[2:]:
            raise ValueError(f"support_x and query_x disagree on the input shape: {list(sx.shape[2:])} vs {list(qx.shape[2:])}")
        if sy.shape[2:] != qy.shape[2:]:
            raise ValueError(f"support_y and query_y disagree on the target shape: {list(sy.shape[2:])} vs {list(qy.shape[2:])}")
        u = self.unlabeled_x
        if u is not None:
            if not isinstance(u, Tensor) or u.dim() < 2 or u.shape[0] != sx.shape[0] or u.shape[2:] != sx.shape[2:]:
                raise ValueError(f"TaskBatch.unlabeled_x must be [tasks, n_unlabeled, *in] = [{sx.shape[0]}, m, "
                                 f"{', '.join(map(str, sx.shape[2:]))}], got {list(u.shape) if isinstance(u, Tensor) else type(u).__name__}")

    @property
    def tasks(self) -> int:
        """Number of tasks in the batch."""
        return self.support_x.shape[0]

    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None) -> "TaskBatch":
        """The same batch on ``device`` and/or with floating tensors cast to ``dtype`` (integer labels keep their
        type): ``batch.to("cuda")``, ``batch.to(torch.float64)``, ``batch.to("cuda", torch.float64)``."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device

        def move(t):
            if not isinstance(t, Tensor):
                return t
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        return TaskBatch(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y),
                         {k: move(v) for k, v in self.info.items()}, move(self.unlabeled_x))

    def __getitem__(self, index) -> "TaskBatch":
        """A sub-batch of tasks (an int keeps the task dimension with length 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        info = {k: v[index] if isinstance(v, Tensor) else v for k, v in self.info.items()}
        return TaskBatch(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index], info,
                         None if self.unlabeled_x is None else self.unlabeled_x[index])

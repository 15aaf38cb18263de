"""A finite pool of tasks: meta-training with a fixed number of tasks, to measure how many are needed."""
from __future__ import annotations

import torch

from .batch import TaskBatch
from ..checks import positive_int


class TaskPool:
    """``size`` tasks drawn once from ``family`` (with ``seed``); ``sample`` draws from them with replacement.

    Args:
        family: any task family with ``sample(tasks, generator, device)``.
        size: number of distinct tasks in the pool.
        seed: fixes which tasks are in the pool.
    """

    def __init__(self, family, size: int, seed: int = 0):
        self.family = family
        self.size = positive_int("size", size)
        self.tasks = family.sample(size, generator=torch.Generator().manual_seed(seed))

    def __repr__(self) -> str:
        return f"TaskPool({self.size} tasks of {self.family!r})"

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
        """``tasks`` tasks picked uniformly from the pool (deterministic under ``generator``)."""
        positive_int("tasks", tasks)
        batch = self.tasks[torch.randint(self.size, (tasks,), generator=generator)]
        return batch if device is None else batch.to(device)

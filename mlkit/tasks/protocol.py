"""The task-family protocol every sampler of tasks follows."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .batch import TaskBatch


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks p(T): anything with this method is a task family.

    ``sample(tasks, generator=None, device=None) -> TaskBatch`` draws ``tasks`` tasks, deterministically
    under a seeded ``torch.Generator``, on ``device`` (default: where the family keeps its data, usually the
    CPU). ``mlkit.fit`` and ``mlkit.evaluate`` check this signature the same way
    (:func:`mlkit.checks.check_family`). :class:`Sinusoid`, :class:`FewShot` and :class:`TaskPool` are task
    families; a custom one needs nothing else.
    """

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
        ...

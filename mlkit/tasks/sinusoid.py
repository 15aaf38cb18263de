"""The sinusoid regression task family of the MAML paper (Finn et al., 2017, Sec. 5.1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import positive_int
from .batch import TaskBatch


class Sinusoid:
    """Tasks ``y = amplitude * sin(x - phase)`` with amplitude ~ U[0.1, 5], phase ~ U[0, π], x ~ U[-5, 5].

    Args:
        shots: support points per task (K); queries: query points per task.
        amplitude, phase, x_range: the ranges tasks and inputs are drawn from.
    """

    def __init__(self, shots: int = 10, queries: int = 10, amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi), x_range: tuple[float, float] = (-5.0, 5.0)):
        self.shots = positive_int("shots", shots)
        self.queries = positive_int("queries", queries)
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def __repr__(self) -> str:
        return f"Sinusoid(shots={self.shots}, queries={self.queries})"

    @staticmethod
    def function(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """The true curves. amplitude, phase: ``[tasks]``; x: ``[tasks, n, 1]``; returns ``[tasks, n, 1]``."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
        """Draw ``tasks`` tasks.

        Returns:
            A :class:`TaskBatch` with support ``[tasks, shots, 1]``, query ``[tasks, queries, 1]`` and
            ``info`` holding ``amplitude`` and ``phase`` (each ``[tasks]``). Deterministic under ``generator``.
        """
        positive_int("tasks", tasks)

        def uniform(shape, bounds):
            low, high = bounds
            return torch.rand(shape, generator=generator) * (high - low) + low

        amplitude = uniform((tasks,), self.amplitude)
        phase = uniform((tasks,), self.phase)
        x = uniform((tasks, self.shots + self.queries, 1), self.x_range)
        y = self.function(amplitude, phase, x)
        batch = TaskBatch(x[:, :self.shots], y[:, :self.shots], x[:, self.shots:], y[:, self.shots:],
                          {"amplitude": amplitude, "phase": phase})
        return batch if device is None else batch.to(device)

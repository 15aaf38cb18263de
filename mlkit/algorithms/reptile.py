"""Reptile: move the initialisation towards each task's adapted weights (Nichol, Achiam & Schulman, 2018)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import core
from ..tasks import TaskBatch
from .maml import MAML


class Reptile(MAML):
    """Reptile, first order by construction: no gradient flows through the inner loop.

    The inner loop takes ``inner_steps`` steps of plain gradient descent at ``inner_lr`` on each task's whole
    support set, from θ to θ'_i. ``reptile.meta_loss(batch).backward()`` leaves in every parameter's ``.grad``
    the Reptile direction ``mean_i(θ - θ'_i)``, so the outer optimiser of :func:`mlkit.fit` with plain SGD at
    ``meta_lr = ε`` performs the Reptile update θ ← θ + ε·mean_i(θ'_i - θ), and Adam performs its Adam
    variant. The value of ``meta_loss`` is the mean query loss at the adapted θ'_i (a forward pass only), so
    the progress bar shows the same quantity as for MAML. With ``inner_steps=0``, θ'_i = θ and the
    direction is zero. Arguments as :class:`MAML` (``first_order`` is always True).

    Reference: Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float = 0.01, inner_steps: int = 5,
                 batched: bool = True, task: str | None = None):
        super().__init__(model, loss, inner_lr, inner_steps, first_order=True, batched=batched, task=task)
        if len(self.learned_lrs):
            raise ValueError("Reptile's update does not differentiate through the inner loop, so it cannot learn "
                             "inner_lr: give a float (or use MAML / MetaSGD to learn step sizes)")

    def settings(self) -> dict:
        return {"inner_lr": self.described_lr(), "inner_steps": self.inner_steps}

    def meta_loss(self, batch: TaskBatch, steps: int | None = None, batched: bool | None = None) -> Tensor:
        """Mean query loss at the adapted weights, whose gradient is the Reptile direction ``mean_i(θ - θ'_i)``."""
        steps = self._steps(steps)
        self.check_batch(batch)
        self.record_example_shape(batch)
        theta, names = self.params(), self.adapted_names()
        if self.batched if batched is None else batched:
            query, direction = self.readable(lambda: self._batched_adaptation(batch, steps),
                                             lambda: self._loop_adaptation(batch[0], steps),
                                             lambda: self._loop_adaptation(batch, steps))
        else:
            query, direction = self._loop_adaptation(batch, steps)
        surrogate = sum((theta[name] * direction[name]).sum() for name in names)
        return query + surrogate - surrogate.detach()

    def _batched_adaptation(self, batch: TaskBatch, steps: int) -> tuple[Tensor, core.Params]:
        """(mean query loss, name -> the Reptile direction mean_i(θ - θ'_i)), with no graph."""
        with torch.no_grad():
            per_task, shared = core.adapt_tasks(self.functional_forward, self.loss_fn, self.params(), batch.support_x,
                                                batch.support_y, self.learning_rates(), steps, True,
                                                self.vectorize(batch.support_x), self.adapted_names())
            query = core.task_losses(self.functional_forward, self.loss_fn, per_task, batch.query_x, batch.query_y,
                                     self.vectorize(batch.query_x), shared)
            theta = self.params()
            return query.mean(), {name: (theta[name] - p).mean(0) for name, p in per_task.items()}

    def _loop_adaptation(self, batch: TaskBatch, steps: int) -> tuple[Tensor, core.Params]:
        """The per-task reference of :meth:`_batched_adaptation`."""
        theta, names, losses, adapted = self.params(), self.adapted_names(), [], []
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
            params = core.adapt(self.functional_forward, self.loss_fn, self.params(), sx, sy, self.learning_rates(),
                                steps, adapted=names, differentiable=False)
            with torch.no_grad():
                losses.append(self.loss_fn(self.functional_forward(params, qx), qy))
            adapted.append(params)
        return torch.stack(losses).mean(), {name: torch.stack([theta[name].detach() - a[name] for a in adapted]).mean(0)
                                            for name in names}

"""MAML: learn an initialisation θ from which a few gradient steps solve a new task (Finn et al., 2017)."""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from . import core
from .tasks import TaskBatch


CPU_CONV_VMAP_MAX_ELEMENTS = 16 * 28 * 28


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning, second or first order, batched over tasks.

    Args:
        model: any ``nn.Module`` whose buffers need no update during adaptation. Its parameters are θ.
        loss: ``"mse"``, ``"cross_entropy"`` or a callable ``(pred, target) -> scalar``.
        inner_lr: the inner step size α. inner_steps: gradient steps on the support set.
        first_order: drop the second-order term (FOMAML).
        batched: adapt all tasks at once (:func:`mlkit.core.adapt_tasks`, fast); ``False`` runs the per-task
            reference loop. Both give the same numbers (tested). On the CPU, a model with convolutions runs
            support or query sets of more than ~16 small images task by task inside the batched path, because
            there a convolution grouped by task is slower than one per task.

    ``maml.parameters()`` is what the outer optimiser trains. Reference: Finn, Abbeel & Levine,
    "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False, batched: bool = True):
        super().__init__()
        core.check_inner(inner_lr, inner_steps)
        self.loss_fn = core.resolve_loss(loss)
        self.loss = loss
        _check_model(model)
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.batched = batched

    def extra_repr(self) -> str:
        return (f"loss={self.loss!r}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"first_order={self.first_order}")

    # The pieces an algorithm may override -------------------------------------------------------------
    def params(self) -> core.Params:
        """The initial parameters θ as a dict ``name -> tensor``."""
        return dict(self.model.named_parameters())

    def learning_rates(self) -> core.LearningRate:
        """The inner learning rate: α for MAML (Meta-SGD returns per-parameter tensors)."""
        return self.inner_lr

    def task_loss(self, steps: int, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """The pure per-task objective: query loss after ``steps`` inner steps (one task, no task dim)."""
        return core.query_loss(self.functional_forward, self.loss_fn, self.params(), self.learning_rates(),
                               steps, self.first_order, support_x, support_y, query_x, query_y)

    def task_losses(self, batch: TaskBatch, steps: int) -> Tensor:
        """The batched per-task objective: ``[tasks]`` query losses after ``steps`` inner steps on every task."""
        adapted = core.adapt_tasks(self.functional_forward, self.loss_fn, self.params(), batch.support_x,
                                   batch.support_y, self.learning_rates(), steps, self.first_order,
                                   self._vectorize(batch.support_x))
        return core.task_losses(self.functional_forward, self.loss_fn, adapted, batch.query_x, batch.query_y,
                                self._vectorize(batch.query_x))

    # The public API ------------------------------------------------------------------------------------
    def functional_forward(self, params: core.Params, x: Tensor) -> Tensor:
        """The model evaluated with ``params`` (and its own buffers) on ``x: [n, *in]``."""
        buffers = dict(self.model.named_buffers())
        return torch.func.functional_call(self.model, (params, buffers), (x,))

    def meta_loss(self, batch: TaskBatch, steps: int | None = None, batched: bool | None = None) -> Tensor:
        """Mean over tasks of the query loss after adapting on each task's support set.

        Args:
            batch: a :class:`TaskBatch` (support ``[tasks, n_support, *in]``, query ``[tasks, n_query, *in]``).
            steps: inner steps (default ``inner_steps``); batched: override the vmap/loop choice.
        Returns:
            A scalar, differentiable with respect to ``self.parameters()``.
        """
        steps = self._steps(steps)
        if self.batched if batched is None else batched:
            return self.task_losses(batch, steps).mean()
        per_task = functools.partial(self.task_loss, steps)
        return core.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                              batched=False).mean()

    def forward(self, batch: TaskBatch) -> Tensor:
        return self.meta_loss(batch)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None,
              inner_lr: float | None = None) -> core.Params:
        """Adapt θ to one task. support_x: ``[n, *in]``, support_y: ``[n, *out]``; ``steps`` and ``inner_lr``
        override the defaults (a float ``inner_lr`` also replaces Meta-SGD's learned rates). Returns ``name -> tensor``."""
        if support_x.shape[0] != support_y.shape[0]:
            raise ValueError(f"support_x has {support_x.shape[0]} examples but support_y has {support_y.shape[0]}")
        if inner_lr is not None:
            core.check_inner(inner_lr, 0)
        lr = self.learning_rates() if inner_lr is None else float(inner_lr)
        return core.adapt(self.functional_forward, self.loss_fn, self.params(), support_x, support_y,
                          lr, self._steps(steps), self.first_order)

    def predict(self, params: core.Params, x: Tensor) -> Tensor:
        """Predictions of the model with adapted ``params`` on ``x: [n, *in]``."""
        return self.functional_forward(params, x)

    def query_predictions(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Query predictions ``[tasks, n_query, *out]`` after adapting on each support set (no meta-graph)."""
        steps = self._steps(steps)
        if not self.batched:
            per_task = functools.partial(core.query_predictions, self.functional_forward, self.loss_fn,
                                         self.params(), self.learning_rates(), steps)
            return core.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x, batched=False)
        with torch.no_grad():
            adapted = core.adapt_tasks(self.functional_forward, self.loss_fn, self.params(), batch.support_x,
                                       batch.support_y, self.learning_rates(), steps, True,
                                       self._vectorize(batch.support_x))
            if self._vectorize(batch.query_x):
                return torch.func.vmap(self.functional_forward)(adapted, batch.query_x)
            per_task = zip(*(p.unbind(0) for p in adapted.values()))
            return torch.stack([self.functional_forward(dict(zip(adapted, ps)), x)
                                for ps, x in zip(per_task, batch.query_x)])

    def _vectorize(self, x: Tensor) -> bool:
        """vmap over tasks, or run them one by one? (Same numbers; only the speed differs.)"""
        if x.device.type != "cpu" or not any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules()):
            return True
        # On the CPU a convolution grouped by task is slower than one per task unless each task's batch is
        # small, where vmap saves the per-call overhead: the crossover measured on Conv4 is ~16 28x28 images.
        return x[0].numel() < CPU_CONV_VMAP_MAX_ELEMENTS

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.inner_steps
        core.check_inner(self.inner_lr, steps)
        return steps


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.track_running_stats:
                raise ValueError(f"{name or 'model'} is a batch norm with running statistics, which adaptation "
                                 "cannot update functionally; use mlkit.models.BatchNorm (batch statistics), e.g. "
                                 "mlkit.models.replace_batchnorm(model)")

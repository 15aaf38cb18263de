"""The functional core shared by every algorithm.

Parameters are a dict ``name -> tensor``. One pure per-task function adapts them on a task's support
set and scores the result on its query set; ``torch.func.vmap`` maps it over the task dimension of a
:class:`~mlkit.tasks.TaskBatch`, and a plain Python loop runs the same function as the reference path.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
LearningRate = Union[float, Mapping[str, Tensor]]

LOSSES: dict[str, LossFn] = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """Turn ``"mse"``, ``"cross_entropy"`` or a callable ``(pred, target) -> scalar`` into a loss function."""
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss]
        raise ValueError(f"unknown loss {loss!r}: use one of {sorted(LOSSES)} or a callable (pred, target) -> scalar")
    if callable(loss):
        return loss
    raise ValueError(f"loss must be a name in {sorted(LOSSES)} or a callable (pred, target) -> scalar, got {type(loss).__name__}")


def check_inner(inner_lr: float, inner_steps: int) -> None:
    """Raise ``ValueError`` unless ``inner_lr`` is a finite number and ``inner_steps`` an integer >= 0."""
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)) or not math.isfinite(inner_lr):
        raise ValueError(f"inner_lr must be a finite number, got {inner_lr!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}")


def adapt(forward: Forward, loss_fn: LossFn, params: Params, support_x: Tensor, support_y: Tensor,
          lr: LearningRate, steps: int, first_order: bool = False) -> Params:
    """Take ``steps`` gradient-descent steps on one task's support set (MAML's inner loop).

    Args:
        forward: ``(params, x) -> predictions``, a stateless call of the model.
        loss_fn: ``(pred, target) -> scalar``.
        params: the initial parameters θ, ``name -> tensor``.
        support_x: ``[ways*shots, *in]``; support_y: ``[ways*shots, *out]`` (one task).
        lr: the inner learning rate α: a float (MAML) or ``name -> tensor`` shaped like ``params`` (Meta-SGD).
        steps: number of inner steps (0 returns ``params``).
        first_order: detach the inner gradients, dropping the Hessian term of the meta-gradient (FOMAML).

    Returns:
        The adapted parameters θ' = θ - α ∘ ∇L_support(θ), applied ``steps`` times. The result stays
        differentiable with respect to ``params`` and ``lr`` (Finn et al., 2017, Eq. 1; Li et al., 2017).
    """
    def support_loss(p: Params) -> Tensor:
        return loss_fn(forward(p, support_x), support_y)

    for _ in range(steps):
        grads = torch.func.grad(support_loss)(params)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        if isinstance(lr, Mapping):
            params = {name: p - lr[name] * grads[name] for name, p in params.items()}
        else:
            params = {name: p - lr * grads[name] for name, p in params.items()}
    return params


def query_loss(forward: Forward, loss_fn: LossFn, params: Params, lr: LearningRate, steps: int,
               first_order: bool, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
    """The per-task meta-objective: query loss after adapting on the support set (one task, no task dim)."""
    adapted = adapt(forward, loss_fn, params, support_x, support_y, lr, steps, first_order)
    return loss_fn(forward(adapted, query_x), query_y)


def query_predictions(forward: Forward, loss_fn: LossFn, params: Params, lr: LearningRate, steps: int,
                      support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Predictions on one task's query inputs after adapting on its support set."""
    adapted = adapt(forward, loss_fn, params, support_x, support_y, lr, steps, first_order=True)
    return forward(adapted, query_x)


def map_tasks(per_task: Callable[..., Tensor], *tensors: Tensor, batched: bool = True) -> Tensor:
    """Apply ``per_task`` to every task: ``vmap`` over dim 0 when ``batched``, else a loop (the reference).

    Args:
        per_task: a pure function of one task's tensors.
        tensors: each ``[tasks, ...]``.

    Returns:
        ``[tasks, ...]``, the stacked per-task results.
    """
    if batched:
        return torch.func.vmap(per_task)(*tensors)
    return torch.stack([per_task(*task) for task in zip(*tensors)])

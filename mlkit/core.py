"""The functional core shared by every algorithm.

Parameters are a dict ``name -> tensor``. One pure per-task function adapts them on a task's support
set and scores the result on its query set; a plain Python loop over tasks runs it as the reference path.
The batched path (:func:`adapt_tasks`, :func:`task_losses`) computes the same numbers for every task at
once: ``torch.func.vmap`` maps the per-task loss over the task dimension, and the inner gradients of all
tasks come from one ``torch.autograd.grad`` call, so every transform stays outside the derivative and
second-order gradients are exact for any layer ``vmap`` can run forward (``torch.nn`` batch norm included).
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


def task_losses(forward: Forward, loss_fn: LossFn, params: Params, x: Tensor, y: Tensor,
                vectorize: bool = True) -> Tensor:
    """The loss of every task, each under its own parameters.

    Args:
        params: ``name -> [tasks, *shape]``, one parameter set per task.
        x: ``[tasks, n, *in]``; y: ``[tasks, n, *out]``.
        vectorize: ``vmap`` over tasks (one kernel per layer for all tasks); ``False`` runs task by task,
            which is faster for convolutions on the CPU, where a grouped convolution is slower than a loop.

    Returns:
        ``[tasks]``, differentiable with respect to ``params``.
    """
    def one(p: Params, xt: Tensor, yt: Tensor) -> Tensor:
        return loss_fn(forward(p, xt), yt)

    if vectorize:
        return torch.func.vmap(one)(params, x, y)
    per_task = zip(*(p.unbind(0) for p in params.values()))  # unbind: one backward node, not one per task
    return torch.stack([one(dict(zip(params, ps)), xt, yt) for ps, xt, yt in zip(per_task, x, y)])


def adapt_tasks(forward: Forward, loss_fn: LossFn, params: Params, support_x: Tensor, support_y: Tensor,
                lr: LearningRate, steps: int, first_order: bool = False, vectorize: bool = True) -> Params:
    """:func:`adapt` for a batch of tasks at once: the same inner loop, batched over the task dimension.

    Args:
        params: θ, ``name -> tensor`` shared by all tasks.
        support_x: ``[tasks, ways*shots, *in]``; support_y: ``[tasks, ways*shots, *out]``.
        lr, steps, first_order: as :func:`adapt`. vectorize: as :func:`task_losses`.

    Returns:
        ``name -> [tasks, *shape]``: each task's θ' (Finn et al., 2017, Eq. 1). Differentiable with respect
        to ``params`` and ``lr`` when gradients are enabled and they require grad; otherwise detached (the
        evaluation path).
    """
    tasks = support_x.shape[0]
    track = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
    params = {name: (p if track else p.detach()).expand(tasks, *p.shape) for name, p in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            params = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
            # Tasks are independent, so the gradient of the summed loss is each task's own gradient.
            losses = task_losses(forward, loss_fn, params, support_x, support_y, vectorize)
            grads = torch.autograd.grad(losses.sum(), list(params.values()), create_graph=track and not first_order)
            if isinstance(lr, Mapping):
                params = {name: p - lr[name] * g for (name, p), g in zip(params.items(), grads)}
            else:
                params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
            if not track:
                params = {name: p.detach() for name, p in params.items()}
    return params


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

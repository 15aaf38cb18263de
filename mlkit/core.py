"""The functional core shared by every algorithm.

Parameters are a dict ``name -> tensor``. One pure per-task function adapts them on a task's support
set and scores the result on its query set; a plain Python loop over tasks runs it as the reference path.
The batched path (:func:`adapt_tasks`, :func:`task_losses`) computes the same numbers for every task at
once: ``torch.func.vmap`` maps the per-task loss over the task dimension, and the inner gradients of all
tasks come from one ``torch.autograd.grad`` call, so every transform stays outside the derivative and
second-order gradients are exact for any layer ``vmap`` can run forward (``torch.nn`` batch norm included).
Random layers (dropout) draw independent randomness for every task.

Only the parameters named in ``adapted`` change in the inner loop; the others enter every task unchanged
(frozen parameters, or the body of ANIL), as the very same tensors.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Collection, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
LearningRate = Union[float, Mapping[str, Union[float, Tensor]]]


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"mse: predictions {list(pred.shape)} and targets {list(target.shape)} differ in shape; give "
                         f"targets the model's output shape per example (e.g. y[..., None] for one output)")
    return F.mse_loss(pred, target)


def _cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"cross_entropy needs integer class labels (torch.long), got {target.dtype} labels; "
                         "convert them with y.long()")
    if pred.dim() != 2 or target.shape != pred.shape[:1]:
        raise ValueError(f"cross_entropy needs logits [n, classes] and labels [n], got logits {list(pred.shape)} "
                         f"and labels {list(target.shape)}")
    return F.cross_entropy(pred, target)


LOSSES: dict[str, LossFn] = {"mse": _mse, "cross_entropy": _cross_entropy}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """Turn ``"mse"``, ``"cross_entropy"`` or a callable ``(pred, target) -> scalar`` into a loss function.

    The named losses check shapes and label types and raise ``ValueError`` with what to change."""
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss]
        raise ValueError(f"unknown loss {loss!r}: use one of {sorted(LOSSES)} or a callable (pred, target) -> scalar")
    if callable(loss):
        return loss
    raise ValueError(f"loss must be a name in {sorted(LOSSES)} or a callable (pred, target) -> scalar, got {type(loss).__name__}")


def is_classification(loss) -> bool:
    """Whether ``loss`` is a cross-entropy: the name, ``F.cross_entropy``, an ``nn.CrossEntropyLoss`` (label
    smoothing included) or a ``functools.partial`` of either."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return loss in ("cross_entropy", F.cross_entropy, _cross_entropy) or isinstance(loss, torch.nn.CrossEntropyLoss)


TASKS = ("classification", "regression")
_ELEMENTWISE = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, _mse)


def resolve_task(loss, task: str | None = None) -> str | None:
    """What the targets of ``loss`` are: ``"classification"`` (integer labels ``[n]``), ``"regression"``, or
    ``None`` (a custom loss with no ``task`` given: decided per batch from the targets' dtype).

    Args:
        loss: the loss as given to an algorithm (a name or a callable).
        task: ``"classification"``, ``"regression"`` or ``None`` (infer: the cross-entropies are classification,
            ``"mse"`` is regression, other callables follow their targets: integer labels are classification).
    Raises:
        ValueError: for another ``task``, or one that contradicts a named loss.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be 'classification', 'regression' or None (inferred from the loss and the "
                         f"targets), got {task!r}")
    builtin = "classification" if is_classification(loss) else "regression" if loss == "mse" else None
    if task is not None and builtin is not None and task != builtin:
        raise ValueError(f"task={task!r} contradicts loss={loss!r}, which is a {builtin} loss; drop task= or pass "
                         "a loss for that task")
    return task if task is not None else builtin


def is_elementwise(loss) -> bool:
    """Whether ``loss`` compares predictions and targets elementwise (MSE, L1, Huber), so that both must have
    the same shape: a mismatch would broadcast silently."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return loss == "mse" or loss in _ELEMENTWISE or isinstance(
        loss, (torch.nn.MSELoss, torch.nn.L1Loss, torch.nn.SmoothL1Loss, torch.nn.HuberLoss))


def scalar_loss(value, pred: Tensor) -> Tensor:
    """``value`` if it is a scalar tensor, else ``ValueError``: an unreduced loss (``reduction="none"``) would be
    summed over the examples on the batched path (an inner step n times too large) and fail on the loop path."""
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"the loss must return a scalar (the mean over a task's examples), but it returned {shape} "
                         f"for predictions {list(pred.shape)}: use reduction='mean' or take .mean() of the "
                         "per-example losses")
    return value


def check_lr(name: str, value, learnable: bool = True) -> float | Tensor:
    """A non-negative inner learning rate: a finite number, or (``learnable``) a scalar floating tensor, kept as
    the same tensor when it requires grad (it is then meta-learned); ``ValueError`` otherwise."""
    if isinstance(value, Tensor):
        if not learnable:
            raise ValueError(f"{name} must be a finite number >= 0, got a tensor")
        if value.dim() != 0 or not value.is_floating_point():
            raise ValueError(f"{name} as a tensor must be a floating scalar (0-dim), got {value.dtype} of shape "
                             f"{list(value.shape)}; for one step size per weight use mlkit.MetaSGD")
        check_number(name, float(value.detach()), minimum=0.0)
        return value if value.requires_grad else float(value)
    value = check_number(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (a step size; a negative one climbs the loss), got {value!r}")
    return value


def check_number(name: str, value, minimum: float | None = None) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite real number (and ``>= minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def check_steps(steps) -> int:
    """``steps`` unless it is not an integer >= 0 (``ValueError``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"inner_steps must be an integer >= 0, got {steps!r}")
    return steps


def _step(params: Params, grads: Mapping[str, Tensor], lr: LearningRate) -> Params:
    """θ - α ∘ g for the parameters that have a gradient; the others are passed through untouched."""
    if isinstance(lr, Mapping):
        return {name: p - lr[name] * grads[name] if name in grads else p for name, p in params.items()}
    return {name: p - lr * grads[name] if name in grads else p for name, p in params.items()}


def adapt(forward: Forward, loss_fn: LossFn, params: Params, support_x: Tensor, support_y: Tensor,
          lr: LearningRate, steps: int, first_order: bool = False, adapted: Collection[str] | None = None,
          differentiable: bool = True) -> Params:
    """Take ``steps`` gradient-descent steps on one task's support set (MAML's inner loop).

    Args:
        forward: ``(params, x) -> predictions``, a stateless call of the model.
        loss_fn: ``(pred, target) -> scalar``.
        params: the initial parameters θ, ``name -> tensor``.
        support_x: ``[ways*shots, *in]``; support_y: ``[ways*shots, *out]`` (one task).
        lr: the inner learning rate α: a float (MAML) or ``name -> float or tensor`` (per layer; Meta-SGD's
            tensors shaped like ``params``).
        steps: number of inner steps (0 returns ``params``).
        first_order: detach the inner gradients, dropping the Hessian term of the meta-gradient (FOMAML).
        adapted: names of the parameters the inner loop changes (default: all); the others are returned as
            the same tensor objects.
        differentiable: ``False`` returns detached parameters and keeps no graph (test-time adaptation).

    Returns:
        The adapted parameters θ' = θ - α ∘ ∇L_support(θ), applied ``steps`` times. With ``differentiable``
        the result is differentiable with respect to ``params`` and ``lr`` (Finn et al., 2017, Eq. 1;
        Li et al., 2017).
    """
    names = list(params) if adapted is None else [name for name in params if name in adapted]
    if not differentiable:
        params = {name: p.detach() for name, p in params.items()}

    def support_loss(moving: Params, fixed: Params) -> Tensor:
        pred = forward({**fixed, **moving}, support_x)
        return scalar_loss(loss_fn(pred, support_y), pred)

    for _ in range(steps):
        moving = {name: params[name] for name in names}
        fixed = {name: p for name, p in params.items() if name not in moving}
        grads = torch.func.grad(support_loss)(moving, fixed)
        if first_order or not differentiable:
            grads = {name: g.detach() for name, g in grads.items()}
        params = _step(params, grads, lr)
        if not differentiable:
            params = {name: p.detach() for name, p in params.items()}
    return params


def query_loss(forward: Forward, loss_fn: LossFn, params: Params, lr: LearningRate, steps: int,
               first_order: bool, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
               adapted: Collection[str] | None = None) -> Tensor:
    """The per-task meta-objective: query loss after adapting on the support set (one task, no task dim)."""
    task_params = adapt(forward, loss_fn, params, support_x, support_y, lr, steps, first_order, adapted)
    pred = forward(task_params, query_x)
    return scalar_loss(loss_fn(pred, query_y), pred)


def task_losses(forward: Forward, loss_fn: LossFn, params: Params, x: Tensor, y: Tensor,
                vectorize: bool = True, shared: Params | None = None) -> Tensor:
    """The loss of every task, each under its own parameters.

    Args:
        params: ``name -> [tasks, *shape]``, one parameter set per task.
        x: ``[tasks, n, *in]``; y: ``[tasks, n, *out]``.
        vectorize: ``vmap`` over tasks (one kernel per layer for all tasks); ``False`` runs task by task,
            which is faster for convolutions on the CPU, where a grouped convolution is slower than a loop.
        shared: ``name -> tensor`` used unchanged by every task (parameters that are not adapted).

    Returns:
        ``[tasks]``, differentiable with respect to ``params`` and ``shared``. Random layers draw different
        randomness for every task.
    """
    shared = {} if shared is None else shared

    def one(p: Params, xt: Tensor, yt: Tensor, common: Params) -> Tensor:
        pred = forward({**common, **p}, xt)
        return scalar_loss(loss_fn(pred, yt), pred)

    if vectorize:
        return torch.func.vmap(one, in_dims=(0, 0, 0, None), randomness="different")(params, x, y, shared)
    return torch.stack([one(p, xt, yt, shared) for p, xt, yt in zip(unbind_tasks(params, x.shape[0]), x, y)])


def task_outputs(forward: Forward, params: Params, x: Tensor, vectorize: bool = True,
                 shared: Params | None = None) -> Tensor:
    """``forward`` of every task under its own parameters: params ``name -> [tasks, *shape]``, x ``[tasks, n, *in]``
    → ``[tasks, n, *out]`` (``shared`` as in :func:`task_losses`)."""
    shared = {} if shared is None else shared

    def one(p: Params, xt: Tensor, common: Params) -> Tensor:
        return forward({**common, **p}, xt)

    if vectorize:
        return torch.func.vmap(one, in_dims=(0, 0, None), randomness="different")(params, x, shared)
    return torch.stack([one(p, xt, shared) for p, xt in zip(unbind_tasks(params, x.shape[0]), x)])


def unbind_tasks(params: Params, tasks: int) -> list[Params]:
    """``name -> [tasks, *shape]`` as a list of per-task dicts (one ``unbind`` node per tensor, not one per task)."""
    if not params:
        return [{} for _ in range(tasks)]
    columns = {name: p.unbind(0) for name, p in params.items()}
    return [{name: column[t] for name, column in columns.items()} for t in range(tasks)]


def adapt_tasks(forward: Forward, loss_fn: LossFn, params: Params, support_x: Tensor, support_y: Tensor,
                lr: LearningRate, steps: int, first_order: bool = False, vectorize: bool = True,
                adapted: Collection[str] | None = None) -> tuple[Params, Params]:
    """:func:`adapt` for a batch of tasks at once: the same inner loop, batched over the task dimension.

    Args:
        params: θ, ``name -> tensor`` shared by all tasks.
        support_x: ``[tasks, ways*shots, *in]``; support_y: ``[tasks, ways*shots, *out]``.
        lr, steps, first_order, adapted: as :func:`adapt`. vectorize: as :func:`task_losses`.

    Returns:
        ``(per_task, shared)``: ``per_task`` maps each adapted name to ``[tasks, *shape]``, every task's θ'
        (Finn et al., 2017, Eq. 1); ``shared`` holds the parameters that were not adapted, unchanged. Both
        are differentiable with respect to ``params`` and ``lr`` when gradients are enabled and a parameter
        requires grad; otherwise detached (the evaluation path).
    """
    tasks = support_x.shape[0]
    names = [name for name in params if adapted is None or name in adapted]
    track = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
    if not track:
        params = {name: p.detach() for name, p in params.items()}
    shared = {name: p for name, p in params.items() if name not in names}
    per_task = {name: params[name].expand(tasks, *params[name].shape) for name in names}
    with torch.enable_grad():
        for _ in range(steps):
            per_task = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in per_task.items()}
            # Tasks are independent, so the gradient of the summed loss is each task's own gradient.
            losses = task_losses(forward, loss_fn, per_task, support_x, support_y, vectorize, shared)
            grads = torch.autograd.grad(losses.sum(), list(per_task.values()), create_graph=track and not first_order)
            per_task = _step(per_task, dict(zip(per_task, grads)), lr)
            if not track:
                per_task = {name: p.detach() for name, p in per_task.items()}
    return per_task, shared


def map_tasks(per_task: Callable[..., Tensor], *tensors: Tensor, batched: bool = True) -> Tensor:
    """Apply ``per_task`` to every task: ``vmap`` over dim 0 when ``batched``, else a loop (the reference).

    Args:
        per_task: a pure function of one task's tensors.
        tensors: each ``[tasks, ...]``.

    Returns:
        ``[tasks, ...]``, the stacked per-task results.
    """
    if batched:
        return torch.func.vmap(per_task, randomness="different")(*tensors)
    return torch.stack([per_task(*task) for task in zip(*tensors)])

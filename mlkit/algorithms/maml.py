"""MAML: learn an initialisation θ from which a few gradient steps solve a new task (Finn et al., 2017)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .. import core
from ..tasks import TaskBatch
from .base import MetaLearner


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning, second or first order, batched over tasks.

    Args:
        model: any ``nn.Module`` that adaptation can run functionally (see :func:`mlkit.checks.check_model`).
            Its parameters are θ; those with ``requires_grad=False`` stay fixed in both loops.
        loss: ``"mse"``, ``"cross_entropy"`` or a callable ``(pred, target) -> scalar`` (see ``task``).
        inner_lr: the inner step size α >= 0: a float, or a dict from parameter-name prefix to float for one step
            size per layer (``{"features": 0.1, "head": 0.4}``; the longest matching prefix wins, ``""``
            matches everything; every prefix must match a parameter). A scalar tensor that requires grad
            (``nn.Parameter(torch.tensor(0.1))``), alone or as a value of the dict, is meta-learned: it joins
            ``maml.parameters()`` (as ``learned_lrs``), the outer optimiser trains it, and the state saves it.
        inner_steps: gradient steps on the support set. first_order: drop the second-order term (FOMAML).
        batched: adapt all tasks at once (:func:`mlkit.core.adapt_tasks`, fast); ``False`` runs the per-task
            reference loop. Both give the same numbers (tested). On the CPU, a model with convolutions runs
            support or query sets of more than ~16 small images task by task inside the batched path, because
            there a convolution grouped by task is slower than one per task.
        task: ``"classification"``, ``"regression"`` or None (inferred), as :class:`MetaLearner`; e.g.
            ``MAML(model, loss=focal_loss, task="classification")`` checks labels and reports accuracy.

    ``maml.parameters()`` is what the outer optimiser trains. Reference: Finn, Abbeel & Levine,
    "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float | Tensor | Mapping[str, float | Tensor] = 0.01,
                 inner_steps: int = 1, first_order: bool = False, batched: bool = True, task: str | None = None):
        super().__init__(model, loss, batched, task)
        self.learned_lrs = nn.ParameterDict()
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order

    @property
    def inner_lr(self) -> float | Tensor | dict[str, float | Tensor]:
        """α: a float or learned scalar tensor, or ``prefix -> either`` per layer. Setting it checks the value."""
        return self._inner_lr

    @inner_lr.setter
    def inner_lr(self, value) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        if isinstance(value, Mapping):
            if not value or not all(isinstance(k, str) for k in value):
                raise ValueError(f"inner_lr as a dict maps parameter-name prefixes (str) to step sizes, got {value!r}")
            value = {k: core.check_lr(f"inner_lr[{k!r}]", v) for k, v in value.items()}
            _per_parameter(value, names)
            unmatched = [k for k in value if k and not any(_matches(name, k) for name in names)]
            if unmatched:
                raise ValueError(f"inner_lr prefix {unmatched[0]!r} matches no parameter; the model's parameters are "
                                 f"{names[:6]}{' ...' if len(names) > 6 else ''}")
        else:
            value = core.check_lr("inner_lr", value)
        learned = value.items() if isinstance(value, dict) else [("", value)]
        self.learned_lrs = nn.ParameterDict({_lr_key(k): v if isinstance(v, nn.Parameter) else nn.Parameter(v)
                                             for k, v in learned if isinstance(v, Tensor)})
        if isinstance(value, dict):
            value = {k: self.learned_lrs[_lr_key(k)] if isinstance(v, Tensor) else v for k, v in value.items()}
        elif isinstance(value, Tensor):
            value = self.learned_lrs[_lr_key("")]
        self._inner_lr = value

    def __setattr__(self, name: str, value) -> None:
        if name == "inner_lr":  # the property's setter, which nn.Module would bypass to register an nn.Parameter
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def inner_steps(self) -> int:
        return self._inner_steps

    @inner_steps.setter
    def inner_steps(self, value) -> None:
        self._inner_steps = core.check_steps(value)

    @property
    def first_order(self) -> bool:
        return self._first_order

    @first_order.setter
    def first_order(self, value) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"first_order must be True or False, got {value!r}")
        self._first_order = value

    def settings(self) -> dict:
        return {"inner_lr": self.described_lr(), "inner_steps": self.inner_steps, "first_order": self.first_order}

    def described_lr(self) -> float | str | dict:
        """``inner_lr`` for the saved settings: a learned tensor is ``"learned"`` (its value is in the state dict)."""
        if isinstance(self.inner_lr, dict):
            return {k: "learned" if isinstance(v, Tensor) else v for k, v in self.inner_lr.items()}
        return "learned" if isinstance(self.inner_lr, Tensor) else self.inner_lr

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {"loss": self.loss, **self.settings()}.items())

    # The pieces an algorithm may override ---------------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Names of the parameters the inner loop changes: those that require grad."""
        return [name for name, p in self.model.named_parameters() if p.requires_grad]

    def learning_rates(self) -> core.LearningRate:
        """The inner learning rate: α, or ``name -> α`` per parameter (Meta-SGD returns tensors)."""
        if isinstance(self.inner_lr, dict):
            return _per_parameter(self.inner_lr, self.adapted_names())
        return self.inner_lr

    def task_loss(self, steps: int, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """The pure per-task objective: query loss after ``steps`` inner steps (one task, no task dim)."""
        return core.query_loss(self.functional_forward, self.loss_fn, self.params(), self.learning_rates(),
                               steps, self.first_order, support_x, support_y, query_x, query_y, self.adapted_names())

    def task_losses(self, batch: TaskBatch, steps: int) -> Tensor:
        """The batched per-task objective: ``[tasks]`` query losses after ``steps`` inner steps on every task."""
        per_task, shared = core.adapt_tasks(self.functional_forward, self.loss_fn, self.params(), batch.support_x,
                                            batch.support_y, self.learning_rates(), steps, self.first_order,
                                            self.vectorize(batch.support_x), self.adapted_names())
        return core.task_losses(self.functional_forward, self.loss_fn, per_task, batch.query_x, batch.query_y,
                                self.vectorize(batch.query_x), shared)

    # The public API ------------------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch, steps: int | None = None, batched: bool | None = None) -> Tensor:
        """Mean over tasks of the query loss after adapting on each task's support set.

        Args:
            batch: a :class:`TaskBatch` (support ``[tasks, n_support, *in]``, query ``[tasks, n_query, *in]``).
            steps: inner steps (default ``inner_steps``); batched: override the vmap/loop choice.
        Returns:
            A scalar, differentiable with respect to ``self.parameters()``.
        """
        steps = self._steps(steps)
        self.check_batch(batch)
        self.record_example_shape(batch)
        if self.batched if batched is None else batched:
            return self.readable(lambda: self.task_losses(batch, steps).mean(),
                                 lambda: self._loop_losses(batch[0], steps),
                                 lambda: self._loop_losses(batch, steps).mean())
        return self._loop_losses(batch, steps).mean()

    def _loop_losses(self, batch: TaskBatch, steps: int) -> Tensor:
        return torch.stack([self.task_loss(steps, *task) for task in
                            zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)])

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None, inner_lr: float | None = None,
              differentiable: bool = True) -> core.Params:
        """Adapt θ to one task: the map from its support set to its parameters.

        Args:
            support_x: ``[n, *in]``; support_y: ``[n, *out]`` (one task, no task dimension).
            steps, inner_lr: override the defaults (a float ``inner_lr`` also replaces Meta-SGD's learned rates).
            differentiable: ``False`` keeps no graph (test time: 50 steps cost the memory of one).
        Returns:
            ``name -> tensor``, the adapted parameters; use them with :meth:`predict`. Works under
            ``torch.inference_mode()`` too (then nothing is differentiable).
        """
        self.check_task(support_x, support_y)
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return self.adapt(*self.outside_inference_mode(support_x, support_y), steps, inner_lr, False)
        return core.adapt(self.functional_forward, self.loss_fn, self.params(), support_x, support_y,
                          self._learning_rates(inner_lr), self._steps(steps), self.first_order,
                          self.adapted_names(), differentiable)

    def predict(self, params: core.Params, x: Tensor) -> Tensor:
        """Predictions ``[n, *out]`` of the model with adapted ``params`` (every parameter, as :meth:`adapt`
        returns them) on ``x: [n, *in]``."""
        self.check_params(params)
        self.check_task(x, name="query")
        return self.functional_forward(params, x)

    def query_predictions(self, batch: TaskBatch, steps: int | None = None, inner_lr: float | None = None) -> Tensor:
        """Query predictions ``[tasks, n_query, *out]`` after adapting on each support set (no graph kept; works
        under ``torch.inference_mode()``)."""
        steps, lr = self._steps(steps), self._learning_rates(inner_lr)
        self.check_batch(batch)
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                tensors = self.outside_inference_mode(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
                return self.query_predictions(TaskBatch(*tensors, batch.info, batch.unlabeled_x), steps, inner_lr)
        if not self.batched:
            return self._loop_predictions(batch, steps, lr)
        return self.readable(lambda: self._batched_predictions(batch, steps, lr),
                             lambda: self._loop_predictions(batch[0], steps, lr),
                             lambda: self._loop_predictions(batch, steps, lr))

    def _batched_predictions(self, batch: TaskBatch, steps: int, lr: core.LearningRate) -> Tensor:
        with torch.no_grad():
            per_task, shared = core.adapt_tasks(self.functional_forward, self.loss_fn, self.params(), batch.support_x,
                                                batch.support_y, lr, steps, True, self.vectorize(batch.support_x),
                                                self.adapted_names())
            return core.task_outputs(self.functional_forward, per_task, batch.query_x, self.vectorize(batch.query_x),
                                     shared)

    def _loop_predictions(self, batch: TaskBatch, steps: int, lr: core.LearningRate) -> Tensor:
        outputs = []
        for sx, sy, qx in zip(batch.support_x, batch.support_y, batch.query_x):
            params = core.adapt(self.functional_forward, self.loss_fn, self.params(), sx, sy, lr, steps,
                                adapted=self.adapted_names(), differentiable=False)
            with torch.no_grad():
                outputs.append(self.functional_forward(params, qx))
        return torch.stack(outputs)

    def _learning_rates(self, inner_lr: float | None) -> core.LearningRate:
        return self.learning_rates() if inner_lr is None else core.check_lr("inner_lr", inner_lr, learnable=False)

    def _steps(self, steps: int | None) -> int:
        return self.inner_steps if steps is None else core.check_steps(steps)


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _lr_key(prefix: str) -> str:
    """The ``learned_lrs`` key of a prefix (a ParameterDict key may contain neither "." nor be empty)."""
    return "all" if prefix == "" else "layer_" + prefix.replace(".", "/")


def _per_parameter(lr: Mapping[str, float], names: list[str]) -> dict[str, float]:
    """Each parameter's step size from ``prefix -> α``: the longest prefix that matches it wins."""
    resolved, missing = {}, []
    for name in names:
        matches = [p for p in lr if _matches(name, p)]
        if matches:
            resolved[name] = lr[max(matches, key=len)]
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"inner_lr has no step size for parameters {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
                         f"add their prefix (e.g. {missing[0].split('.')[0]!r}) or '' for a default")
    return resolved


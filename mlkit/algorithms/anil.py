"""ANIL: adapt only the head in the inner loop; the body is meta-trained but reused (Raghu et al., 2020)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import core
from ..tasks import TaskBatch
from .maml import MAML, _matches as _under


class ANIL(MAML):
    """Almost No Inner Loop: MAML whose inner loop adapts only the head; the outer loop still trains everything.

    Args: as :class:`MAML`, plus
        head: parameter-name prefixes of the head (a str or a list); default: the model's last ``nn.Linear``.
        reuse_features: when the head is one submodule whose output is the model's output, compute the body
            once per task and run the inner steps on its features alone (the point of ANIL: cheap). ``False``
            runs the whole network at every inner step; both give the same numbers (tested).

    ``anil.adapt(x, y)`` returns θ with only the head's tensors replaced: every body tensor *is* θ's. The
    meta-gradient is MAML's with the inner update restricted to the head. Reference: Raghu, Raghu, Bengio &
    Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float | Mapping[str, float] = 0.01,
                 inner_steps: int = 1, first_order: bool = False, head: str | Sequence[str] | None = None,
                 batched: bool = True, reuse_features: bool = True, task: str | None = None):
        self.head = _head_prefixes(model, head)
        super().__init__(model, loss, inner_lr, inner_steps, first_order, batched, task)
        self.reuse_features = reuse_features

    def settings(self) -> dict:
        return {**super().settings(), "head": list(self.head)}

    def adapted_names(self) -> list[str]:
        """The head's parameters that require grad."""
        return [name for name, p in self.model.named_parameters()
                if p.requires_grad and any(_under(name, prefix) for prefix in self.head)]

    def _head_module(self) -> nn.Module | None:
        """The head as one submodule, if it is one (then the body can run once per task)."""
        if not self.reuse_features or len(self.head) != 1:
            return None
        try:
            return self.model.get_submodule(self.head[0])
        except AttributeError:
            return None

    def features(self, params: core.Params, x: Tensor) -> Tensor:
        """The body's output on ``x: [n, *in]``: the head's input, which must be the last computation."""
        head, seen = self._head_module(), {}
        pre = head.register_forward_pre_hook(lambda module, args: seen.update(input=args[0]))
        post = head.register_forward_hook(lambda module, args, output: seen.update(output=output))
        try:
            out = self.functional_forward(params, x)
        finally:
            pre.remove()
            post.remove()
        if "input" not in seen or out is not seen["output"]:
            raise ValueError(f"ANIL's head {self.head[0]!r} must be the model's last operation, its output the model's "
                             "output; give head= the final layer, or reuse_features=False")
        return seen["input"]

    def head_forward(self, params: core.Params, features: Tensor) -> Tensor:
        """The head on ``features``, with ``params`` keyed by full parameter names."""
        prefix = self.head[0] + "."
        return torch.func.functional_call(self._head_module(), {n[len(prefix):]: p for n, p in params.items()},
                                                  (features,))

    def _adapt_on_features(self, batch: TaskBatch, steps: int, lr, first_order: bool):
        theta, names = self.params(), self.adapted_names()
        head = {name: theta[name] for name in theta if any(_under(name, prefix) for prefix in self.head)}
        support = core.task_outputs(self.features, {}, batch.support_x, self.vectorize(batch.support_x), theta)
        query = core.task_outputs(self.features, {}, batch.query_x, self.vectorize(batch.query_x), theta)
        per_task, shared = core.adapt_tasks(self.head_forward, self.loss_fn, head, support, batch.support_y, lr, steps,
                                            first_order, True, names)
        return per_task, shared, query

    def task_losses(self, batch: TaskBatch, steps: int) -> Tensor:
        if self._head_module() is None:
            return super().task_losses(batch, steps)
        per_task, shared, query = self._adapt_on_features(batch, steps, self.learning_rates(), self.first_order)
        return core.task_losses(self.head_forward, self.loss_fn, per_task, query, batch.query_y, True, shared)

    def _batched_predictions(self, batch: TaskBatch, steps: int, lr) -> Tensor:
        if self._head_module() is None:
            return super()._batched_predictions(batch, steps, lr)
        with torch.no_grad():
            per_task, shared, query = self._adapt_on_features(batch, steps, lr, True)
            return core.task_outputs(self.head_forward, per_task, query, True, shared)


def _head_prefixes(model: nn.Module, head: str | Sequence[str] | None) -> list[str]:
    """The head's prefixes, checked to name parameters; default: the last ``nn.Linear``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [n for n, _ in model.named_parameters()]
    if head is None:
        linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the model has no nn.Linear to serve as ANIL's head; name it with head='prefix'")
        return [linears[-1]]
    prefixes = [head] if isinstance(head, str) else list(head)
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"head must be a parameter-name prefix or a list of them, got {head!r}")
    for prefix in prefixes:
        if not any(_under(n, prefix) for n in names):
            raise ValueError(f"head prefix {prefix!r} matches no parameter; the model's parameters are {names[:6]}...")
    if all(any(_under(n, p) for p in prefixes) for n in names):
        raise ValueError(f"head {prefixes} covers every parameter, which leaves no body: use MAML instead")
    return prefixes

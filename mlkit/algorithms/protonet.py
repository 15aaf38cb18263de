"""Prototypical Networks: a task's classifier is the class means of its embedded support set (Snell et al., 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks, core
from ..tasks import TaskBatch
from .base import MetaLearner


def class_means(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """The mean embedding of each class: embeddings ``[n, dim]``, labels ``[n]`` in ``0..ways-1`` → ``[ways, dim]``."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    return one_hot.T @ embeddings / one_hot.sum(0)[:, None]


def squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """``‖x_i − c_k‖²`` for x ``[n, dim]`` and centres ``[k, dim]`` → ``[n, k]``."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)


class ProtoNet(MetaLearner):
    """Prototypical Networks: the map from a support set to a classifier needs no inner gradient steps.

    ``adapt`` embeds the support set with the encoder and returns each class's mean, the prototype;
    ``predict`` scores an input by minus its squared Euclidean distance to each prototype, which is a linear
    classifier in embedding space with weights 2·c_k and biases −‖c_k‖². ``meta_loss`` is the mean query
    cross-entropy, batched over tasks.

    Args:
        encoder: an ``nn.Module`` mapping ``[n, *in]`` to embeddings ``[n, dim]`` (e.g.
            ``mlkit.models.Conv4(1, ways=None, variant="pool")``: 64-d on 28x28 Omniglot).
        batched: as :class:`mlkit.MAML`.

    Batch norm with batch statistics (mlkit's Conv4) normalises each task's support set and query set as
    separate batches, task by task: no statistic crosses tasks (tested), while within a task the query set
    is normalised as one batch, as in MAML's evaluation protocol. An encoder with running statistics in eval
    mode is not transductive at all. Reference: Snell, Swersky & Zemel, "Prototypical Networks for Few-shot
    Learning", NeurIPS 2017.
    """

    def __init__(self, encoder: nn.Module, batched: bool = True):
        super().__init__(encoder, loss="cross_entropy", batched=batched)

    def extra_repr(self) -> str:
        return "distance=squared Euclidean"

    def embed(self, params: core.Params, x: Tensor) -> Tensor:
        """The encoder's embedding ``[n, dim]`` of ``x: [n, *in]`` under ``params``."""
        return self.functional_forward(params, x).flatten(1)

    def task_prototypes(self, params: core.Params, ways: int, support_x: Tensor, support_y: Tensor,
                        unlabeled_x: Tensor | None = None) -> Tensor:
        """One task's classifier, the prototypes ``[ways, dim]``: the class means of the embedded support set.
        ProtoNet ignores ``unlabeled_x``; :class:`mlkit.SemiProtoNet` refines the means with it."""
        return class_means(self.embed(params, support_x), support_y, ways)

    def task_logits(self, params: core.Params, ways: int, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                    unlabeled_x: Tensor | None = None) -> Tensor:
        """The pure per-task map: logits ``[n_query, ways]`` from one task's support set (no task dim)."""
        prototypes = self.task_prototypes(params, ways, support_x, support_y, unlabeled_x)
        return -squared_distances(self.embed(params, query_x), prototypes)

    def _logits(self, batch: TaskBatch, ways: int, batched: bool) -> Tensor:
        params = self.params()
        tensors = [batch.support_x, batch.support_y, batch.query_x]
        if batch.unlabeled_x is not None:
            tensors.append(batch.unlabeled_x)

        def one(*task: Tensor) -> Tensor:
            return self.task_logits(params, ways, *task)

        if batched and self.vectorize(batch.query_x):
            return self.readable(lambda: torch.func.vmap(one, randomness="different")(*tensors),
                                 lambda: self._logits(batch[0], ways, False),
                                 lambda: self._logits(batch, ways, False))
        return torch.stack([one(*task) for task in zip(*tensors)])

    def check_episodes(self, batch: TaskBatch) -> int:
        """Check the batch and return its number of ways: labels ``0..ways-1``, each in every support set."""
        super().check_batch(batch, targets=False)
        checks.check_targets(batch.support_y, (batch.support_y.shape[1],), True, "support_y")
        ways = int(batch.support_y.max()) + 1
        checks.check_targets(batch.support_y, (ways,), True, "support_y")
        checks.check_targets(batch.query_y, (ways,), True, "query_y")
        present = F.one_hot(batch.support_y, ways).sum(1) > 0
        if not bool(present.all()):
            raise ValueError(f"every task's support set needs at least one example of each of its {ways} classes "
                             "(labels 0..ways-1), or a prototype is undefined")
        return ways

    def meta_loss(self, batch: TaskBatch, steps: int | None = None, batched: bool | None = None) -> Tensor:
        """Mean query cross-entropy of every task's prototype classifier. ``steps`` must be None or 0 (no inner loop).

        Args:
            batch: support ``[tasks, ways*shots, *in]`` with labels ``0..ways-1``, query ``[tasks, n_query, *in]``.
        Returns:
            A scalar, differentiable with respect to the encoder's parameters.
        """
        _no_steps(steps)
        ways = self.check_episodes(batch)
        self.record_example_shape(batch)
        logits = self._logits(batch, ways, self.batched if batched is None else batched)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None, inner_lr: float | None = None,
              differentiable: bool = True, unlabeled_x: Tensor | None = None) -> dict[str, Tensor]:
        """The task → classifier map: ``{"prototypes": [ways, dim]}``, the class means of the embedded support set.

        Args:
            support_x: ``[n, *in]``; support_y: ``[n]`` labels ``0..ways-1``, every class present.
            unlabeled_x: ``[m, *in]``, the task's unlabelled inputs (used by :class:`mlkit.SemiProtoNet`).
        """
        _no_steps(steps)
        if inner_lr is not None:
            raise ValueError("ProtoNet has no inner learning rate: its map from support set to classifier is the class means")
        self.check_task(support_x)
        checks.check_examples(support_x, support_y, "support")
        if unlabeled_x is not None:
            self.check_task(unlabeled_x, name="unlabeled")
        checks.check_targets(support_y[None], (support_y.shape[0],), True, "support_y")
        ways = int(support_y.max()) + 1
        checks.check_targets(support_y[None], (ways,), True, "support_y")
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            return {"prototypes": self.task_prototypes(self.params(), ways, support_x, support_y, unlabeled_x)}

    def predict(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits ``[n, ways]``: minus the squared Euclidean distance of each embedded ``x: [n, *in]`` to each prototype."""
        if not isinstance(params, dict) or "prototypes" not in params:
            raise ValueError("params must be the dict ProtoNet.adapt returned, {'prototypes': [ways, dim]}")
        self.check_task(x, name="query")
        return -squared_distances(self.embed(self.params(), x), params["prototypes"])

    def query_predictions(self, batch: TaskBatch, steps: int | None = None, inner_lr: float | None = None) -> Tensor:
        """Query logits ``[tasks, n_query, ways]`` (no graph kept)."""
        _no_steps(steps)
        ways = self.check_episodes(batch)
        with torch.no_grad():
            return self._logits(batch, ways, self.batched)


def _no_steps(steps: int | None) -> None:
    if steps not in (None, 0) or isinstance(steps, bool):
        raise ValueError(f"ProtoNet takes no inner steps (its adaptation is a class mean), got steps={steps!r}")

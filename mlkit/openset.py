"""Out-of-scope detection for few-shot classifiers: rejection scores, AUROC, and a threshold fixed on validation.

A few-shot classifier always answers with one of its ``ways`` classes. An assistant must also say "I can't do
that" to a query that belongs to none of them. Each query gets a *rejection score*, higher meaning more likely
out of scope: the distance to the nearest prototype for Prototypical Networks, one minus the largest softmax
probability for MAML and fine-tuned classifiers (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples", ICLR 2017). The protocol of in-scope accuracy at a threshold and out-of-scope
recall is that of Larson et al., EMNLP 2019 (CLINC150).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .algorithms.base import MetaLearner
from .algorithms.protonet import ProtoNet
from .tasks import TaskBatch

SCORES = ("distance", "softmax")


def rejection_scores(logits: Tensor, kind: str) -> Tensor:
    """How out of scope each query looks, from its logits.

    Args:
        logits: ``[..., ways]``; for ``"distance"``, minus squared distances to the prototypes (ProtoNet's logits).
        kind: ``"distance"``: the squared distance to the nearest prototype, ``-max(logits)``; ``"softmax"``:
            ``1 - max softmax(logits)``.
    Returns:
        ``[...]``, higher = more likely out of scope.
    """
    if kind not in SCORES:
        raise ValueError(f"kind must be one of {SCORES}, got {kind!r}")
    if not isinstance(logits, Tensor) or logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be a tensor [..., ways], got {getattr(logits, 'shape', type(logits).__name__)}")
    if kind == "distance":
        return -logits.max(-1).values
    return 1 - logits.softmax(-1).max(-1).values


def default_kind(algorithm: MetaLearner) -> str:
    """``"distance"`` for Prototypical Networks (and their variants), ``"softmax"`` for every other classifier."""
    return "distance" if isinstance(algorithm, ProtoNet) else "softmax"


@torch.no_grad()
def open_set_logits(algorithm: MetaLearner, batch: TaskBatch, outliers_x: Tensor, steps: int | None = None,
                    inner_lr: float | None = None) -> tuple[Tensor, Tensor]:
    """Adapt to every task's support set, then classify its queries and its out-of-scope inputs.

    Args:
        algorithm: a classification algorithm (ProtoNet, MAML, ...), in the mode it should predict in.
        batch: support ``[tasks, n_support, *in]`` and queries ``[tasks, n_query, *in]``.
        outliers_x: ``[tasks, m, *in]``, inputs of no class of the task.
        steps, inner_lr: as :meth:`MAML.query_predictions` (ProtoNet takes neither).
    Returns:
        ``(query_logits [tasks, n_query, ways], outlier_logits [tasks, m, ways])``. Adaptation sees only the
        support set, so the two are what the classifier would say on each input alone (up to batch statistics
        of models that use them).
    """
    if not isinstance(batch, TaskBatch):
        raise ValueError(f"batch must be a mlkit.tasks.TaskBatch, got {type(batch).__name__}")
    if (not isinstance(outliers_x, Tensor) or outliers_x.dim() != batch.query_x.dim()
            or outliers_x.shape[0] != batch.tasks or outliers_x.shape[2:] != batch.query_x.shape[2:]):
        raise ValueError(f"outliers_x must be [tasks, m, *in] = [{batch.tasks}, m, "
                         f"{', '.join(map(str, batch.query_x.shape[2:]))}], got "
                         f"{list(outliers_x.shape) if isinstance(outliers_x, Tensor) else type(outliers_x).__name__}")
    if not algorithm.classification:
        raise ValueError("out-of-scope detection needs a classification algorithm (a cross-entropy loss)")
    n = batch.query_x.shape[1]
    filler = torch.zeros(outliers_x.shape[:2], dtype=batch.query_y.dtype, device=batch.query_y.device)
    joined = TaskBatch(batch.support_x, batch.support_y, torch.cat([batch.query_x, outliers_x.to(batch.query_x)], 1),
                       torch.cat([batch.query_y, filler], 1), batch.info)
    with algorithm.evaluating():
        if isinstance(algorithm, ProtoNet):
            logits = algorithm.query_predictions(joined)
        else:
            logits = algorithm.query_predictions(joined, steps, inner_lr)
    return logits[:, :n], logits[:, n:]


def auroc(scores: Tensor, positive: Tensor) -> Tensor:
    """Area under the ROC curve: the probability that a random positive scores above a random negative, ties
    counting one half (the Mann-Whitney statistic).

    Args:
        scores: ``[..., n]`` real scores (higher = more likely positive, e.g. out of scope).
        positive: ``[..., n]`` bool, with at least one positive and one negative in every row.
    Returns:
        ``[...]`` float64 AUROC per row (a 0-dim tensor for one row); equals
        ``sklearn.metrics.roc_auc_score(positive, scores)``.
    """
    if not isinstance(scores, Tensor) or not isinstance(positive, Tensor):
        raise ValueError("scores and positive must be tensors")
    if scores.shape != positive.shape or scores.dim() < 1:
        raise ValueError(f"scores and positive must have the same shape [..., n], got {list(scores.shape)} and "
                         f"{list(positive.shape)}")
    if positive.dtype != torch.bool:
        raise ValueError(f"positive must be a bool tensor, got {positive.dtype}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    pos, neg = positive.sum(-1), (~positive).sum(-1)
    if bool((pos == 0).any() or (neg == 0).any()):
        raise ValueError("every row needs at least one positive and one negative for an AUROC")
    s = scores.double().contiguous()
    # Average ranks (1-based), ties sharing the mean of their ranks: below + (equal + 1) / 2.
    ordered = s.sort(-1).values
    below = torch.searchsorted(ordered, s, right=False).double()
    at_or_below = torch.searchsorted(ordered, s, right=True).double()
    ranks = (below + at_or_below + 1) / 2
    rank_sum = (ranks * positive).sum(-1)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def roc_curve(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """The ROC curve of one set of scores: false and true positive rates at every threshold, from (0, 0) to (1, 1).

    Args:
        scores: ``[n]``; positive: ``[n]`` bool, both classes present.
    Returns:
        ``(fpr, tpr)``, each ``[k]`` float64, non-decreasing, where k - 1 is the number of distinct scores.
    """
    if not isinstance(scores, Tensor) or not isinstance(positive, Tensor) or scores.dim() != 1 \
            or scores.shape != positive.shape or positive.dtype != torch.bool:
        raise ValueError("roc_curve needs scores [n] and positive [n] (bool) of the same length")
    if not bool(positive.any()) or bool(positive.all()):
        raise ValueError("roc_curve needs at least one positive and one negative")
    values, inverse = torch.unique(scores.double(), return_inverse=True)
    pos = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, positive.double())
    neg = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, (~positive).double())
    # Thresholds from the highest score down: everything at or above the threshold is called positive.
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), pos.flip(0).cumsum(0) / pos.sum()])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), neg.flip(0).cumsum(0) / neg.sum()])
    return fpr, tpr


def fit_threshold(in_scores: Tensor, in_correct: Tensor, out_scores: Tensor) -> float:
    """The rejection threshold that maximises the mean of in-scope accuracy and out-of-scope recall on
    validation data (queries scoring at or above it are rejected).

    Args:
        in_scores: ``[n]`` rejection scores of in-scope queries; in_correct: ``[n]`` bool, whether the classifier
            got each right; out_scores: ``[m]`` rejection scores of out-of-scope queries.
    Returns:
        The threshold, a float (halfway between two neighbouring scores, or past the extremes).
    """
    for name, t in (("in_scores", in_scores), ("in_correct", in_correct), ("out_scores", out_scores)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor")
    if in_correct.shape != in_scores.shape or in_correct.dtype != torch.bool:
        raise ValueError("in_correct must be a bool tensor shaped like in_scores")
    values = torch.unique(torch.cat([in_scores, out_scores]).double())
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    # Accepted and right: correct in-scope scores below the candidate; rejected: out-of-scope scores at or above it.
    right = in_scores.double()[in_correct].sort().values
    accuracy = torch.searchsorted(right, candidates, right=False).double() / in_scores.numel()
    out = out_scores.double().sort().values
    recall = 1 - torch.searchsorted(out, candidates, right=False).double() / out.numel()
    return float(candidates[torch.argmax(accuracy + recall)])


def accuracy_at(in_scores: Tensor, in_correct: Tensor, out_scores: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """In-scope accuracy (accepted and right) and out-of-scope recall (rejected) at ``threshold``, per row.

    Args:
        in_scores, in_correct: ``[..., n]``; out_scores: ``[..., m]``; threshold: from :func:`fit_threshold`.
    Returns:
        ``(in_scope_accuracy [...], out_of_scope_recall [...])`` as fractions, float64.
    """
    if in_scores.shape != in_correct.shape or in_correct.dtype != torch.bool:
        raise ValueError("in_correct must be a bool tensor shaped like in_scores")
    accuracy = ((in_scores.double() < threshold) & in_correct).double().mean(-1)
    return accuracy, (out_scores.double() >= threshold).double().mean(-1)

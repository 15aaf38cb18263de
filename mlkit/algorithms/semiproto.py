"""Semi-supervised Prototypical Networks: prototypes refined with a task's unlabelled images (Ren et al., 2018)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks, core
from ..tasks import TaskBatch
from .protonet import ProtoNet, class_means, squared_distances

REFINEMENTS = ("soft_kmeans", "soft_kmeans_cluster", "masked_soft_kmeans")


class SemiProtoNet(ProtoNet):
    """Prototypical Networks whose prototypes take one soft k-means step with the task's unlabelled images.

    With support embeddings h_i (labels y_i), unlabelled embeddings h̃_j and class means p_c, the refined
    prototype is p̃_c = (Σ_i [y_i = c] h_i + Σ_j w_jc h̃_j) / (Σ_i [y_i = c] + Σ_j w_jc), and queries are
    scored by −‖h(x) − p̃_c‖² as in :class:`mlkit.ProtoNet`. The weights w_jc depend on ``refinement``:

    - ``"soft_kmeans"``: w_jc = softmax_c(−‖h̃_j − p_c‖²).
    - ``"soft_kmeans_cluster"``: an extra distractor cluster at the origin with a learned length scale r
      competes in the softmax with logit −‖h̃_j‖²/r² − log r (the classes have r = 1), and only the task
      classes' shares are used.
    - ``"masked_soft_kmeans"``: w_jc = softmax_c(−d_jc) · σ(−γ_c(d̃_jc − β_c)), with d̃_jc = d_jc / mean_j d_jc
      the normalised squared distances; a small MLP maps each class's (min, max, variance, skewness, excess
      kurtosis) of d̃_·c to a soft threshold β_c and a slope γ_c (both positive, through exp).

    Args:
        encoder: as :class:`mlkit.ProtoNet`; the unlabelled images are embedded as their own batch, so batch
            norm with batch statistics never mixes them with the support or query set.
        refinement: one of ``"soft_kmeans"``, ``"soft_kmeans_cluster"``, ``"masked_soft_kmeans"``.
        init_radius: the distractor cluster's starting length scale (``"soft_kmeans_cluster"`` only).
        batched: as :class:`mlkit.MAML`.

    Tasks come from ``mlkit.tasks.FewShot(..., unlabeled=M, distractors=H)``: ``batch.unlabeled_x`` is
    ``[tasks, m, *in]``. With no unlabelled images (``None`` or m = 0) every variant is ProtoNet exactly.
    The distance statistics enter the MLP without gradient, as in the authors' code. Reference: Ren,
    Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle & Zemel, "Meta-Learning for Semi-Supervised
    Few-Shot Classification", ICLR 2018.
    """

    def __init__(self, encoder: nn.Module, refinement: str = "soft_kmeans", init_radius: float = 1.0,
                 batched: bool = True):
        if refinement not in REFINEMENTS:
            raise ValueError(f"unknown refinement {refinement!r}: use one of {list(REFINEMENTS)}")
        if isinstance(init_radius, bool) or not isinstance(init_radius, (int, float)) or not init_radius > 0:
            raise ValueError(f"init_radius must be a positive length, got {init_radius!r}")
        super().__init__(encoder, batched=batched)
        self.refinement = refinement
        if refinement == "soft_kmeans_cluster":
            self.log_radius = nn.Parameter(torch.tensor(math.log(init_radius)))
        if refinement == "masked_soft_kmeans":
            self.mask_mlp = nn.Sequential(nn.Linear(5, 20), nn.Tanh(), nn.Linear(20, 2))
            for layer in self.mask_mlp[::2]:
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def settings(self) -> dict:
        return {"refinement": self.refinement}

    def extra_repr(self) -> str:
        return f"refinement={self.refinement}, distance=squared Euclidean"

    def task_prototypes(self, params: core.Params, ways: int, support_x: Tensor, support_y: Tensor,
                        unlabeled_x: Tensor | None = None) -> Tensor:
        """One task's refined prototypes ``[ways, dim]`` from support ``[n, *in]``, ``[n]`` and ``unlabeled_x [m, *in]``."""
        support = self.embed(params, support_x)
        prototypes = class_means(support, support_y, ways)
        if unlabeled_x is None or unlabeled_x.shape[0] == 0:
            return prototypes
        unlabeled = self.embed(params, unlabeled_x)
        distances = squared_distances(unlabeled, prototypes)                                   # [m, ways]
        if self.refinement == "soft_kmeans":
            weights = torch.softmax(-distances, 1)
        elif self.refinement == "soft_kmeans_cluster":
            # ½·log 2π, common to every cluster, cancels in the softmax.
            distractor = -(unlabeled * unlabeled).sum(1) * torch.exp(-2 * self.log_radius) - self.log_radius
            weights = torch.softmax(torch.cat([-distances, distractor[:, None]], 1), 1)[:, :ways]
        else:
            weights = torch.softmax(-distances, 1) * self.masks(distances)
        one_hot = F.one_hot(support_y, ways).to(support.dtype)
        return (one_hot.T @ support + weights.T @ unlabeled) / (one_hot.sum(0) + weights.sum(0))[:, None]

    def masks(self, distances: Tensor) -> Tensor:
        """The soft masks ``[m, ways]`` of masked soft k-means from squared distances ``[m, ways]``."""
        normalised = distances / _nonzero(distances.mean(0))
        mean = normalised.mean(0)
        variance = _nonzero(normalised.var(0, unbiased=False))
        centred = normalised - mean
        skewness = (centred ** 3).mean(0) / variance ** 1.5
        kurtosis = (centred ** 4).mean(0) / variance ** 2 - 3
        statistics = torch.stack([normalised.min(0).values, normalised.max(0).values, variance, skewness, kurtosis], 1)
        threshold, slope = torch.exp(self.mask_mlp(statistics.detach())).unbind(1)            # [ways] each
        return torch.sigmoid(-slope * (normalised - threshold))

    def check_batch(self, batch: TaskBatch, targets: bool = True) -> int:
        ways = super().check_batch(batch, targets)
        if batch.unlabeled_x is not None:
            checks.check_device(batch.unlabeled_x, self.device, "unlabeled_x")
        return ways


def _nonzero(x: Tensor) -> Tensor:
    """``x`` with exact zeros replaced by ones (a zero mean or variance leaves the ratio it divides at zero)."""
    return torch.where(x == 0, torch.ones_like(x), x)

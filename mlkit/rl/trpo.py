"""The pieces of a TRPO step on flat parameter vectors: conjugate gradient and the backtracking line search.

Schulman et al., "Trust Region Policy Optimization", ICML 2015 (Appendix C). The defaults are those of the
MAML reference code and its ports: 10 CG iterations, damping 1e-5, max KL 0.01, 15 backtracks of ratio 0.8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class TRPOSettings:
    """max_kl: the trust region δ; cg_iters, cg_damping: the solver of F x = g (F + damping·I);
    ls_steps, ls_ratio: backtracking (the step is scaled by ratio^k, k = 0..ls_steps-1);
    fisher_tasks: estimate F on the first this many tasks of the meta-batch (they are i.i.d.), as rllab's
    ``subsample_factor`` does with samples, to cut the cost of the CG iterations; None uses every task. The
    gradient and the line search's KL check always use every task."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_steps: int = 15
    ls_ratio: float = 0.8
    fisher_tasks: int | None = None

    def __post_init__(self):
        for name in ("max_kl", "cg_damping"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.max_kl > 0:
            raise ValueError(f"max_kl must be positive, got {self.max_kl!r}")
        for name in ("cg_iters", "ls_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.ls_ratio < 1:
            raise ValueError(f"ls_ratio must lie in (0, 1), got {self.ls_ratio!r}")
        tasks = self.fisher_tasks
        if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1):
            raise ValueError(f"fisher_tasks must be None or a positive integer, got {self.fisher_tasks!r}")


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10,
                       tolerance: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive definite ``A`` given as ``matvec``.

    b: ``[P]``. Returns ``x [P]`` after at most ``iterations`` steps (fewer once ``‖r‖² < tolerance``).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr.item() < tolerance:
            break
        ap = matvec(p)
        step = rr / (p @ ap)
        x = x + step * p
        r = r - step * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def line_search(evaluate: Callable[[Tensor], tuple[float, float]], start: Tensor, full_step: Tensor,
                objective_before: float, settings: TRPOSettings) -> tuple[Tensor, int]:
    """Backtrack from ``start + full_step`` until the objective improves and the KL stays within max_kl.

    Args:
        evaluate: ``flat params -> (objective to maximise, mean KL from the old policy)``.
        start, full_step: ``[P]``. objective_before: the objective at ``start``.
    Returns:
        ``(accepted params, backtracks)``; ``(start, -1)`` when no step was accepted (the policy is kept).
    """
    scale = 1.0
    for k in range(settings.ls_steps):
        candidate = start + scale * full_step
        objective, kl = evaluate(candidate)
        if objective > objective_before and kl <= settings.max_kl:
            return candidate, k
        scale *= settings.ls_ratio
    return start, -1

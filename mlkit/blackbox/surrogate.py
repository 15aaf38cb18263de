"""A cheap Gaussian-process surrogate whose suggestion the learned optimiser reads as one of its inputs.

After every observation, each run fits a zero-mean RBF Gaussian process to the values it has seen (as the
network reads them: standardised and clipped), with one length scale for all dimensions chosen from a
fixed grid by the marginal likelihood, and no other fitting. Among candidate points (half uniform on the
box, half Gaussian around the best point in logit space) it picks the one of lowest lower confidence bound
``mean - kappa * sd``. The network reads that point and the posterior mean and standard deviation there;
its untrained form (``start="model"`` in :func:`mlkit.blackbox.rnn.init_params`) queries it directly.

This is Bayesian optimisation stripped to what costs little: no hyperparameter optimisation (a grid of five
Cholesky factorisations instead) and no acquisition optimisation (a few hundred random candidates instead),
so a suggestion costs about a millisecond after 100 queries (the surrogate of GP-based BO, e.g. Snoek et
al. 2012, with the confidence bound of Srinivas et al. 2010). Everything here is batched over runs and runs
without gradients: the network's weights get theirs through what it does with the suggestion.
"""
from __future__ import annotations

import torch
from torch import Tensor

LENGTHSCALES = (0.05, 0.1, 0.2, 0.4, 0.8)  # on the unit box; each half the next, see suggest
KAPPA = 1.0
CANDIDATES = 256
LOCAL_SCALE = 0.5  # sd (logit units) of the candidates around the best point
JITTER = 1e-4
CHUNK = 128  # runs per batch of factorisations: bounds the memory of many long runs


def candidates(best_x: Tensor, mask: Tensor, draws: Tensor) -> Tensor:
    """Candidate points ``[B, C, D]`` from uniform ``draws [B, C, D]``: the first half as they are, the second
    half turned into Gaussian steps of sd :data:`LOCAL_SCALE` (logit units) around ``best_x [B, D]``."""
    half = draws.shape[1] // 2
    normal = torch.special.ndtri(draws[:, half:].clamp(1e-6, 1 - 1e-6))
    logits = torch.logit(best_x.clamp(0.005, 0.995))[:, None, :]
    local = torch.sigmoid(logits + LOCAL_SCALE * normal)
    return torch.cat([draws[:, :half], local], 1) * mask[:, None, :]


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``[B, n, m]`` squared distances between the rows of ``a [B, n, D]`` and ``b [B, m, D]`` (one matmul)."""
    return (a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)).clamp(min=0)


@torch.no_grad()
def suggest(xs: Tensor, zs: Tensor, points: Tensor, kappa: float = KAPPA) -> tuple[Tensor, Tensor, Tensor]:
    """The lowest-confidence-bound candidate of each run under its GP posterior.

    Args:
        xs: ``[B, n, D]`` the queries so far (unit box, zero in unused slots), n >= 1.
        zs: ``[B, n]`` their values, standardised (finite).
        points: ``[B, C, D]`` the candidates (e.g. from :func:`candidates`).
        kappa: weight of the posterior standard deviation in the bound.

    Each run takes the isotropic length scale of :data:`LENGTHSCALES` with the highest marginal likelihood.
    Runs are processed :data:`CHUNK` at a time.

    Returns:
        ``(x [B, D], mean [B], sd [B])``: the chosen candidate and the posterior mean and standard deviation of
        the value there, in the units of ``zs``. Computed in float64, returned in ``zs``'s dtype.
    """
    if xs.shape[0] > CHUNK:
        parts = [suggest(xs[i:i + CHUNK], zs[i:i + CHUNK], points[i:i + CHUNK], kappa) for i in range(0, xs.shape[0], CHUNK)]
        return tuple(torch.cat(p) for p in zip(*parts))
    dtype = zs.dtype
    xs, zs, points = xs.double(), zs.double(), points.double()
    n, grid = xs.shape[1], len(LENGTHSCALES)
    scales = torch.tensor(LENGTHSCALES, dtype=torch.float64)
    # exp(-d^2 / 2 l^2) at the longest scale; halving l raises the kernel to the 4th power: two squarings, no exp
    kernels = [torch.exp(-0.5 * _squared_distances(xs, xs) / LENGTHSCALES[-1] ** 2)]
    for _ in range(grid - 1):
        kernels.insert(0, kernels[0].square().square())
    kernel = torch.stack(kernels, 1)  # [B, G, n, n]
    kernel.diagonal(dim1=-2, dim2=-1).add_(JITTER)
    chol, info = torch.linalg.cholesky_ex(kernel)
    failed = info != 0
    if failed.any():  # not positive definite in float64 (exact duplicates at a long length scale): never chosen
        chol = torch.where(failed[..., None, None], torch.eye(n, dtype=torch.float64), chol)
    alpha = torch.cholesky_solve(zs[:, None, :, None].expand(-1, grid, -1, -1), chol)  # [B, G, n, 1]
    log_likelihood = -0.5 * (zs[:, None, :] * alpha[..., 0]).sum(-1) - torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    log_likelihood = log_likelihood.masked_fill(failed, -torch.inf)
    pick = log_likelihood.argmax(1)  # [B]
    rows = torch.arange(xs.shape[0])
    chol, alpha, scale = chol[rows, pick], alpha[rows, pick], scales[pick]  # [B, n, n], [B, n, 1], [B]
    cross = torch.exp(-0.5 * _squared_distances(points, xs) / scale[:, None, None].pow(2))  # [B, C, n]
    mean = (cross @ alpha)[..., 0]
    solved = torch.linalg.solve_triangular(chol, cross.transpose(1, 2), upper=False)  # [B, n, C]
    sd = (1 - solved.pow(2).sum(1)).clamp(min=1e-12).sqrt()
    best = (mean - kappa * sd).argmin(1)
    return points[rows, best].to(dtype), mean[rows, best].to(dtype), sd[rows, best].to(dtype)

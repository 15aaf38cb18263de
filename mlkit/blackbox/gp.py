"""Batched functions drawn from a Gaussian-process prior, by random Fourier features.

The training tasks of the learned optimiser (Chen et al., 2017) are functions on the unit box ``[0, 1]^d``
drawn from a zero-mean GP with an RBF kernel of unit variance and one length scale per dimension. We draw
them with random Fourier features (Rahimi & Recht, 2007)::

    f(x) = sqrt(2 / M) * sum_m w_m cos(<omega_m / l, x> + b_m),   w_m ~ N(0, 1), omega_m ~ N(0, I), b_m ~ U[0, 2 pi)

Why features and not exact sampling on a grid: an optimiser queries anywhere, in up to six dimensions, and
meta-training differentiates ``f`` at the queries; a feature sample is a closed-form, differentiable
function that costs ``O(M d)`` per query. What is exact: the covariance ``E[f(x) f(x')]`` equals the RBF
kernel for every number of features ``M``, and given its frequencies and phases a sample is an exact GP
draw under the random kernel ``k_M`` whose expectation is the RBF kernel. What is approximate: the joint law
over frequencies is a Gaussian scale mixture that tends to the RBF GP as ``M`` grows (``M = 512`` here).

Functions of different dimension share one batch: every sample has ``max_dim`` input slots, and the
frequencies of the slots beyond its own dimension are zero, so those inputs do not change its value.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class GPSample(NamedTuple):
    """A batch of functions drawn from the GP prior.

    Fields: ``frequencies [B, M, D]`` (omega / l, zero in unused slots), ``phases [B, M]``, ``weights [B, M]``,
    ``lengthscales [B, D]`` (inf in unused slots), ``dims [B]`` (each function's dimension, ``1 <= d <= D``).
    """

    frequencies: Tensor
    phases: Tensor
    weights: Tensor
    lengthscales: Tensor
    dims: Tensor

    @property
    def mask(self) -> Tensor:
        """``[B, D]``: 1 in the slots a function uses, 0 in the others."""
        return dim_mask(self.dims, self.lengthscales.shape[-1], self.weights.dtype)


def dim_mask(dims: Tensor, max_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, max_dim]`` mask with ``dims[b]`` leading ones in row ``b``."""
    return (torch.arange(max_dim, device=dims.device) < dims[:, None]).to(dtype)


def sample_gp(batch: int, dims: Tensor | int, max_dim: int = 6, features: int = 512,
              lengthscale_range: tuple[float, float] = (0.1, 1.0), generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32) -> GPSample:
    """Draw ``batch`` functions on ``[0, 1]^d`` from a zero-mean, unit-variance RBF GP prior.

    Args:
        batch: number of functions B.
        dims: one dimension for all, or ``[B]`` integers in ``1..max_dim``.
        max_dim: input slots D shared by the batch.
        features: random Fourier features M per function.
        lengthscale_range: each used dimension's length scale is drawn log-uniformly from this range.
        generator: the random stream (seed it for reproducible tasks).

    Returns:
        A :class:`GPSample`; evaluate it with :func:`gp_values`.
    """
    if isinstance(dims, int):
        dims = torch.full((batch,), dims, dtype=torch.long)
    if dims.shape != (batch,) or int(dims.min()) < 1 or int(dims.max()) > max_dim:
        raise ValueError(f"dims must be an int or a [{batch}] tensor with values in 1..{max_dim}, got {dims!r}")
    low, high = lengthscale_range
    if not 0 < low <= high:
        raise ValueError(f"lengthscale_range must be (low, high) with 0 < low <= high, got {lengthscale_range!r}")
    mask = dim_mask(dims, max_dim, dtype)
    log_l = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(batch, max_dim, generator=generator, dtype=dtype)
    lengthscales = torch.where(mask > 0, log_l.exp(), torch.full_like(log_l, math.inf))
    omega = torch.randn(batch, features, max_dim, generator=generator, dtype=dtype)
    frequencies = omega / lengthscales[:, None, :]  # 1 / inf = 0 in the unused slots
    phases = 2 * math.pi * torch.rand(batch, features, generator=generator, dtype=dtype)
    weights = torch.randn(batch, features, generator=generator, dtype=dtype)
    return GPSample(frequencies, phases, weights, lengthscales, dims)


def gp_values(sample: GPSample, x: Tensor) -> Tensor:
    """Evaluate every function of ``sample`` at its own points.

    Args:
        x: ``[B, D]`` (one point per function) or ``[B, n, D]``.

    Returns:
        ``[B]`` or ``[B, n]``; differentiable with respect to ``x``.
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, None, :]
    angles = torch.einsum("bnd,bmd->bnm", x, sample.frequencies) + sample.phases[:, None, :]
    values = math.sqrt(2.0 / sample.weights.shape[-1]) * torch.einsum("bnm,bm->bn", torch.cos(angles), sample.weights)
    return values[:, 0] if squeeze else values


def select(sample: GPSample, index) -> GPSample:
    """The functions ``index`` of a batch (an int keeps a batch of one)."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return GPSample(*(field[index] for field in sample))


def rbf_kernel(x1: Tensor, x2: Tensor, lengthscales: Tensor) -> Tensor:
    """The RBF kernel the features approximate: ``exp(-|(x1 - x2) / l|^2 / 2)``.

    Args:
        x1: ``[B, n, D]``; x2: ``[B, m, D]``; lengthscales: ``[B, D]`` (inf slots contribute nothing).

    Returns:
        ``[B, n, m]``.
    """
    a = x1 / lengthscales[:, None, :]  # x / inf = 0: unused slots drop out
    b = x2 / lengthscales[:, None, :]
    sq = (a[:, :, None, :] - b[:, None, :, :]).pow(2).sum(-1)
    return torch.exp(-0.5 * sq)


def estimate_minimum(sample: GPSample, starts: int = 256, steps: int = 200, lr: float = 0.02,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Each function's minimum on its unit box, by projected Adam from ``starts`` random points.

    The sample is differentiable, so this uses gradients the optimisers being compared never see; it gives
    the reference for regret. Returns ``(values [B], points [B, D])``: an upper bound on the true minimum.
    """
    batch, max_dim = sample.lengthscales.shape
    mask = sample.mask
    x = (torch.rand(batch, starts, max_dim, generator=generator, dtype=sample.weights.dtype) * mask[:, None, :])
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        gp_values(sample, x).sum().backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0).mul_(mask[:, None, :])
    with torch.no_grad():
        values = gp_values(sample, x)
        best = values.argmin(1)
        rows = torch.arange(batch)
        return values[rows, best], x[rows, best].detach()


HELDOUT_SEED = 2017


def heldout_functions(count: int = 256, max_dim: int = 6, features: int = 512, seed: int = HELDOUT_SEED,
                      lengthscale_range: tuple[float, float] = (0.1, 1.0), dtype: torch.dtype = torch.float64) -> GPSample:
    """A fixed test set of GP draws that meta-training never sees: dimensions cycle through ``1..max_dim``.

    Meta-training draws from its own generator (seeded by its config); this set has its own seed, and more
    features (512) than training uses, so it also checks that the optimiser did not fit the feature count.
    """
    dims = torch.arange(count) % max_dim + 1
    return sample_gp(count, dims, max_dim, features, lengthscale_range, torch.Generator().manual_seed(seed), dtype)

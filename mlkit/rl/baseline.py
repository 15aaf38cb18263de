"""Discounted returns, the linear feature baseline of Duan et al. (2016) and normalised advantages.

MAML fits the baseline "separately at each iteration for each sampled task" (Finn et al., 2017, Sec. 5.3).
As in the PyTorch reference ports, it is fitted on the very trajectories whose advantages it then gives.
Everything here is batched over a leading task dimension and is a constant for the policy gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .navigation import Trajectories

OBS_CLIP = 10.0
RIDGE = 1e-5


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = Σ_k γ^k r_{t+k}`` along the last dim (padding rewards must be 0).

    rewards: ``[..., T]``. Returns ``[..., T]``.
    """
    steps = rewards.shape[-1]
    t = torch.arange(steps, dtype=rewards.dtype, device=rewards.device)
    lag = t[None, :] - t[:, None]  # lag[t, k] = k - t
    discount = torch.where(lag >= 0, gamma ** lag.clamp(min=0), torch.zeros_like(lag))
    return rewards @ discount.T


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Duan et al.'s features ``[o, o², t/100, (t/100)², (t/100)³, 1]`` with ``o`` clipped to [-10, 10].

    observations: ``[..., T, d]``; mask: ``[..., T]`` (padding rows become 0). Returns ``[..., T, 2d + 4]``.
    """
    o = observations.clamp(-OBS_CLIP, OBS_CLIP)
    t = torch.arange(o.shape[-2], dtype=o.dtype, device=o.device) / 100.0
    t = t.expand(*o.shape[:-1])[..., None]
    ones = torch.ones_like(t)
    return torch.cat([o, o * o, t, t * t, t * t * t, ones], -1) * mask[..., None]


def fit_linear_baseline(features: Tensor, targets: Tensor, ridge: float = RIDGE) -> Tensor:
    """Ridge least squares ``w = (XᵀX + λI)⁻¹ Xᵀy`` for every task, solved in float64.

    features: ``[tasks, rows, F]``; targets: ``[tasks, rows]`` (all-zero rows drop out). Returns ``[tasks, F]``
    in the features' dtype.
    """
    x, y = features.double(), targets.double()
    gram = x.transpose(-1, -2) @ x
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.solve(gram + ridge * eye, (x.transpose(-1, -2) @ y[..., None]))[..., 0]
    return weights.to(features.dtype)


def advantages(trajectories: Trajectories, gamma: float, normalize: bool = True) -> Tensor:
    """Advantages ``G_t - b(s_t)`` with a per-task linear feature baseline, optionally normalised per task.

    Args:
        trajectories: ``[tasks, n, T, ...]``. gamma: discount (the reference ports use 0.99 on this task).
        normalize: shift and scale each task's advantages to mean 0, std 1 over its real steps, as rllab's
            ``center_adv`` and the PyTorch ports do.
    Returns:
        ``[tasks, n, T]``, zero on padding, detached.
    """
    mask = trajectories.mask
    returns = discounted_returns(trajectories.rewards, gamma)
    features = baseline_features(trajectories.observations, mask)
    tasks, n, steps, width = features.shape
    weights = fit_linear_baseline(features.reshape(tasks, n * steps, width), (returns * mask).reshape(tasks, -1))
    values = (features @ weights[:, None, :, None])[..., 0]
    adv = (returns - values) * mask
    if normalize:
        count = mask.sum((1, 2), keepdim=True)
        mean = adv.sum((1, 2), keepdim=True) / count
        centred = (adv - mean) * mask
        std = torch.sqrt((centred * centred).sum((1, 2), keepdim=True) / count)
        adv = centred / (std + 1e-8)
    return adv.detach()

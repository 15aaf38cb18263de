"""The Gaussian MLP policy of MAML's RL experiments, as a functional model on parameter dicts."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models import MLP

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """A diagonal Gaussian policy: an MLP gives the mean, a learned state-independent vector the log-std.

    MAML's policies have two hidden layers of 100 ReLU units (Finn et al., 2017, Sec. 5.3); the log-std
    starts at ``log(init_std)`` (1.0, as the reference code). Parameters are ``mean.*`` (an
    :class:`mlkit.models.MLP`) and ``log_std``.

    ``action_scale`` multiplies the mean and the standard deviation: the policy acts in units of
    ``action_scale``. The MAML reference code wraps its environments in rllab's ``normalize``, which maps
    actions in [-1, 1] onto the action box, here ``0.1 · a``; ``action_scale=0.1`` is exactly that map (the
    environment's clip to [-0.1, 0.1] then matches the wrapper's clip to [-1, 1]).

    Args:
        obs_dim, action_dim: sizes of observations and actions. hidden: hidden layer widths.
        init_std: initial standard deviation, in units of ``action_scale``. activation: ``"relu"`` or ``"tanh"``.
        action_scale: the unit of the actions.
    """

    def __init__(self, obs_dim: int = 2, action_dim: int = 2, hidden: tuple[int, ...] = (100, 100),
                 init_std: float = 1.0, activation: str = "relu", action_scale: float = 1.0):
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std!r}")
        if not (isinstance(action_scale, (int, float)) and math.isfinite(action_scale) and action_scale > 0):
            raise ValueError(f"action_scale must be a positive number, got {action_scale!r}")
        self.mean = MLP(obs_dim, list(hidden), action_dim, activation=activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.action_scale = float(action_scale)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [..., obs_dim] -> (mean [..., action_dim], log_std [action_dim])`` of the actions."""
        if self.action_scale == 1.0:
            return self.mean(obs), self.log_std
        return self.action_scale * self.mean(obs), self.log_std + math.log(self.action_scale)

    def params(self) -> dict[str, Tensor]:
        """The parameters θ as a dict ``name -> tensor``."""
        return dict(self.named_parameters())

    def functional(self, params: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
        """The policy evaluated with ``params`` (one parameter set, no task dimension) on ``obs [..., obs_dim]``."""
        return torch.func.functional_call(self, params, (obs,))


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of ``actions`` under ``N(mean, diag(exp(log_std)²))``, summed over the last dim."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)


def kl_divergence(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N(mean0, σ0²) ‖ N(mean1, σ1²)) for diagonal Gaussians, summed over the last dim."""
    var_ratio = torch.exp(2 * (log_std0 - log_std1))
    mahalanobis = ((mean0 - mean1) * torch.exp(-log_std1)) ** 2
    return (log_std1 - log_std0 + 0.5 * (var_ratio + mahalanobis) - 0.5).sum(-1)

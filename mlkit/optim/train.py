"""Meta-training of the learned optimiser by truncated backpropagation through the unrolled optimisation.

Andrychowicz et al. (2016) minimise the expected sum of the optimisee's losses along the trajectory,

    L(phi) = E_f [ sum_{t=1}^{T} f(theta_t) ],   theta_{t+1} = theta_t + m_phi(grad f(theta_t), s_t),

by gradient descent on ``phi`` (Adam). The horizon T (100 here) is cut into unrolls of tau = 20 steps: after
each unroll the meta-gradient of its losses updates ``phi``, and the trajectory continues from where it
stopped, with ``theta`` and the LSTM state detached (truncated BPTT). As in the paper the optimisee's
gradients enter the network as data: ``grad f(theta_t)`` is detached, so the second derivatives of ``f``
are dropped, and the meta-gradient reaches ``phi`` only through the ``theta_t`` the updates produced.

A population of optimisees is one batch: the per-problem losses are mapped with ``torch.func.vmap``, one
``autograd.grad`` call gives every problem's gradient, and all coordinates of all problems go through the
LSTM together.

Letters are the paper's: ``theta`` is the optimisee and ``phi`` the optimiser's weights. The book's notation
page writes the same rule the other way round (m_theta updating phi_t), keeping theta for what is
meta-learned; ``TrainConfig.unroll`` is its tau and ``horizon`` its T.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import lstm, optimizees

Rule = Callable[..., tuple[Tensor, object]]


class Rollout(NamedTuple):
    """What :func:`rollout` returns: ``losses [B, steps]`` (``f(theta_t)`` for t = 0..steps-1, before each
    update), the final ``theta [B, d]`` and the rule's final state."""

    losses: Tensor
    theta: Tensor
    state: object


def rollout(params: lstm.Params, family, theta: Tensor, data: dict, steps: int, state=None,
            generator: torch.Generator | None = None, rule: Rule = lstm.step, track: bool = False) -> Rollout:
    """Optimise a population for ``steps`` steps with a learned rule; every coordinate in one call per step.

    Args:
        params: the rule's weights. family: an optimisee family (``loss(theta, data, generator) -> [B]``).
        theta: ``[B, d]`` starting points; data: the problems' data (:class:`optimizees.Optimizees`).
        steps: number of updates. state: the rule's state (``None``: fresh, :func:`lstm.initial_state`).
        generator: draws the minibatches of stochastic problems. rule: ``(params, grad [N], state) ->
            (update [N], state)``, :func:`lstm.step` by default.
        track: keep the graph from ``params`` to the losses (meta-training); otherwise run without it.

    Returns:
        :class:`Rollout`. The gradients fed to the rule are always detached (no second derivatives).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(theta, Tensor) or theta.dim() != 2:
        raise ValueError(f"theta must be [B, d], got {getattr(theta, 'shape', type(theta).__name__)}")
    if state is None:
        state = lstm.initial_state(params, theta.numel())
    losses = []
    for _ in range(steps):
        if not track or not theta.requires_grad:
            theta = theta.detach().requires_grad_()
        with torch.enable_grad():
            loss = family.loss(theta, data, generator)
            grad, = torch.autograd.grad(loss.sum(), theta, retain_graph=track)
        with torch.set_grad_enabled(track):
            update, state = rule(params, grad.reshape(-1), state)
            theta = theta + update.view_as(theta)
        losses.append(loss if track else loss.detach())
    if not track:
        theta = theta.detach()
    return Rollout(torch.stack(losses, 1), theta, state)


def detach_state(state):
    """The same state with every tensor cut from the graph (a tuple or NamedTuple of tensors)."""
    return type(state)(*(s.detach() for s in state))


@dataclass
class TrainConfig:
    """Settings of meta-training; the shipped file records them."""

    family: str = "mlp"
    iterations: int = 300
    population: int = 16
    horizon: int = 100
    unroll: int = 20
    lr: float = 3e-3
    hidden: int = lstm.HIDDEN
    clip: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot train."""
        for name in ("iterations", "population", "horizon", "unroll", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.horizon % self.unroll:
            raise ValueError(f"horizon ({self.horizon}) must be a multiple of unroll ({self.unroll})")
        if not (self.lr > 0 and self.clip > 0):
            raise ValueError(f"lr and clip must be positive, got lr={self.lr!r}, clip={self.clip!r}")


def meta_train(config: TrainConfig, family=None, params: lstm.Params | None = None, progress: bool = False,
               rule: Rule = lstm.step, init_state: Callable | None = None) -> tuple[lstm.Params, dict]:
    """Meta-train a rule on ``config.family`` (or ``family``) by truncated BPTT with Adam.

    Each iteration draws ``population`` fresh optimisees and optimises them for ``horizon`` steps in
    unrolls of ``unroll``; each unroll's mean loss ``f(theta_{s+1}) .. f(theta_{s+K})`` (the trajectory sum,
    averaged over steps and problems) gives one Adam step on the rule's weights (gradient norm clipped at ``clip``). An unroll whose loss is
    not finite is skipped and its trajectory abandoned. Everything random comes from a generator seeded
    with ``config.seed``.

    Args:
        params: starting weights (default: :func:`lstm.init_params` from the seed). rule / init_state: a
            rule other than the LSTM and its ``(params, N) -> state``.

    Returns:
        ``(params, history)``, history ``{"loss": [per unroll], "seconds": float, "skipped": int}``.
    """
    config.check()
    from tqdm.auto import tqdm

    family = optimizees.family(config.family) if family is None else family
    generator = torch.Generator().manual_seed(config.seed)
    if params is None:
        params = lstm.init_params(config.hidden, generator=generator)
    params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    init_state = init_state or lstm.initial_state
    adam = torch.optim.Adam(params.values(), lr=config.lr)
    history = {"loss": [], "seconds": 0.0, "skipped": 0}
    began = time.perf_counter()
    for _ in tqdm(range(config.iterations), disable=not progress, leave=False, desc="meta-training"):
        problems = family.sample(config.population, generator)
        theta, state = problems.theta, init_state(params, problems.theta.numel())
        for _ in range(config.horizon // config.unroll):
            run = rollout(params, family, theta, problems.data, config.unroll, state, generator, rule, track=True)
            # the unroll's losses f(theta_{s+1}) .. f(theta_{s+K}): every one depends on the rule's weights
            end = family.loss(run.theta, problems.data, generator)
            loss = torch.cat([run.losses[:, 1:], end[:, None]], 1).mean()
            if not torch.isfinite(loss):
                history["skipped"] += 1
                break
            adam.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), config.clip)
            adam.step()
            history["loss"].append(loss.item())
            theta, state = run.theta.detach(), detach_state(run.state)
    history["seconds"] = time.perf_counter() - began
    return {n: p.detach() for n, p in params.items()}, history


def config_dict(config: TrainConfig) -> dict:
    """The settings as a plain dict (for the record saved with the weights)."""
    return asdict(config)


def lr_rule(params: dict, grad: Tensor, state):
    """Plain gradient descent with a learned step, ``update = -exp(log_lr) grad``: the simplest learned rule."""
    return -params["log_lr"].exp() * grad, state


def no_state(params: dict, coordinates: int):
    """The empty state of a stateless rule."""
    return ()


def truncated_meta_gradient(params: dict, family, problems: optimizees.Optimizees, horizon: int, unroll: int,
                            generator: torch.Generator | None = None, rule: Rule = lstm.step,
                            init_state: Callable | None = None) -> dict:
    """The meta-gradient that truncated BPTT follows, with the rule's weights held fixed along one horizon.

    The horizon is cut into unrolls of ``unroll`` steps; each unroll's mean loss ``f(theta_{s+1}) ..
    f(theta_{s+K})`` is differentiated with ``theta_s`` and the rule's state treated as constants, and the
    gradients are averaged over the unrolls. With ``unroll == horizon`` this is the full gradient of the
    meta-objective; shorter unrolls ignore how the weights moved ``theta_s``: the truncation bias.

    Args:
        params: the rule's weights (``name -> tensor``). problems: a population from ``family.sample``.
        horizon, unroll: steps in all and per unroll (``horizon % unroll == 0``).

    Returns:
        ``name -> tensor``: the averaged gradient, shaped like ``params``.
    """
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1 or horizon % unroll:
        raise ValueError(f"unroll must be a positive int dividing horizon, got unroll={unroll!r}, horizon={horizon!r}")
    init_state = init_state or lstm.initial_state
    params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    theta, state = problems.theta, init_state(params, problems.theta.numel())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(horizon // unroll):
        run = rollout(params, family, theta, problems.data, unroll, state, generator, rule, track=True)
        end = family.loss(run.theta, problems.data, generator)
        loss = torch.cat([run.losses[:, 1:], end[:, None]], 1).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (n, _), g in zip(params.items(), grads):
            total[n] += g / (horizon // unroll)
        theta, state = run.theta.detach(), detach_state(run.state)
    return total

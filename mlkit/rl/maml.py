"""MAML for policies: a policy-gradient inner step, a TRPO outer step through it (Finn et al., 2017, Sec. 3.2).

The inner step is vanilla policy gradient (REINFORCE with the linear feature baseline) on each task's
trajectories, written as the "Loaded DiCE" surrogate of Farquhar et al. (2019), a form of the DiCE estimator of
Foerster et al. (2018). Its value is zero and its gradient is the ordinary policy gradient, but unlike the usual
surrogate ``mean(log π · A)`` its Hessian is an unbiased estimate of the Hessian of the expected return: it keeps
the ``∇log π ∇log πᵀ A`` terms that the usual surrogate drops (Rothfuss et al., 2019, call that the missing
second-order term). Differentiating the outer objective through the adapted parameters θ' = θ + α·PG therefore
gives the correct meta-gradient of ``J(θ + α∇J_inner(θ))``; ``tests/rl`` checks it against finite differences.

The outer step is TRPO on the adapted policies' fresh trajectories: conjugate gradient on Fisher-vector
products through the inner step, a step scaled to the KL radius, and a backtracking line search. The Fisher
(the Hessian of the mean KL at the old parameters) is exactly ``JᵀMJ``, with J the Jacobian of the adapted
policies' outputs with respect to θ and M the Gaussian KL's curvature in those outputs, so each product costs
two differentiations of the inner step instead of a third derivative.

Every per-task function has a batched path (one autograd call for all tasks' inner gradients, ``vmap`` over the
forward passes) and a per-task loop on :func:`mlkit.core.adapt` (the reference); they agree (tested).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .. import core
from .baseline import advantages
from .navigation import Navigation2D, Trajectories, as_batched, rollout
from .policy import GaussianMLPPolicy, kl_divergence, log_prob
from .trpo import TRPOSettings, conjugate_gradient, line_search

Params = dict[str, Tensor]


def dice_policy_gradient_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """The inner loss: minus the Loaded-DiCE surrogate of the expected return, averaged over real steps.

    ``-Σ_t (□(w_t) - □(w_{t-1})) A_t / #steps`` with ``w_t = Σ_{t'≤t} log π(a_t'|s_t')`` and
    ``□(w) = exp(w - stop_gradient(w))`` (Foerster et al., 2018; Farquhar et al., 2019). Its value is 0, its
    gradient is minus the REINFORCE estimate ``Σ ∇log π_t A_t / #steps`` and its Hessian keeps the
    score-function products, so a gradient step on it is differentiable the right way.

    Args:
        log_probs: ``[n, T]`` (or any ``[..., T]``); advantages: same shape, constants; mask: 1 on real steps.
    Returns:
        A scalar.
    """
    w = torch.cumsum(log_probs * mask, -1)
    box = torch.exp(w - w.detach())
    box_before = torch.cat([torch.ones_like(box[..., :1]), box[..., :-1]], -1)
    return -((box - box_before) * advantages * mask).sum() / mask.sum()


def pack(trajectories: Trajectories, adv: Tensor) -> tuple[Tensor, Tensor]:
    """The inner step's data in :func:`mlkit.core.adapt`'s ``(support_x, support_y)`` form:
    ``x = [observation, action]`` ``[tasks, n, T, obs+act]`` and ``y = [advantage, mask]`` ``[tasks, n, T, 2]``."""
    return (torch.cat([trajectories.observations, trajectories.actions], -1),
            torch.stack([adv, trajectories.mask], -1))


class _InnerProblem:
    """The inner policy-gradient step as a supervised-style problem for :func:`mlkit.core.adapt`."""

    def __init__(self, policy: GaussianMLPPolicy):
        self.policy = policy
        self.obs_dim = policy.mean[0].in_features

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Log-probabilities ``[n, T]`` of the packed actions under ``params`` (one task)."""
        mean, log_std = self.policy.functional(params, x[..., :self.obs_dim])
        return log_prob(mean, log_std, x[..., self.obs_dim:])

    @staticmethod
    def loss(log_probs: Tensor, y: Tensor) -> Tensor:
        return dice_policy_gradient_loss(log_probs, y[..., 0], y[..., 1])


def adapt_tasks(policy: GaussianMLPPolicy, params: Params, x: Tensor, y: Tensor, lr: float,
                create_graph: bool) -> Params:
    """One policy-gradient step for every task at once: ``θ'_i = θ_i - lr ∇L_i(θ_i)``.

    Args:
        params: ``name -> [tasks, *shape]``, each task's parameters. x, y: from :func:`pack`.
        create_graph: keep the graph of the step (for meta-gradients); otherwise the result is detached.
    Returns:
        ``name -> [tasks, *shape]``.
    """
    problem = _InnerProblem(policy)
    with torch.enable_grad():
        leaves = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
        log_probs = torch.func.vmap(problem.forward)(leaves, x)
        losses = torch.func.vmap(problem.loss)(log_probs, y)
        # tasks are independent, so the gradient of the summed losses is each task's own gradient
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()), create_graph=create_graph)
    adapted = {name: p - lr * g for (name, p), g in zip(leaves.items(), grads)}
    return adapted if create_graph else {name: p.detach() for name, p in adapted.items()}


def per_task_act(policy: GaussianMLPPolicy, params: Params):
    """An ``act`` for :func:`rollout` with parameters ``name -> [tasks, *shape]`` (one set per task)."""
    forward = torch.func.vmap(policy.functional)

    def act(obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = forward(params, obs)
        return mean, log_std[:, None, :]
    return act


def shared_act(policy: GaussianMLPPolicy, params: Params):
    """An ``act`` for :func:`rollout` with one parameter set for all tasks."""
    return functools.partial(policy.functional, params)


@dataclass
class MetaBatch:
    """One meta-iteration's data: each task's inner trajectories (under θ) and outer trajectories (under θ'_i).

    Shapes: goals ``[tasks, 2]``; inner_x, inner_y as :func:`pack` (None without an inner step); outer
    ``[tasks, n, T, ...]`` with advantages ``outer_adv [tasks, n, T]``; returns ``[tasks, n]``.
    """

    goals: Tensor
    inner_x: Tensor | None
    inner_y: Tensor | None
    outer: Trajectories
    outer_adv: Tensor
    inner_returns: Tensor | None
    outer_returns: Tensor

    def head(self, tasks: int) -> "MetaBatch":
        """The first ``tasks`` tasks of the batch."""
        cut = lambda t: None if t is None else t[:tasks]  # noqa: E731
        return MetaBatch(self.goals[:tasks], cut(self.inner_x), cut(self.inner_y), self.outer.task_range(tasks),
                         self.outer_adv[:tasks], cut(self.inner_returns), self.outer_returns[:tasks])


class MAMLTRPO(nn.Module):
    """MAML for a Gaussian policy on a batch of navigation tasks, with a TRPO meta-step.

    Args:
        policy: the policy whose parameters θ are meta-learned.
        env: the task family: a :class:`Navigation2D`, or ``gymnasium.make("mlkit/Navigation2D-v0")`` (wrapped or
            not), whose horizon it takes. inner_lr: α >= 0 (0.1, Finn et al., 2017, App. A.2).
        inner_steps: 1 (MAML) or 0: no adaptation, which trains one policy on all tasks jointly with the same
            TRPO step (the "pretrained" baseline of the paper).
        trajectories: trajectories per task for the inner step and for the outer objective (20).
        gamma: discount of the returns behind the advantages (0.99, as the reference code).
        trpo: :class:`TRPOSettings`. batched: all tasks at once; ``False`` loops over tasks with
            :func:`mlkit.core.adapt` (the reference; same numbers).

    Reference: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
    ICML 2017, with the outer step of Schulman et al. (2015) and the inner estimator of Farquhar et al. (2019).
    """

    def __init__(self, policy: GaussianMLPPolicy, env: Navigation2D = Navigation2D(), inner_lr: float = 0.1,
                 inner_steps: int = 1, trajectories: int = 20, gamma: float = 0.99,
                 trpo: TRPOSettings = TRPOSettings(), batched: bool = True):
        super().__init__()
        if not isinstance(policy, GaussianMLPPolicy):
            raise ValueError(f"policy must be a mlkit.rl.GaussianMLPPolicy, got {type(policy).__name__}")
        if inner_steps not in (0, 1) or isinstance(inner_steps, bool):
            raise ValueError(f"inner_steps must be 1 (MAML) or 0 (joint training), got {inner_steps!r}; "
                             "evaluate more steps with mlkit.rl.fine_tune")
        if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
            raise ValueError(f"trajectories must be a positive integer, got {trajectories!r}")
        if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        if not isinstance(trpo, TRPOSettings):
            raise ValueError(f"trpo must be a mlkit.rl.TRPOSettings, got {type(trpo).__name__}")
        self.policy = policy
        self.env = as_batched(env)
        self.inner_lr = core.check_lr("inner_lr", inner_lr, learnable=False)
        self.inner_steps = inner_steps
        self.trajectories = trajectories
        self.gamma = float(gamma)
        self.trpo = trpo
        self.batched = batched
        self._problem = _InnerProblem(policy)

    def settings(self) -> dict:
        """Every setting that defines the algorithm, as plain values."""
        return {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps, "trajectories": self.trajectories,
                "gamma": self.gamma, "trpo": asdict(self.trpo), "env": asdict(self.env)}

    # sampling ---------------------------------------------------------------------------------------------
    def _rollout(self, params: Params, goals: Tensor, noise: Tensor, per_task: bool) -> Trajectories:
        if self.batched:
            act = per_task_act(self.policy, params) if per_task else shared_act(self.policy, params)
            return rollout(act, goals, noise, self.env)
        parts = []
        for i in range(goals.shape[0]):
            task_params = {k: p[i:i + 1] for k, p in params.items()} if per_task else params
            act = per_task_act(self.policy, task_params) if per_task else shared_act(self.policy, params)
            parts.append(rollout(act, goals[i:i + 1], noise[i:i + 1], self.env))
        return Trajectories.cat(parts)

    def _advantages(self, trajectories: Trajectories) -> Tensor:
        if self.batched:
            return advantages(trajectories, self.gamma)
        return torch.cat([advantages(trajectories.task(i), self.gamma) for i in range(trajectories.mask.shape[0])])

    def _noise(self, tasks: int, generator: torch.Generator | None) -> Tensor:
        dtype = next(self.policy.parameters()).dtype
        return torch.randn(tasks, self.trajectories, self.env.horizon, 2, generator=generator, dtype=dtype)

    def sample(self, goals: Tensor, generator: torch.Generator | None = None) -> MetaBatch:
        """Sample a meta-batch on ``goals [tasks, 2]``: trajectories under θ, the inner step, then fresh
        trajectories under each adapted θ'_i (the first-order path; the meta-gradient is built in :meth:`step`)."""
        if goals.ndim != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must be [tasks, 2], got shape {tuple(goals.shape)}")
        goals = goals.to(next(self.policy.parameters()).dtype)
        params = {k: p.detach() for k, p in self.policy.params().items()}
        tasks = goals.shape[0]
        if self.inner_steps == 0:
            outer = self._rollout(params, goals, self._noise(tasks, generator), per_task=False)
            return MetaBatch(goals, None, None, outer, self._advantages(outer), None, outer.returns())
        inner = self._rollout(params, goals, self._noise(tasks, generator), per_task=False)
        x, y = pack(inner, self._advantages(inner))
        adapted = self._adapt(params, x, y, create_graph=False)
        outer = self._rollout(adapted, goals, self._noise(tasks, generator), per_task=True)
        return MetaBatch(goals, x, y, outer, self._advantages(outer), inner.returns(), outer.returns())

    # the meta-objective --------------------------------------------------------------------------------------
    def _adapt(self, params: Params, x: Tensor, y: Tensor, create_graph: bool) -> Params:
        """θ'_i for every task, ``name -> [tasks, *shape]``, from shared θ."""
        tasks = x.shape[0]
        if self.batched:
            expanded = {k: p.expand(tasks, *p.shape) for k, p in params.items()}
            return adapt_tasks(self.policy, expanded, x, y, self.inner_lr, create_graph)
        per_task = [core.adapt(self._problem.forward, self._problem.loss, params, x[i], y[i], self.inner_lr, 1)
                    for i in range(tasks)]
        return {k: torch.stack([p[k] for p in per_task]) for k in params}

    def adapted_outputs(self, params: Params, batch: MetaBatch, create_graph: bool = True) -> tuple[Tensor, Tensor]:
        """The adapted policies on the outer observations, as functions of θ.

        Returns:
            ``(mean [tasks, n, T, 2], log_std [tasks, 1, 1, 2])`` of π_{θ'_i}; differentiable with respect to
            ``params`` through the inner step when ``create_graph``.
        """
        obs = batch.outer.observations
        tasks = obs.shape[0]
        if self.inner_steps == 0:
            mean, log_std = self.policy.functional(params, obs)
            return mean, log_std.expand(tasks, 1, 1, -1)
        adapted = self._adapt(params, batch.inner_x, batch.inner_y, create_graph)
        if self.batched:
            mean, log_std = torch.func.vmap(self.policy.functional)(adapted, obs)
        else:
            outputs = [self.policy.functional({k: p[i] for k, p in adapted.items()}, obs[i]) for i in range(tasks)]
            mean, log_std = torch.stack([m for m, _ in outputs]), torch.stack([s for _, s in outputs])
        return mean, log_std[:, None, None, :]

    @staticmethod
    def objective(mean: Tensor, log_std: Tensor, old_mean: Tensor, old_log_std: Tensor,
                  batch: MetaBatch) -> tuple[Tensor, Tensor]:
        """TRPO's surrogate and constraint, averaged over tasks.

        Returns:
            ``(surrogate, kl)``: the mean over tasks of ``Σ ratio·A / #steps`` (ratio of the new to the old
            adapted policy on the outer actions) and of the mean KL(old ‖ new) over the outer states.
        """
        outer = batch.outer
        count = outer.mask.sum((1, 2))
        ratio = torch.exp(log_prob(mean, log_std, outer.actions) - log_prob(old_mean, old_log_std, outer.actions))
        surrogate = ((ratio * batch.outer_adv * outer.mask).sum((1, 2)) / count).mean()
        kl = ((kl_divergence(old_mean, old_log_std, mean, log_std) * outer.mask).sum((1, 2)) / count).mean()
        return surrogate, kl

    def meta_surrogate(self, params: Params, batch: MetaBatch) -> Tensor:
        """The TRPO surrogate as a differentiable function of θ (its gradient at θ is the meta-gradient)."""
        mean, log_std = self.adapted_outputs(params, batch)
        return self.objective(mean, log_std, mean.detach(), log_std.detach(), batch)[0]

    # the TRPO step ----------------------------------------------------------------------------------------------
    def step(self, batch: MetaBatch) -> dict:
        """One TRPO meta-step on ``batch``; updates the policy in place.

        Returns:
            A dict: ``surrogate_gain`` (the accepted step's improvement of the surrogate), ``kl`` (its mean KL),
            ``backtracks`` (-1 when the line search rejected every step) and the returns before and after
            adaptation in the batch.
        """
        names = list(self.policy.params())
        leaves = {k: p.detach().clone().requires_grad_() for k, p in self.policy.params().items()}
        mean, log_std = self.adapted_outputs(leaves, batch)
        old_mean, old_log_std = mean.detach(), log_std.detach()
        surrogate, _ = self.objective(mean, log_std, old_mean, old_log_std, batch)
        grad = _flat(torch.autograd.grad(surrogate, list(leaves.values()), retain_graph=True))
        fisher_tasks = self.trpo.fisher_tasks
        if fisher_tasks is None or fisher_tasks >= batch.goals.shape[0]:
            fisher = self._fisher_vector_product(leaves, mean, log_std, batch.outer.mask)
        else:  # a graph of its own, so that each product differentiates only the subsample's inner steps
            head = batch.head(fisher_tasks)
            fisher = self._fisher_vector_product(leaves, *self.adapted_outputs(leaves, head), head.outer.mask)

        direction = conjugate_gradient(fisher, grad, self.trpo.cg_iters)
        curvature = direction @ fisher(direction)
        full_step = math.sqrt(2 * self.trpo.max_kl / max(curvature.item(), 1e-30)) * direction
        start = _flat([leaves[k].detach() for k in names])
        before = surrogate.item()

        def evaluate(flat: Tensor) -> tuple[float, float]:
            params = _unflat(flat, leaves)
            new_mean, new_log_std = self.adapted_outputs(params, batch, create_graph=False)
            value, kl = self.objective(new_mean, new_log_std, old_mean, old_log_std, batch)
            return value.item(), kl.item()

        accepted, backtracks = line_search(evaluate, start, full_step, before, self.trpo)
        after, kl = evaluate(accepted) if backtracks >= 0 else (before, 0.0)
        with torch.no_grad():
            for name, value in _unflat(accepted, leaves).items():
                self.policy.get_parameter(name).copy_(value)
        stats = {"surrogate_gain": after - before, "kl": kl, "backtracks": backtracks,
                 "return_after": batch.outer_returns.mean().item()}
        if batch.inner_returns is not None:
            stats["return_before"] = batch.inner_returns.mean().item()
        return stats

    def _fisher_vector_product(self, leaves: Params, mean: Tensor, log_std: Tensor, mask: Tensor):
        """``v -> (JᵀMJ + damping) v``: the Hessian of the mean KL at the old θ, through the inner step.

        J is the Jacobian of the adapted outputs ``(mean, log_std)`` with respect to θ; M is the KL's
        curvature in them: ``1/σ²`` per mean coordinate and 2 per log-std, times each step's weight in the mean.
        """
        tasks = mask.shape[0]
        weight = mask / mask.sum((1, 2), keepdim=True) / tasks
        curvature_mean = weight[..., None] * torch.exp(-2 * log_std.detach())
        curvature_log_std = torch.full_like(log_std, 2.0 / tasks)
        outputs = (mean, log_std)
        params = list(leaves.values())
        probes = [torch.zeros_like(o, requires_grad=True) for o in outputs]
        jacobian_t_probe = torch.autograd.grad(outputs, params, probes, create_graph=True)  # Jᵀu, linear in u

        def product(v: Tensor) -> Tensor:
            jv = torch.autograd.grad(jacobian_t_probe, probes, _split(v, params), retain_graph=True)
            weighted = (jv[0] * curvature_mean, jv[1] * curvature_log_std)
            fv = torch.autograd.grad(outputs, params, weighted, retain_graph=True)
            return _flat(fv) + self.trpo.cg_damping * v
        return product


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def _unflat(flat: Tensor, like: Params) -> Params:
    return dict(zip(like, _split(flat, list(like.values()))))

"""The meta-gradient of MAML-RL through the inner policy-gradient step, against finite differences.

With the trajectories fixed, importance sampling turns every estimator into a deterministic function of θ.
The inner objective is the per-decision importance-sampled return estimate
``J_i(θ) = Σ_t (ρ_{0:t}(θ) - ρ_{0:t-1}(θ)) A_t / #steps``, ``ρ_{0:t} = Π_{t'≤t} π_θ/π_θ0``, whose value
and first two derivatives at θ0 are those the DiCE surrogate estimates; the outer objective is TRPO's ratio
surrogate. Central differences of ``F(θ) = surrogate(θ + α ∇J(θ))`` at θ0, in float64, must equal the meta-gradient that
``MAMLTRPO`` differentiates through its inner step. The usual surrogate ``mean(log π · A)`` must not.
"""
import pytest
import torch

from mlkit import rl
from mlkit.rl.maml import _InnerProblem


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    env = rl.Navigation2D(horizon=6)
    policy = rl.GaussianMLPPolicy(hidden=(5,), init_std=0.3).double()
    algo = rl.MAMLTRPO(policy, env=env, inner_lr=0.5, trajectories=3)
    generator = torch.Generator().manual_seed(seed)
    batch = algo.sample(env.sample_goals(2, generator, dtype=torch.float64), generator)
    return policy, algo, batch


def importance_sampled_objective(policy, algo, batch):
    """F(θ) with every sample fixed: a deterministic function of θ (float64)."""
    problem = _InnerProblem(policy)
    theta0 = {k: p.detach().clone() for k, p in policy.params().items()}
    inner_x, inner_y = batch.inner_x, batch.inner_y
    adv, mask = inner_y[..., 0], inner_y[..., 1]
    logp0 = torch.stack([problem.forward(theta0, x) for x in inner_x]).detach()

    def adapted(theta):
        out = []
        for i in range(inner_x.shape[0]):
            leaves = {k: v.detach().requires_grad_() for k, v in theta.items()}
            log_ratio = torch.cumsum((problem.forward(leaves, inner_x[i]) - logp0[i]) * mask[i], -1)
            rho = torch.exp(log_ratio)
            rho_before = torch.cat([torch.ones_like(rho[..., :1]), rho[..., :-1]], -1)
            estimate = ((rho - rho_before) * adv[i] * mask[i]).sum() / mask[i].sum()
            grads = torch.autograd.grad(estimate, list(leaves.values()))
            out.append({k: theta[k] + algo.inner_lr * g for k, g in zip(theta, grads)})
        return out

    outer = batch.outer
    old = adapted(theta0)
    old_logp = torch.stack([rl.log_prob(*policy.functional(p, outer.observations[i]), outer.actions[i])
                            for i, p in enumerate(old)])

    def objective(theta):
        values = []
        for i, p in enumerate(adapted(theta)):
            ratio = torch.exp(rl.log_prob(*policy.functional(p, outer.observations[i]), outer.actions[i]) - old_logp[i])
            values.append((ratio * batch.outer_adv[i] * outer.mask[i]).sum() / outer.mask[i].sum())
        return torch.stack(values).mean()
    return theta0, objective


def central_differences(objective, theta0, directions, eps=1e-6):
    """Directional derivatives of ``objective`` at ``theta0`` along each flat direction ``[P]``."""
    out = []
    for d in directions:
        step = dict(zip(theta0, (eps * c.view_as(v) for c, v in zip(d.split([v.numel() for v in theta0.values()]),
                                                                      theta0.values()))))
        plus = {k: v + step[k] for k, v in theta0.items()}
        minus = {k: v - step[k] for k, v in theta0.items()}
        out.append((objective(plus) - objective(minus)) / (2 * eps))
    return torch.stack(out)


def meta_gradient(algo, batch):
    leaves = {k: p.detach().clone().requires_grad_() for k, p in algo.policy.params().items()}
    grads = torch.autograd.grad(algo.meta_surrogate(leaves, batch), list(leaves.values()))
    return torch.cat([g.flatten() for g in grads])


def naive_meta_gradient(policy, algo, batch):
    """The same meta-gradient with the usual inner surrogate mean(log π · A), which drops Hessian terms."""
    problem = _InnerProblem(policy)
    leaves = {k: p.detach().clone().requires_grad_() for k, p in policy.params().items()}
    values = []
    for i in range(batch.goals.shape[0]):
        x, y = batch.inner_x[i], batch.inner_y[i]
        loss = -(problem.forward(leaves, x) * y[..., 0] * y[..., 1]).sum() / y[..., 1].sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        adapted = {k: p - algo.inner_lr * g for (k, p), g in zip(leaves.items(), grads)}
        mean, log_std = policy.functional(adapted, batch.outer.observations[i])
        logp = rl.log_prob(mean, log_std, batch.outer.actions[i])
        ratio = torch.exp(logp - logp.detach())
        values.append((ratio * batch.outer_adv[i] * batch.outer.mask[i]).sum() / batch.outer.mask[i].sum())
    grads = torch.autograd.grad(torch.stack(values).mean(), list(leaves.values()))
    return torch.cat([g.flatten() for g in grads])


@pytest.fixture(scope="module")
def problem_and_finite_differences():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    policy, algo, batch = tiny_problem()
    theta0, objective = importance_sampled_objective(policy, algo, batch)
    size = sum(v.numel() for v in theta0.values())
    # random directions, and the coordinate axes of the last layer and the log-std
    directions = torch.cat([torch.randn(8, size, generator=torch.Generator().manual_seed(7)), torch.eye(size)[-14:]])
    expected = central_differences(objective, theta0, directions)
    torch.set_default_dtype(previous)
    return policy, algo, batch, directions, expected


def test_meta_gradient_matches_finite_differences_of_the_importance_sampled_objective(problem_and_finite_differences):
    policy, algo, batch, directions, expected = problem_and_finite_differences
    got = directions @ meta_gradient(algo, batch)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
    assert expected.abs().max() > 1e-2  # a gradient worth checking


def test_the_usual_surrogate_misses_the_second_order_term_the_check_detects(problem_and_finite_differences):
    policy, algo, batch, directions, expected = problem_and_finite_differences
    naive = directions @ naive_meta_gradient(policy, algo, batch)
    # same first-order part, different Hessian: the finite-difference check above would fail on it
    assert (naive - expected).abs().max() > 1e3 * (1e-6 * expected.abs().max() + 1e-8)


def test_meta_gradient_batched_equals_per_task_loop():
    policy, algo, batch = tiny_problem(seed=1)
    batched = meta_gradient(algo, batch)
    algo.batched = False
    loop = meta_gradient(algo, batch)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)

"""The TRPO meta-step: conjugate gradient, the Fisher through the inner step, the trust region, batching."""
import pytest
import torch

from mlkit import rl
from mlkit.rl.maml import _flat


def test_conjugate_gradient_solves_a_positive_definite_system(float64):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rl.conjugate_gradient(lambda v: a @ v, b, iterations=6), torch.linalg.solve(a, b))


def test_line_search_keeps_the_start_when_no_step_improves():
    settings = rl.TRPOSettings(ls_steps=3)
    start = torch.zeros(2)
    params, backtracks = rl.line_search(lambda p: (-1.0, 0.0), start, torch.ones(2), 0.0, settings)
    assert backtracks == -1 and torch.equal(params, start)
    params, backtracks = rl.line_search(lambda p: (1.0, 1.0 if p[0] > 0.7 else 0.0), start, torch.ones(2), 0.0,
                                        settings)
    assert backtracks == 2 and torch.allclose(params, torch.full((2,), 0.64))


def toy(inner_steps=1, seed=0, batched=True):
    torch.manual_seed(seed)
    env = rl.Navigation2D(horizon=8)
    policy = rl.GaussianMLPPolicy(hidden=(16,), init_std=0.5).double()
    algo = rl.MAMLTRPO(policy, env=env, inner_lr=0.3, inner_steps=inner_steps, trajectories=4, batched=batched)
    g = torch.Generator().manual_seed(seed)
    batch = algo.sample(env.sample_goals(3, g, dtype=torch.float64), g)
    return algo, batch


@pytest.mark.parametrize("inner_steps", [1, 0])
def test_fisher_vector_product_is_the_hessian_of_the_mean_kl_through_the_inner_step(float64, inner_steps):
    algo, batch = toy(inner_steps)
    leaves = {k: p.detach().clone().requires_grad_() for k, p in algo.policy.params().items()}
    mean, log_std = algo.adapted_outputs(leaves, batch)
    old = mean.detach(), log_std.detach()
    fisher = algo._fisher_vector_product(leaves, mean, log_std, batch.outer.mask)
    v = torch.randn(sum(p.numel() for p in leaves.values()), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    # reference: differentiate the KL twice with autograd (third derivatives through the inner step)
    kl = algo.objective(*algo.adapted_outputs(leaves, batch), *old, batch)[1]
    grad = _flat(torch.autograd.grad(kl, list(leaves.values()), create_graph=True))
    hessian_v = _flat(torch.autograd.grad(grad @ v, list(leaves.values())))
    torch.testing.assert_close(fisher(v) - algo.trpo.cg_damping * v, hessian_v, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("inner_steps", [1, 0])
def test_a_trpo_step_improves_the_surrogate_within_the_kl_constraint(float64, inner_steps):
    algo, batch = toy(inner_steps, seed=2)
    before = {k: p.detach().clone() for k, p in algo.policy.params().items()}
    stats = algo.step(batch)
    assert stats["backtracks"] >= 0 and stats["surrogate_gain"] > 0
    # recompute both from the updated policy, independently of the step's own bookkeeping
    old_mean, old_log_std = algo.adapted_outputs(before, batch, create_graph=False)
    new = algo.adapted_outputs(algo.policy.params(), batch, create_graph=False)
    surrogate, kl = algo.objective(*new, old_mean, old_log_std, batch)
    baseline, _ = algo.objective(old_mean, old_log_std, old_mean, old_log_std, batch)
    assert 0 < kl.item() <= algo.trpo.max_kl
    torch.testing.assert_close(surrogate - baseline, torch.tensor(stats["surrogate_gain"]), rtol=1e-9, atol=1e-12)


def test_batched_sampling_fisher_and_step_equal_the_per_task_loop(float64):
    results = []
    v = torch.randn(84, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for batched in (True, False):
        algo, batch = toy(seed=3, batched=batched)
        # a few CG iterations: later ones amplify rounding on this ill-conditioned Fisher, in either path
        algo.trpo = rl.TRPOSettings(cg_iters=4)
        leaves = {k: p.detach().clone().requires_grad_() for k, p in algo.policy.params().items()}
        mean, log_std = algo.adapted_outputs(leaves, batch)
        fisher_v = algo._fisher_vector_product(leaves, mean, log_std, batch.outer.mask)(v)
        stats = algo.step(batch)
        results.append((batch, fisher_v, stats, _flat(algo.policy.params().values()).detach()))
    (b1, f1, s1, p1), (b2, f2, s2, p2) = results
    torch.testing.assert_close(b1.outer.observations, b2.outer.observations, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b1.outer_adv, b2.outer_adv, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(f1, f2, rtol=1e-10, atol=1e-12)
    assert s1["backtracks"] == s2["backtracks"]
    torch.testing.assert_close(p1, p2, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kwargs", [{"max_kl": 0.0}, {"max_kl": float("nan")}, {"cg_iters": 0},
                                    {"ls_ratio": 1.0}, {"ls_steps": 2.5}, {"cg_damping": -1.0},
                                    {"fisher_tasks": 0}])
def test_bad_trpo_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        rl.TRPOSettings(**kwargs)


@pytest.mark.parametrize("kwargs", [{"inner_steps": 2}, {"inner_lr": float("inf")}, {"trajectories": 0},
                                    {"gamma": 1.5}, {"trpo": {"max_kl": 0.01}}])
def test_bad_algorithm_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        rl.MAMLTRPO(rl.GaussianMLPPolicy(hidden=(4,)), **kwargs)


def test_sample_rejects_goals_of_the_wrong_shape():
    algo = rl.MAMLTRPO(rl.GaussianMLPPolicy(hidden=(4,)))
    with pytest.raises(ValueError, match="goals"):
        algo.sample(torch.zeros(3, 3))


def test_a_subsampled_fisher_is_the_kl_hessian_of_the_first_tasks(float64, monkeypatch):
    algo, batch = toy(seed=4)
    algo.trpo = rl.TRPOSettings(fisher_tasks=2, cg_iters=1)
    head = batch.head(2)
    leaves = {k: p.detach().clone().requires_grad_() for k, p in algo.policy.params().items()}
    mean, log_std = algo.adapted_outputs(leaves, head)
    old = mean.detach(), log_std.detach()
    kl = algo.objective(*algo.adapted_outputs(leaves, head), *old, head)[1]
    grad = _flat(torch.autograd.grad(kl, list(leaves.values()), create_graph=True))
    captured = {}
    solve = rl.maml.conjugate_gradient

    def capture(matvec, b, iterations):
        captured["matvec"] = matvec
        return solve(matvec, b, iterations)
    monkeypatch.setattr(rl.maml, "conjugate_gradient", capture)
    algo.step(batch)
    v = torch.randn(grad.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hessian_v = _flat(torch.autograd.grad(grad @ v, list(leaves.values())))
    torch.testing.assert_close(captured["matvec"](v) - algo.trpo.cg_damping * v, hessian_v, rtol=1e-8, atol=1e-10)

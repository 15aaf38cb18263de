"""The Gaussian policy, the DiCE inner loss and the batched inner step."""
import math

import pytest
import torch

from mlkit import core, rl
from mlkit.rl.maml import _InnerProblem, pack


def test_log_prob_and_kl_match_torch_distributions(float64):
    g = torch.Generator().manual_seed(0)
    mean0, mean1, actions = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
    log_std0, log_std1 = torch.tensor([0.3, -1.0]), torch.tensor([-0.2, 0.1])
    p = torch.distributions.Normal(mean0, log_std0.exp())
    q = torch.distributions.Normal(mean1, log_std1.exp())
    torch.testing.assert_close(rl.log_prob(mean0, log_std0, actions), p.log_prob(actions).sum(-1))
    torch.testing.assert_close(rl.kl_divergence(mean0, log_std0, mean1, log_std1),
                               torch.distributions.kl_divergence(p, q).sum(-1))


def test_the_policy_has_two_hidden_layers_of_100_relu_units_and_a_learned_log_std():
    policy = rl.GaussianMLPPolicy()
    widths = [m.out_features for m in policy.mean if isinstance(m, torch.nn.Linear)]
    assert widths == [100, 100, 2]
    assert all(isinstance(m, torch.nn.ReLU) for m in policy.mean if not isinstance(m, torch.nn.Linear))
    assert policy.log_std.requires_grad and torch.equal(policy.log_std, torch.zeros(2))
    mean, log_std = policy.functional(policy.params(), torch.zeros(7, 2))
    assert mean.shape == (7, 2) and log_std.shape == (2,)


def sample(seed=0, tasks=2, n=4, steps=5, hidden=(8,)):
    torch.manual_seed(seed)
    policy = rl.GaussianMLPPolicy(hidden=hidden, init_std=0.4).double()
    env = rl.Navigation2D(horizon=steps)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_goals(tasks, g, dtype=torch.float64)
    noise = torch.randn(tasks, n, steps, 2, generator=g, dtype=torch.float64)
    traj = rl.rollout(rl.shared_act(policy, policy.params()), goals, noise, env)
    return policy, traj, rl.advantages(traj, 0.99)


def test_dice_loss_is_zero_and_its_gradient_is_minus_the_reinforce_estimate(float64):
    policy, traj, adv = sample()
    traj.mask[0, 1, 3:] = 0  # padding must not contribute
    problem = _InnerProblem(policy)
    x, y = pack(traj, adv)
    params = policy.params()
    logp = problem.forward(params, x[0])
    dice = rl.dice_policy_gradient_loss(logp, adv[0], traj.mask[0])
    assert dice.item() == 0
    surrogate = -(logp * adv[0] * traj.mask[0]).sum() / traj.mask[0].sum()
    for a, b in zip(torch.autograd.grad(dice, list(params.values()), retain_graph=True),
                    torch.autograd.grad(surrogate, list(params.values()))):
        torch.testing.assert_close(a, b)


def test_policy_gradient_of_a_linear_gaussian_policy_matches_the_score_function(float64):
    policy, traj, adv = sample(hidden=())
    problem = _InnerProblem(policy)
    x, y = pack(traj, adv)
    params = policy.params()
    grads = dict(zip(params, torch.autograd.grad(problem.loss(problem.forward(params, x[0]), y[0]),
                                                 list(params.values()))))
    obs, actions, a, mask = traj.observations[0], traj.actions[0], adv[0], traj.mask[0]
    w, b, log_std = params["mean.0.weight"], params["mean.0.bias"], params["log_std"]
    z = (actions - (obs @ w.T + b)) * torch.exp(-log_std)          # standardised actions
    coef = (a * mask / mask.sum())[..., None]                       # each step's weight in the estimate
    # ∇_μ log π = z / σ, ∇_{log σ} log π = z² - 1; the loss is minus the weighted sum
    torch.testing.assert_close(grads["mean.0.bias"], -(coef * z * torch.exp(-log_std)).sum((0, 1)))
    torch.testing.assert_close(grads["mean.0.weight"],
                               -torch.einsum("nti,ntj->ij", coef * z * torch.exp(-log_std), obs))
    torch.testing.assert_close(grads["log_std"], -(coef * (z * z - 1)).sum((0, 1)))


@pytest.mark.parametrize("create_graph", [False, True])
def test_batched_inner_step_equals_core_adapt_on_each_task(float64, create_graph):
    policy, traj, adv = sample(tasks=3)
    problem = _InnerProblem(policy)
    x, y = pack(traj, adv)
    params = policy.params()
    batched = rl.adapt_tasks(policy, {k: p.expand(3, *p.shape) for k, p in params.items()}, x, y, 0.3,
                             create_graph)
    for i in range(3):
        one = core.adapt(problem.forward, problem.loss, params, x[i], y[i], 0.3, 1)
        for k in params:
            torch.testing.assert_close(batched[k][i], one[k])
    assert all(p.requires_grad == create_graph for p in batched.values())


def test_an_inner_step_along_the_policy_gradient_raises_the_surrogate_return(float64):
    policy, traj, adv = sample(seed=3, tasks=1, n=20, steps=10)
    problem = _InnerProblem(policy)
    x, y = pack(traj, adv)
    params = policy.params()
    adapted = core.adapt(problem.forward, problem.loss, params, x[0], y[0], 0.01, 1)
    old = problem.forward(params, x[0]).detach()
    ratio = torch.exp(problem.forward(adapted, x[0]) - old)
    gain = (ratio * adv[0] * traj.mask[0]).sum() / traj.mask[0].sum()
    assert gain.item() > 0
    assert math.isfinite(gain.item())


def test_action_scale_scales_the_mean_and_the_standard_deviation(float64):
    torch.manual_seed(0)
    unit = rl.GaussianMLPPolicy(hidden=(8,)).double()
    scaled = rl.GaussianMLPPolicy(hidden=(8,), action_scale=0.1).double()
    scaled.load_state_dict(unit.state_dict())
    obs = torch.randn(5, 2)
    (m1, s1), (m2, s2) = unit(obs), scaled(obs)
    torch.testing.assert_close(m2, 0.1 * m1)
    torch.testing.assert_close(s2.exp(), 0.1 * s1.exp())
    with pytest.raises(ValueError, match="action_scale"):
        rl.GaussianMLPPolicy(action_scale=0.0)

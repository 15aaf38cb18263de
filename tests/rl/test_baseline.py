"""Returns, the linear feature baseline and advantages, against their definitions and closed forms."""
import torch

from mlkit import rl


def test_discounted_returns_are_the_reward_to_go(float64):
    rewards = torch.randn(3, 4, 7)
    gamma = 0.9
    expected = torch.zeros_like(rewards)
    running = torch.zeros(3, 4)
    for t in reversed(range(7)):
        running = rewards[..., t] + gamma * running
        expected[..., t] = running
    torch.testing.assert_close(rl.discounted_returns(rewards, gamma), expected)


def test_features_are_duan_et_al_s_and_zero_on_padding(float64):
    obs = torch.tensor([[[0.5, -20.0], [0.1, 0.2], [3.0, 3.0]]])  # [n=1, T=3, 2]
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    features = rl.baseline_features(obs, mask)
    assert features.shape == (1, 3, 8)
    t = 1 / 100
    torch.testing.assert_close(features[0, 1], torch.tensor([0.1, 0.2, 0.01, 0.04, t, t ** 2, t ** 3, 1.0]))
    torch.testing.assert_close(features[0, 0, :4], torch.tensor([0.5, -10.0, 0.25, 100.0]))  # clipped to ±10
    assert features[0, 2].abs().sum() == 0


def test_linear_baseline_is_the_ridge_least_squares_solution(float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 8, generator=g, dtype=torch.float64)
    y = torch.randn(3, 50, generator=g, dtype=torch.float64)
    ridge = 1e-3
    got = rl.fit_linear_baseline(x, y, ridge)
    for i in range(3):  # the closed form, as the least-squares solution of the augmented system [X; √λ I] w = [y; 0]
        a = torch.cat([x[i], ridge ** 0.5 * torch.eye(8, dtype=torch.float64)])
        b = torch.cat([y[i], torch.zeros(8, dtype=torch.float64)])
        torch.testing.assert_close(got[i], torch.linalg.lstsq(a, b[:, None]).solution[:, 0])


def trajectories(seed=0, tasks=3, n=5, steps=12):
    torch.manual_seed(seed)
    policy = rl.GaussianMLPPolicy(hidden=(8,), init_std=0.5).double()
    env = rl.Navigation2D(horizon=steps)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_goals(tasks, g, dtype=torch.float64)
    noise = torch.randn(tasks, n, steps, 2, generator=g, dtype=torch.float64)
    return rl.rollout(rl.shared_act(policy, policy.params()), goals, noise, env)


def test_advantages_are_returns_minus_the_fitted_baseline(float64):
    traj = trajectories()
    adv = rl.advantages(traj, gamma=0.99, normalize=False)
    for i in range(3):
        returns = rl.discounted_returns(traj.rewards[i], 0.99)
        features = rl.baseline_features(traj.observations[i], traj.mask[i])
        w = rl.fit_linear_baseline(features.reshape(1, -1, 8), returns.reshape(1, -1))[0]
        torch.testing.assert_close(adv[i], (returns - features @ w) * traj.mask[i])


def test_normalised_advantages_have_zero_mean_and_unit_std_per_task_over_real_steps(float64):
    traj = trajectories(seed=1)
    traj.mask[0, 0, 6:] = 0  # an episode that ended early: its padding must not count
    traj.rewards[0, 0, 6:] = 0
    adv = rl.advantages(traj, gamma=0.99)
    count = traj.mask.sum((1, 2))
    torch.testing.assert_close(adv.sum((1, 2)) / count, torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close((adv ** 2).sum((1, 2)) / count, torch.ones(3), rtol=1e-6, atol=0)
    assert adv[0, 0, 6:].abs().sum() == 0


def test_batched_advantages_equal_the_per_task_ones(float64):
    traj = trajectories(seed=2)
    batched = rl.advantages(traj, gamma=0.95)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], rl.advantages(traj.task(i), gamma=0.95))

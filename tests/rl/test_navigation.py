"""The batched 2-D navigation task: start, clipping, reward, termination and horizon as documented."""
import pytest
import torch

from mlkit import rl


def replay(actions, goals, env=rl.Navigation2D()):
    """Roll out exactly ``actions [tasks, n, T, 2]``: a zero-mean, unit-std policy whose noise is the action."""
    zero = lambda obs: (torch.zeros_like(obs), torch.zeros(2, dtype=obs.dtype))  # noqa: E731
    return rl.rollout(zero, goals, actions, env)


def test_agents_start_at_the_origin_and_the_reward_is_minus_the_distance_after_the_move():
    env = rl.Navigation2D(horizon=3)
    goals = torch.tensor([[0.3, -0.2]])
    actions = torch.tensor([[[[0.05, 0.0], [0.0, -0.05], [0.02, 0.01]]]])
    out = replay(actions, goals, env)
    positions = torch.cumsum(actions[0, 0], 0)
    torch.testing.assert_close(out.observations[0, 0, 0], torch.zeros(2))
    torch.testing.assert_close(out.observations[0, 0, 1:], positions[:-1])
    torch.testing.assert_close(out.rewards[0, 0], -(positions - goals[0]).norm(dim=-1))
    assert out.mask.sum() == 3


def test_actions_are_clipped_to_a_tenth_per_coordinate_but_recorded_unclipped():
    env = rl.Navigation2D(horizon=2)
    actions = torch.tensor([[[[0.7, -3.0], [0.05, 0.2]]]])
    out = replay(actions, torch.tensor([[0.4, 0.4]]), env)
    torch.testing.assert_close(out.observations[0, 0, 1], torch.tensor([0.1, -0.1]))
    torch.testing.assert_close(out.actions, actions)
    expected_last = torch.tensor([0.15, 0.0])
    torch.testing.assert_close(out.rewards[0, 0, 1], -(expected_last - torch.tensor([0.4, 0.4])).norm())


def test_an_episode_terminates_within_a_hundredth_of_the_goal_and_later_steps_are_padding():
    env = rl.Navigation2D(horizon=6)
    goals = torch.tensor([[0.2, 0.1], [0.5, 0.5]])
    step = torch.tensor([0.1, 0.05])
    actions = step.expand(2, 1, 6, 2).clone()
    out = replay(actions, goals, env)
    # task 0 reaches (0.2, 0.1) after two steps: the second step's reward counts, the rest is padding
    assert out.mask[0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    assert out.rewards[0, 0, 2:].abs().sum() == 0
    torch.testing.assert_close(out.observations[0, 0, 2:], torch.tensor([0.2, 0.1]).expand(4, 2))
    assert out.mask[1].sum() == 6  # task 1 never gets there: truncated at the horizon
    assert out.returns().shape == (2, 1)


def test_the_default_horizon_is_100_and_goals_lie_in_the_half_unit_box():
    env = rl.Navigation2D()
    assert env.horizon == 100
    goals = env.sample_goals(1000, torch.Generator().manual_seed(0))
    assert goals.shape == (1000, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.45 and goals.max() > 0.45


def test_a_batched_rollout_equals_one_rollout_per_task():
    torch.manual_seed(0)
    policy = rl.GaussianMLPPolicy(hidden=(16,)).double()
    env = rl.Navigation2D(horizon=20)
    goals = env.sample_goals(3, torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(3, 4, 20, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    act = rl.shared_act(policy, policy.params())
    batched = rl.rollout(act, goals, noise, env)
    for i in range(3):
        one = rl.rollout(act, goals[i:i + 1], noise[i:i + 1], env)
        for a, b in zip((one.observations, one.actions, one.rewards, one.mask),
                        (batched.observations, batched.actions, batched.rewards, batched.mask)):
            torch.testing.assert_close(a[0], b[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"horizon": 0}, {"horizon": 2.5}, {"goal_low": 1.0, "goal_high": 0.0},
                                    {"max_action": 0.0}])
def test_bad_task_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        rl.Navigation2D(**kwargs)


def test_rollout_rejects_goals_or_noise_of_the_wrong_shape():
    env = rl.Navigation2D(horizon=4)
    zero = lambda obs: (torch.zeros_like(obs), torch.zeros(2))  # noqa: E731
    with pytest.raises(ValueError, match="goals"):
        rl.rollout(zero, torch.zeros(3), torch.zeros(3, 1, 4, 2), env)
    with pytest.raises(ValueError, match="noise"):
        rl.rollout(zero, torch.zeros(3, 2), torch.zeros(3, 1, 5, 2), env)
    with pytest.raises(ValueError, match="tasks"):
        env.sample_goals(0)

"""The Gymnasium environment: the API checker, registration, and the same trajectories as the batched task."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from mlkit import rl  # noqa: E402


def test_the_environment_passes_gymnasiums_checker_without_warnings():
    rl.register()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("mlkit/Navigation2D-v0").unwrapped)
        check_env(gym.make("mlkit/Navigation2D-v0", goal=(0.1, -0.3)).unwrapped)


def test_it_is_registered_under_an_id_and_makes_with_the_time_limit():
    rl.register()
    env = gym.make("mlkit/Navigation2D-v0")
    assert env.spec.max_episode_steps == 100
    obs, info = env.reset(seed=0, options={"goal": (0.2, 0.3)})
    np.testing.assert_array_equal(obs, np.zeros(2, np.float32))
    np.testing.assert_array_equal(info["goal"], np.array([0.2, 0.3], np.float32))
    assert gym.make("mlkit.rl.gym_env:mlkit/Navigation2D-v0").unwrapped.horizon == 100


def test_importing_mlkit_does_not_import_gymnasium():
    code = "import sys, mlkit, mlkit.rl; assert 'gymnasium' not in sys.modules, 'gymnasium was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def gym_trajectory(goal, actions, horizon):
    env = rl.Navigation2DEnv(goal=goal, horizon=horizon)
    obs, _ = env.reset(seed=0)
    observations, rewards = [], []
    for action in actions:
        observations.append(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            return np.stack(observations), np.array(rewards, np.float32), terminated, truncated
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("case", ["random", "reaches_goal"])
def test_gym_and_batched_environments_give_identical_trajectories_for_identical_actions(case):
    horizon = 100
    g = torch.Generator().manual_seed(3)
    if case == "random":
        goal = torch.tensor([0.31, -0.42])
        actions = 0.2 * torch.randn(horizon, 2, generator=g)  # many beyond the clip
    else:
        goal = torch.tensor([0.3, 0.2])
        actions = torch.tensor([0.1, 0.2 / 3]).expand(horizon, 2) + 1e-4 * torch.randn(horizon, 2, generator=g)
    zero = lambda obs: (torch.zeros_like(obs), torch.zeros(2))  # noqa: E731
    batched = rl.rollout(zero, goal[None], actions[None, None], rl.Navigation2D(horizon=horizon))
    observations, rewards, terminated, truncated = gym_trajectory(goal.numpy(), actions.numpy(), horizon)
    steps = int(batched.mask.sum())
    assert len(rewards) == steps
    assert terminated == (case == "reaches_goal") and truncated == (case == "random")
    np.testing.assert_array_equal(batched.observations[0, 0, :steps].numpy(), observations)
    np.testing.assert_array_equal(batched.rewards[0, 0, :steps].numpy(), rewards)


def test_tasks_are_set_by_reset_task_or_reset_options_and_sampled_in_the_goal_box():
    env = rl.Navigation2DEnv()
    env.reset(seed=1)
    goals = env.sample_tasks(500)
    assert goals.shape == (500, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    env.reset_task(goals[0])
    np.testing.assert_array_equal(env.goal, goals[0])
    env.reset(options={"goal": [0.0, 0.05]})
    _, reward, *_ = env.step(np.zeros(2, np.float32))
    assert reward == pytest.approx(-0.05, abs=1e-7)


@pytest.mark.parametrize("goal", [(0.1,), (0.1, float("nan")), "far"])
def test_a_bad_goal_raises_value_error(goal):
    with pytest.raises(ValueError, match="goal"):
        rl.Navigation2DEnv().reset(options={"goal": goal})


@pytest.mark.parametrize("order", ["import mlkit.rl; import gymnasium as gym",
                                   "import gymnasium as gym; import mlkit.rl"])
def test_importing_mlkit_rl_registers_the_environment_without_register(order):
    code = f"{order}; assert gym.make('mlkit/Navigation2D-v0').unwrapped.horizon == 100"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_seeded_reset_redraws_a_drawn_goal_and_keeps_a_set_one():
    env = rl.Navigation2DEnv()
    first = env.reset(seed=1)[1]["goal"]
    assert not np.array_equal(env.reset(seed=2)[1]["goal"], first)
    np.testing.assert_array_equal(env.reset(seed=1)[1]["goal"], first)
    np.testing.assert_array_equal(env.reset()[1]["goal"], first)  # an unseeded reset keeps the task
    env.reset_task((0.2, -0.1))
    np.testing.assert_array_equal(env.reset(seed=3)[1]["goal"], np.array([0.2, -0.1], np.float32))
    fixed = rl.Navigation2DEnv(goal=(0.1, 0.3))
    np.testing.assert_array_equal(fixed.reset(seed=4)[1]["goal"], np.array([0.1, 0.3], np.float32))


def test_maml_trpo_and_fine_tune_take_the_wrapped_gym_environment():
    rl.register()
    policy = rl.GaussianMLPPolicy()
    algorithm = rl.MAMLTRPO(policy, env=gym.make("mlkit/Navigation2D-v0"), trajectories=2)
    assert algorithm.env == rl.Navigation2D()
    short = rl.MAMLTRPO(policy, env=gym.make("mlkit/Navigation2D-v0", max_episode_steps=20), trajectories=2)
    assert short.env.horizon == 20
    batch = short.sample(torch.zeros(2, 2), torch.Generator().manual_seed(0))
    assert batch.outer.observations.shape[2] == 20
    result = rl.fine_tune(policy, torch.zeros(1, 2), steps=1, trajectories=2,
                          env=gym.make("mlkit/Navigation2D-v0", max_episode_steps=10))
    assert result is not None
    with pytest.raises(ValueError, match="env must be a mlkit.rl.Navigation2D, or the mlkit/Navigation2D-v0"):
        rl.MAMLTRPO(policy, env=gym.make("CartPole-v1"))

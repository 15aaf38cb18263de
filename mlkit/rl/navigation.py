"""The 2-D navigation task of MAML (Finn et al., 2017, Sec. 5.3), batched in torch over tasks and trajectories.

A point agent starts at the origin and must reach a goal it cannot see; each task is one goal. The definitions
follow the reference implementations (cbfinn/maml_rl ``point_env_randgoal.py``, and the PyTorch ports of
Deleu's pytorch-maml-rl and Zintgraf et al.'s CAVIA) where the paper's text says otherwise:

* **goals** are drawn uniformly from ``[-0.5, 0.5]²`` (the paper says "within a unit square");
* **reward** is the negative Euclidean distance ``-‖s_{t+1} - g‖`` after the move (the paper says "negative
  squared distance"; every released implementation uses the distance);
* **actions** are 2-D velocities clipped elementwise to ``[-0.1, 0.1]`` by the environment; policies'
  log-probabilities are those of the unclipped action they sampled;
* an episode **terminates** once ``|x - g_x| < 0.01`` and ``|y - g_y| < 0.01`` (after the step that got
  there, whose reward counts), and is **truncated** at the horizon of 100 steps;
* the observation is the position, float32 in the Gymnasium environment (any dtype here).

:class:`Navigation2D` steps ``[tasks, trajectories]`` agents at once; :func:`rollout` samples trajectories from
a Gaussian policy. ``mlkit.rl.Navigation2DEnv`` is the same task as a ``gymnasium.Env`` (tested identical).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_ACTION = 0.1
GOAL_RADIUS = 0.01
HORIZON = 100

Act = Callable[[Tensor], "tuple[Tensor, Tensor]"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Navigation2D:
    """The 2-D navigation task family, stepped in batches (see the module docstring for every definition).

    Args:
        horizon: steps per episode (100). goal_low, goal_high: the goal box ``[low, high]²``.
        max_action: actions are clipped to ``[-max_action, max_action]`` per coordinate.
        goal_radius: the episode ends when both coordinates are closer than this to the goal.
    """

    horizon: int = HORIZON
    goal_low: float = GOAL_LOW
    goal_high: float = GOAL_HIGH
    max_action: float = MAX_ACTION
    goal_radius: float = GOAL_RADIUS

    def __post_init__(self):
        _positive_int("horizon", self.horizon)
        if not self.goal_low < self.goal_high:
            raise ValueError(f"goal_low must be below goal_high, got [{self.goal_low}, {self.goal_high}]")
        if not self.max_action > 0 or not self.goal_radius > 0:
            raise ValueError(f"max_action and goal_radius must be positive, got {self.max_action}, {self.goal_radius}")

    def sample_goals(self, tasks: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """``tasks`` goals drawn uniformly from the goal box: ``[tasks, 2]``."""
        _positive_int("tasks", tasks)
        u = torch.rand(tasks, 2, generator=generator, dtype=dtype)
        return self.goal_low + (self.goal_high - self.goal_low) * u

    def step(self, state: Tensor, action: Tensor, goals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every agent.

        Args:
            state: positions ``[tasks, n, 2]``; action: velocities ``[tasks, n, 2]`` (clipped here);
            goals: ``[tasks, 2]``.
        Returns:
            ``(next_state [tasks, n, 2], reward [tasks, n], reached [tasks, n])``: the reward is
            ``-‖next_state - goal‖`` and ``reached`` says the agent is within ``goal_radius`` on both axes.
        """
        next_state = state + action.clamp(-self.max_action, self.max_action)
        dx = next_state[..., 0] - goals[:, None, 0]
        dy = next_state[..., 1] - goals[:, None, 1]
        # Elementwise IEEE operations only, so that the Gymnasium environment's numpy arithmetic is bit-identical.
        # torch's vectorised float32 sqrt is not correctly rounded; the float64 one, rounded to float32, is.
        squared = dx * dx + dy * dy
        reward = -torch.sqrt(squared.double()).to(squared.dtype)
        reached = (dx.abs() < self.goal_radius) & (dy.abs() < self.goal_radius)
        return next_state, reward, reached


@dataclass
class Trajectories:
    """A batch of trajectories, ``[tasks, n, T, ...]``; steps after an episode ended are padding.

    Attributes:
        observations: the position before each action ``[tasks, n, T, 2]``.
        actions: the policy's unclipped actions ``[tasks, n, T, 2]``.
        rewards: ``[tasks, n, T]`` (0 on padding). mask: ``[tasks, n, T]``, 1 on steps that happened.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    def returns(self) -> Tensor:
        """The undiscounted return of each trajectory, ``[tasks, n]``."""
        return self.rewards.sum(-1)

    def task(self, i: int) -> "Trajectories":
        """Task ``i``'s trajectories with a task dimension of one."""
        return Trajectories(*(t[i:i + 1] for t in (self.observations, self.actions, self.rewards, self.mask)))

    def task_range(self, tasks: int) -> "Trajectories":
        """The first ``tasks`` tasks' trajectories."""
        return Trajectories(*(t[:tasks] for t in (self.observations, self.actions, self.rewards, self.mask)))

    @staticmethod
    def cat(parts: list["Trajectories"]) -> "Trajectories":
        """Concatenate along the task dimension."""
        return Trajectories(*(torch.cat(ts) for ts in zip(*((p.observations, p.actions, p.rewards, p.mask)
                                                              for p in parts))))


def rollout(act: Act, goals: Tensor, noise: Tensor, env: Navigation2D = Navigation2D()) -> Trajectories:
    """Run a Gaussian policy on every task, ``n`` trajectories each, starting at the origin.

    Args:
        act: ``observations [tasks, n, 2] -> (mean [tasks, n, 2], log_std)`` with ``log_std`` broadcastable
            to the mean (e.g. ``[2]`` or ``[tasks, 1, 2]``).
        goals: ``[tasks, 2]``.
        noise: standard normal draws ``[tasks, n, env.horizon, 2]``: the action is ``mean + exp(log_std) *
            noise``, so fixed noise gives a trajectory that is a deterministic function of the policy (zeros
            give the policy's mean behaviour).
        env: the task family's constants.
    Returns:
        :class:`Trajectories` with ``T = env.horizon``; no gradient is recorded.
    """
    if goals.ndim != 2 or goals.shape[1] != 2:
        raise ValueError(f"goals must be [tasks, 2], got shape {tuple(goals.shape)}")
    if noise.ndim != 4 or noise.shape[0] != goals.shape[0] or noise.shape[2:] != (env.horizon, 2):
        raise ValueError(f"noise must be [tasks={goals.shape[0]}, n, horizon={env.horizon}, 2], "
                         f"got shape {tuple(noise.shape)}")
    tasks, n = noise.shape[:2]
    state = torch.zeros(tasks, n, 2, dtype=goals.dtype, device=goals.device)
    alive = torch.ones(tasks, n, dtype=torch.bool, device=goals.device)
    observations, actions, rewards, masks = [], [], [], []
    with torch.no_grad():
        for t in range(env.horizon):
            mean, log_std = act(state)
            action = (mean + log_std.exp() * noise[:, :, t]).to(goals.dtype)
            next_state, reward, reached = env.step(state, action, goals)
            observations.append(state)
            actions.append(action)
            rewards.append(torch.where(alive, reward, torch.zeros_like(reward)))
            masks.append(alive)
            state = torch.where(alive[..., None], next_state, state)
            alive = alive & ~reached
    return Trajectories(torch.stack(observations, 2), torch.stack(actions, 2), torch.stack(rewards, 2),
                        torch.stack(masks, 2).to(goals.dtype))


def as_batched(env) -> Navigation2D:
    """The batched task family of ``env``: a :class:`Navigation2D` itself, or the ``mlkit/Navigation2D-v0``
    Gymnasium environment (wrapped or not) as a :class:`Navigation2D` with its horizon (the shorter of its own
    and a ``TimeLimit``'s). Anything else is refused: meta-RL here steps all tasks at once in torch."""
    if isinstance(env, Navigation2D):
        return env
    if "gymnasium" in sys.modules:  # a Gymnasium environment can only exist once gymnasium is imported
        from .gym_env import Navigation2DEnv
        inner = getattr(env, "unwrapped", None)
        if isinstance(inner, Navigation2DEnv):
            limit = getattr(getattr(env, "spec", None), "max_episode_steps", None)
            return Navigation2D(horizon=min(inner.horizon, limit) if limit else inner.horizon)
    raise ValueError(f"env must be a mlkit.rl.Navigation2D, or the mlkit/Navigation2D-v0 Gymnasium environment "
                     f"(wrapped or not), got {type(env).__name__}: MAML-TRPO steps all tasks at once in torch, "
                     "so it needs the task's definition, not a stepping interface")

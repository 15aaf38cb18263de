"""The 2-D navigation task as a standard ``gymnasium.Env`` (``pip install -e ".[rl]"``).

Importing ``mlkit.rl`` registers it as ``mlkit/Navigation2D-v0`` once gymnasium is imported (before or after),
without importing gymnasium itself; importing this module or calling ``mlkit.rl.register()`` does it at once. The definitions are those
of :mod:`mlkit.rl.navigation` (the same constants; trajectories are tested identical to the batched version).
"""
from __future__ import annotations

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as error:
    raise ImportError("mlkit.rl's Gymnasium environment needs gymnasium: pip install -e \".[rl]\"") from error
import numpy as np

from .navigation import GOAL_HIGH, GOAL_LOW, GOAL_RADIUS, HORIZON, MAX_ACTION

ENV_ID = "mlkit/Navigation2D-v0"


class Navigation2DEnv(gym.Env):
    """2-D navigation (Finn et al., 2017, Sec. 5.3): reach an unseen goal from the origin.

    Observation: the position, ``Box(-r, r, (2,), float32)`` with r just above ``horizon · 0.1``.
    Action: a velocity, ``Box(-0.1, 0.1, (2,), float32)``; anything outside is clipped. Reward:
    ``-‖position - goal‖`` after the move. The episode terminates within 0.01 of the goal on both axes and is
    truncated after ``horizon`` (100) steps.

    The task is the goal. Set it with ``reset_task(goal)``, ``reset(options={"goal": goal})`` or ``goal=``; draw
    goals uniformly from ``[-0.5, 0.5]²`` with ``sample_tasks(n)`` (seeded by ``reset(seed=...)``). Without a goal
    set, the first reset draws one and every ``reset(seed=...)`` draws it again from the new seed (so the same
    seed gives the same goal); a goal that was set stays until another is set.

    Args:
        goal: an initial goal ``(x, y)`` or None. horizon: the episode length.
    """

    metadata = {"render_modes": []}

    def __init__(self, goal=None, horizon: int = HORIZON):
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        # the farthest the agent can get in one episode, plus room for float32 rounding of the sums
        reach = horizon * MAX_ACTION + 1e-3
        self.observation_space = spaces.Box(-reach, reach, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_ACTION, MAX_ACTION, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self._goal = None if goal is None else self._check_goal(goal)
        self._goal_drawn = goal is None  # the environment drew the goal (and redraws it on a seeded reset)
        self._state = np.zeros(2, dtype=np.float32)
        self._steps = 0

    @staticmethod
    def _check_goal(goal) -> np.ndarray:
        try:
            array = np.asarray(goal, dtype=np.float32)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != (2,) or not np.all(np.isfinite(array)):
            raise ValueError(f"goal must be two finite numbers (x, y), got {goal!r}")
        return array

    @property
    def goal(self) -> np.ndarray | None:
        """The current goal ``[2]`` (float32), or None before the first reset."""
        return None if self._goal is None else self._goal.copy()

    def sample_tasks(self, n: int) -> np.ndarray:
        """``n`` goals ``[n, 2]`` drawn uniformly from ``[-0.5, 0.5]²`` with the environment's generator."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        return self.np_random.uniform(GOAL_LOW, GOAL_HIGH, size=(n, 2)).astype(np.float32)

    def reset_task(self, goal) -> None:
        """Make ``goal`` the task of the following episodes."""
        self._goal = self._check_goal(goal)
        self._goal_drawn = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and "goal" in options:
            self.reset_task(options["goal"])
        elif self._goal is None or (seed is not None and self._goal_drawn):
            self._goal = self.sample_tasks(1)[0]
            self._goal_drawn = True
        self._state = np.zeros(2, dtype=np.float32)
        self._steps = 0
        return self._state.copy(), {"goal": self._goal.copy()}

    def step(self, action):
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float32), -MAX_ACTION, MAX_ACTION)
        self._state = self._state + action
        dx = self._state[0] - self._goal[0]
        dy = self._state[1] - self._goal[1]
        reward = -np.sqrt(dx * dx + dy * dy)
        terminated = bool(abs(dx) < GOAL_RADIUS and abs(dy) < GOAL_RADIUS)
        self._steps += 1
        truncated = self._steps >= self.horizon
        return self._state.copy(), float(reward), terminated, truncated, {"goal": self._goal.copy()}


def register() -> None:
    """Register ``mlkit/Navigation2D-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=Navigation2DEnv, max_episode_steps=HORIZON)


register()

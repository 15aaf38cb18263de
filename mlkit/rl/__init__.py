"""Meta-reinforcement learning: MAML for policies on the 2-D navigation task (Finn et al., 2017, Sec. 5.3).

``Navigation2D`` and ``rollout`` step many tasks and trajectories at once in torch; ``Navigation2DEnv`` is the
same task as a ``gymnasium.Env`` (imported on first use: ``pip install -e ".[rl]"``), registered as
``mlkit/Navigation2D-v0`` as soon as gymnasium is imported, before or after ``mlkit.rl`` (``import mlkit`` does
not import gymnasium itself), or at once by ``register()``. ``MAMLTRPO`` meta-trains a ``GaussianMLPPolicy``; ``fine_tune``
adapts a policy to new goals; ``load_pretrained`` loads the shipped policies.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib import resources

import torch

from .baseline import advantages, baseline_features, discounted_returns, fit_linear_baseline
from .maml import MAMLTRPO, MetaBatch, adapt_tasks, dice_policy_gradient_loss, per_task_act, shared_act
from .training import FineTuneResult, TrainHistory, fine_tune, train
from .navigation import Navigation2D, Trajectories, rollout
from .policy import GaussianMLPPolicy, kl_divergence, log_prob
from .trpo import TRPOSettings, conjugate_gradient, line_search

PRETRAINED = ("maml", "joint")


def load_pretrained(name: str = "maml") -> tuple[GaussianMLPPolicy, dict]:
    """A shipped navigation policy and the settings that made it.

    Args:
        name: ``"maml"`` (meta-trained with :class:`MAMLTRPO`) or ``"joint"`` (one policy trained on all tasks
            jointly, the pretrained baseline). Both come from ``benchmarks/train_navigation.py``.
    Returns:
        ``(policy, info)``: a float32 :class:`GaussianMLPPolicy` and a dict with the training settings,
        seed, iterations and per-iteration returns.
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained policy {name!r}: use one of {PRETRAINED}")
    with resources.as_file(resources.files(__name__) / "pretrained" / f"navigation-{name}.pt") as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    policy = GaussianMLPPolicy(**state["info"]["policy"])
    policy.load_state_dict(state["policy"])
    return policy, state["info"]


def register() -> None:
    """Register ``mlkit/Navigation2D-v0`` with Gymnasium (needs the ``rl`` extra)."""
    from .gym_env import register as register_gym
    register_gym()


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when gymnasium is first imported, wraps its loader so that ``mlkit/Navigation2D-v0``
    is registered right after gymnasium's own registrations, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register()

        spec.loader.exec_module = exec_and_register
        return spec


def _register_with_gymnasium() -> None:
    """Register the environment now if gymnasium is imported, or once it is (if it is installed)."""
    if "gymnasium" in sys.modules:
        register()
    elif importlib.util.find_spec("gymnasium") is not None and \
            not any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterGymnasium())


def __getattr__(name: str):
    if name == "Navigation2DEnv":  # imported lazily so that `import mlkit` never imports gymnasium
        from .gym_env import Navigation2DEnv
        return Navigation2DEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Navigation2D", "Navigation2DEnv", "Trajectories", "rollout", "GaussianMLPPolicy", "log_prob",
           "kl_divergence", "discounted_returns", "baseline_features", "fit_linear_baseline", "advantages",
           "dice_policy_gradient_loss", "adapt_tasks", "per_task_act", "shared_act", "MAMLTRPO", "MetaBatch",
           "TRPOSettings", "conjugate_gradient", "line_search", "fine_tune", "FineTuneResult", "train", "TrainHistory",
           "load_pretrained", "register", "PRETRAINED"]

_register_with_gymnasium()

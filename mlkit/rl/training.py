"""Adapting and meta-training policies: fine-tuning to new goals (the evaluation) and the MAML-TRPO training loop."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import core
from ..train import save_atomic
from .baseline import advantages
from .maml import MAMLTRPO, adapt_tasks, pack, per_task_act
from .navigation import Navigation2D, as_batched, rollout
from .policy import GaussianMLPPolicy

Params = dict[str, Tensor]

@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
        returns: ``[tasks, steps + 1, n]``: the returns of the trajectories sampled after 0, 1, ... steps.
        params: ``steps + 1`` parameter dicts ``name -> [tasks, *shape]``, the policy after each step.
    """

    returns: Tensor
    params: list[Params]

    def mean_returns(self) -> Tensor:
        """``[tasks, steps + 1]``: each task's average return after each number of steps."""
        return self.returns.mean(-1)


def fine_tune(policy: GaussianMLPPolicy, goals: Tensor, steps: int = 3, trajectories: int = 40,
              lrs: Sequence[float] = (0.1, 0.05), gamma: float = 0.99, env: Navigation2D = Navigation2D(),
              generator: torch.Generator | None = None, params: Params | None = None) -> FineTuneResult:
    """Adapt ``policy`` to every goal with ``steps`` policy-gradient steps, fresh trajectories for each.

    MAML's evaluation protocol (Finn et al., 2017, Sec. 5.3 and App. A.2): each step samples ``trajectories``
    (40) from the current policy, fits the linear baseline and takes one REINFORCE step; the step size is
    ``lrs[k]`` for step k (the last entry repeats): 0.1, then 0.05.

    Args:
        goals: ``[tasks, 2]``. params: start from these shared parameters (default: the policy's).
        env: a :class:`Navigation2D` or the ``mlkit/Navigation2D-v0`` Gymnasium environment (its horizon).
    Returns:
        A :class:`FineTuneResult`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
        raise ValueError(f"trajectories must be a positive integer, got {trajectories!r}")
    lrs = [core.check_lr("each learning rate in lrs", lr, learnable=False) for lr in lrs]
    env = as_batched(env)
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    if goals.ndim != 2 or goals.shape[1] != 2:
        raise ValueError(f"goals must be [tasks, 2], got shape {tuple(goals.shape)}")
    source = policy.params() if params is None else params
    dtype = next(iter(source.values())).dtype
    goals = goals.to(dtype)
    tasks = goals.shape[0]
    current = {k: p.detach().expand(tasks, *p.shape) for k, p in source.items()}
    history, returns = [current], []
    for k in range(steps + 1):
        noise = torch.randn(tasks, trajectories, env.horizon, 2, generator=generator, dtype=dtype)
        sampled = rollout(per_task_act(policy, current), goals, noise, env)
        returns.append(sampled.returns())
        if k == steps:
            break
        x, y = pack(sampled, advantages(sampled, gamma))
        current = adapt_tasks(policy, current, x, y, lrs[min(k, len(lrs) - 1)], create_graph=False)
        history.append(current)
    return FineTuneResult(torch.stack(returns, 1), history)


# training ------------------------------------------------------------------------------------------------------
@dataclass
class TrainHistory:
    """Per meta-iteration: average returns before and after adaptation in the sampled batch, the
    surrogate gain, KL and backtracks of the TRPO step; and the total training time, wall-clock and CPU
    (the CPU seconds of this process, which a shared machine does not inflate)."""

    return_before: list[float] = field(default_factory=list)
    return_after: list[float] = field(default_factory=list)
    surrogate_gain: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    backtracks: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def train(algorithm: MAMLTRPO, iterations: int, meta_batch: int = 20, seed: int = 0, checkpoint=None,
          checkpoint_every: int = 10, progress: bool = True) -> TrainHistory:
    """Meta-train ``algorithm`` for ``iterations`` TRPO steps on ``meta_batch`` fresh goals each.

    Args:
        seed: fixes the goals and the action noise (with one CPU thread the run is reproducible).
        checkpoint: a file saved atomically every ``checkpoint_every`` iterations and at the end, and resumed
            from when it exists (its settings must match).
    Returns:
        A :class:`TrainHistory`. Raises ``ValueError`` on bad arguments before any work.
    """
    for name, value in (("iterations", iterations), ("meta_batch", meta_batch), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; give a file path such as {str(path / 'run.pt')!r}")
    config = {**algorithm.settings(), "meta_batch": meta_batch, "seed": seed}
    generator = torch.Generator().manual_seed(seed)
    history = TrainHistory()
    start = 0
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != config:
            raise ValueError(f"checkpoint {str(path)!r} was written with {state['config']}, not {config}; "
                             "use the same settings or another checkpoint path")
        algorithm.policy.load_state_dict(state["policy"])
        generator.set_state(state["generator"])
        history = TrainHistory(**state["history"])
        start = state["iteration"]
    began = time.perf_counter() - history.seconds
    cpu_began = time.process_time() - history.cpu_seconds
    bar = tqdm(range(start, iterations), initial=start, total=iterations, disable=not progress,
               desc="MAML-TRPO" if algorithm.inner_steps else "joint TRPO")
    for i in bar:
        goals = algorithm.env.sample_goals(meta_batch, generator)
        stats = algorithm.step(algorithm.sample(goals, generator))
        history.return_before.append(stats.get("return_before", math.nan))
        history.return_after.append(stats["return_after"])
        history.surrogate_gain.append(stats["surrogate_gain"])
        history.kl.append(stats["kl"])
        history.backtracks.append(stats["backtracks"])
        history.seconds = time.perf_counter() - began
        history.cpu_seconds = time.process_time() - cpu_began
        bar.set_postfix({"return": f"{stats['return_after']:.1f}"}, refresh=False)
        done = i + 1
        if path is not None and (done % checkpoint_every == 0 or done == iterations):
            save_atomic({"iteration": done, "policy": algorithm.policy.state_dict(), "generator": generator.get_state(),
                         "history": asdict(history), "config": config}, path)
    bar.close()
    return history

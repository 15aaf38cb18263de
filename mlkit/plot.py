"""Plots a reader wants: a sine task adapted step by step, and learning curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .maml import MAML
from .tasks import TaskBatch
from .tasks.sinusoid import Sinusoid
from .train import History


def sine_adaptation(algorithm: MAML, batch: TaskBatch, task: int = 0, steps=(0, 1, 10), ax=None):
    """Plot one sinusoid task: the true curve, its support points, and the model after each number of
    inner ``steps``. ``batch`` comes from :class:`~mlkit.tasks.Sinusoid` (its ``info`` has the curve).
    Returns the matplotlib ``Axes``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    device = next(algorithm.parameters()).device
    one = batch[task].to(device)
    x = torch.linspace(-5, 5, 200, device=device)[None, :, None]
    truth = Sinusoid.function(one.info["amplitude"], one.info["phase"], x)
    ax.plot(x[0, :, 0].cpu(), truth[0, :, 0].cpu(), color="black", lw=2, label="true task")
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(steps):
        params = algorithm.adapt(one.support_x[0], one.support_y[0], steps=k)
        with torch.no_grad():
            y = algorithm.predict(params, x[0])
        ax.plot(x[0, :, 0].cpu(), y[:, 0].cpu(), color=cmap(i / max(1, len(steps) - 1)), ls="--",
                label=f"after {k} step{'s' if k != 1 else ''}")
    ax.scatter(one.support_x[0, :, 0].cpu(), one.support_y[0, :, 0].cpu(), color="crimson", zorder=3,
               label=f"support ({one.support_x.shape[1]} shots)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="best")
    return ax


def learning_curves(*histories: History, labels=None, smooth: int = 50, ax=None):
    """Plot the meta-training loss (moving average over ``smooth`` iterations) and, where recorded, the
    periodic evaluation with its 95% CI, for one or more :class:`History`. Returns the ``Axes``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    labels = labels or [f"run {i}" for i in range(len(histories))]
    for history, label in zip(histories, labels):
        loss = torch.tensor(history.loss)
        window = max(1, min(smooth, len(loss)))
        averaged = torch.nn.functional.avg_pool1d(loss[None, None], window, stride=1)[0, 0]
        line, = ax.plot(history.iteration[window - 1:], averaged, label=f"{label}: train meta-loss")
        if history.eval_iteration:
            mean, ci = torch.tensor(history.eval_mean), torch.tensor(history.eval_ci95)
            ax.errorbar(history.eval_iteration, mean, yerr=ci, color=line.get_color(), marker="o", ls=":",
                        capsize=3, label=f"{label}: eval {history.metric}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss" if not histories or histories[0].metric != "accuracy" else "loss / accuracy")
    if histories and histories[0].metric != "accuracy":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return ax

"""Plots a reader wants: a sine task adapted step by step, learning curves, and few-shot episodes."""
from __future__ import annotations

import torch

from .algorithms import MAML
from .tasks import TaskBatch
from .tasks.sinusoid import Sinusoid
from .train import History


def sine_adaptation(algorithm: MAML, batch: TaskBatch, task: int = 0, steps=(0, 1, 10), inner_lr: float | None = None,
                    ax=None):
    """Plot one sinusoid task: the true curve, its support points, and the model after each number of
    inner ``steps`` (at ``inner_lr``, default the algorithm's). ``batch`` comes from
    :class:`~mlkit.tasks.Sinusoid` (its ``info`` has the curve). Returns the matplotlib ``Axes``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    device = next(algorithm.parameters()).device
    one = batch[task].to(device)
    x = torch.linspace(-5, 5, 200, device=device)[None, :, None]
    truth = Sinusoid.function(one.info["amplitude"], one.info["phase"], x)
    ax.plot(x[0, :, 0].cpu().numpy(), truth[0, :, 0].cpu().numpy(), color="black", lw=2, label="true task")
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(steps):
        params = algorithm.adapt(one.support_x[0], one.support_y[0], steps=k, inner_lr=inner_lr)
        with torch.no_grad():
            y = algorithm.predict(params, x[0])
        ax.plot(x[0, :, 0].cpu().numpy(), y[:, 0].cpu().numpy(), color=cmap(i / max(1, len(steps) - 1)), ls="--",
                label=f"after {k} step{'s' if k != 1 else ''}")
    ax.scatter(one.support_x[0, :, 0].cpu().numpy(), one.support_y[0, :, 0].cpu().numpy(), color="crimson", zorder=3,
               label=f"support ({one.support_x.shape[1]} shots)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="best")
    return ax


def learning_curves(*histories: History, labels=None, smooth: int = 50, ax=None):
    """Plot the meta-training loss (moving average over ``smooth`` iterations) and, where recorded, the
    periodic evaluation with its 95% CI, for one or more :class:`History`. Returns the ``Axes``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    labels = labels or [f"run {i}" for i in range(len(histories))]
    for history, label in zip(histories, labels):
        loss = torch.tensor(history.loss)
        window = max(1, min(smooth, len(loss)))
        averaged = torch.nn.functional.avg_pool1d(loss[None, None], window, stride=1)[0, 0]
        line, = ax.plot(history.iteration[window - 1:], averaged.numpy(), label=f"{label}: train meta-loss")
        if history.eval_iteration:
            mean, ci = torch.tensor(history.eval_mean), torch.tensor(history.eval_ci95)
            ax.errorbar(history.eval_iteration, mean.numpy(), yerr=ci.numpy(), color=line.get_color(), marker="o", ls=":",
                        capsize=3, label=f"{label}: eval {history.metric}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss" if not histories or histories[0].metric != "accuracy" else "loss / accuracy")
    if histories and histories[0].metric != "accuracy":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return ax


def sine_tasks(batch: TaskBatch, tasks: int = 4, ax=None):
    """Plot the first ``tasks`` sinusoid tasks of ``batch``: each true curve with its support (dots) and
    query (crosses) points. Returns the ``Axes``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    x = torch.linspace(-5, 5, 200)[None, :, None].expand(min(tasks, batch.tasks), -1, -1)
    curves = Sinusoid.function(batch.info["amplitude"][:tasks].cpu(), batch.info["phase"][:tasks].cpu(), x)
    for t in range(min(tasks, batch.tasks)):
        line, = ax.plot(x[t, :, 0].numpy(), curves[t, :, 0].numpy(), lw=1.5, alpha=0.8)
        ax.scatter(batch.support_x[t, :, 0].cpu().numpy(), batch.support_y[t, :, 0].cpu().numpy(), color=line.get_color(), s=25)
        ax.scatter(batch.query_x[t, :, 0].cpu().numpy(), batch.query_y[t, :, 0].cpu().numpy(), color=line.get_color(), marker="x", s=25)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("tasks: support (dots) and query (crosses)")
    return ax


def episode(batch: TaskBatch, task: int = 0, predictions: torch.Tensor | None = None, max_queries: int = 10):
    """Show one classification episode: the support images (one row per class) beside up to ``max_queries``
    query images per class. With ``predictions`` (``[tasks, n_query]`` labels), query titles turn green when
    right and red when wrong. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    sx, sy = batch.support_x[task].cpu(), batch.support_y[task].cpu()
    qx, qy = batch.query_x[task].cpu(), batch.query_y[task].cpu()
    ways = int(sy.max()) + 1
    shots = len(sy) // ways
    queries = min(max_queries, len(qy) // ways)
    fig, axes = plt.subplots(ways, shots + queries, figsize=(1.1 * (shots + queries), 1.15 * ways), squeeze=False)
    for label in range(ways):
        support = sx[sy == label]
        query_index = torch.nonzero(qy == label).flatten()[:queries]
        for j in range(shots + queries):
            ax = axes[label, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < shots:
                ax.imshow(support[j, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_title(f"class {label}", fontsize=7)
                for spine in ax.spines.values():
                    spine.set_color("tab:blue")
                    spine.set_linewidth(2)
            else:
                k = query_index[j - shots]
                ax.imshow(qx[k, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
                if predictions is not None:
                    guess = int(predictions[task, k])
                    ax.set_title(f"→ {guess}", fontsize=7, color="tab:green" if guess == label else "tab:red")
    fig.suptitle("support (blue frames) and query images, one row per class", fontsize=9)
    fig.tight_layout()
    return fig


def semi_episode(batch: TaskBatch, task: int = 0, max_queries: int = 3):
    """Show one semi-supervised episode (from ``FewShot(..., unlabeled=M, distractors=H)``): a row per task
    class with its support images (blue frames), its unlabelled images (green, dashed) and up to ``max_queries``
    queries (no frame), then a row per distractor class with its unlabelled images (red, dashed). The rows
    come from ``batch.info``; the model never sees which unlabelled image belongs where. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    if batch.unlabeled_x is None or "unlabeled_classes" not in batch.info:
        raise ValueError("semi_episode needs a batch with unlabelled images and their sources in info, as "
                         "mlkit.tasks.FewShot(..., unlabeled=M) samples them")
    sx, sy = batch.support_x[task].cpu(), batch.support_y[task].cpu()
    qx, qy = batch.query_x[task].cpu(), batch.query_y[task].cpu()
    ux, source = batch.unlabeled_x[task].cpu(), batch.info["unlabeled_classes"][task].cpu()
    classes, distractors = batch.info["classes"][task].cpu(), batch.info["distractors"][task].cpu()
    rows = [(f"class {label}", sx[sy == label], ux[source == cls], qx[qy == label][:max_queries], "tab:green")
            for label, cls in enumerate(classes.tolist())]
    rows += [("distractor", sx[:0], ux[source == cls], qx[:0], "tab:red") for cls in distractors.tolist()]
    shots, unlabeled = max(len(r[1]) for r in rows), max(len(r[2]) for r in rows)
    queries = max(len(r[3]) for r in rows)
    columns = shots + unlabeled + queries
    fig, axes = plt.subplots(len(rows), columns, figsize=(0.8 * columns, 0.85 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for r, (name, support, unlabelled, query, colour) in enumerate(rows):
        axes[r, 0].set_title(name, fontsize=7, loc="left")
        cells = ([(image, "tab:blue", "solid") for image in support] + [None] * (shots - len(support))
                 + [(image, colour, "dashed") for image in unlabelled] + [None] * (unlabeled - len(unlabelled))
                 + [(image, None, None) for image in query])
        for ax, cell in zip(axes[r], cells):
            if cell is None:
                continue
            image, edge, style = cell
            ax.axis("on")
            ax.imshow(image[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
            for spine in ax.spines.values():
                spine.set_visible(edge is not None)
                if edge is not None:
                    spine.set_color(edge)
                    spine.set_linestyle(style)
                    spine.set_linewidth(2)
    fig.suptitle("support (blue), unlabelled of the task's classes (green, dashed), distractors (red, dashed), "
                 "queries (no frame)", fontsize=8)
    fig.tight_layout()
    return fig

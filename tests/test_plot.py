import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba
import pytest
import torch

import mlkit


def test_sine_adaptation_draws_truth_one_curve_per_step_and_support():
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1))
    batch = mlkit.tasks.Sinusoid(shots=7).sample(3, generator=torch.Generator().manual_seed(0))
    ax = mlkit.plot.sine_adaptation(maml, batch, task=2, steps=(0, 1, 10))
    assert len(ax.lines) == 1 + 3
    truth = ax.lines[0].get_ydata()
    a, p = batch.info["amplitude"][2].item(), batch.info["phase"][2].item()
    x = ax.lines[0].get_xdata()
    assert abs(truth - a * torch.sin(torch.as_tensor(x) - p).numpy()).max() < 1e-5
    assert ax.collections[0].get_offsets().shape == (7, 2)
    plt.close("all")


def test_learning_curves_plots_loss_and_evaluations():
    history = mlkit.History(iteration=list(range(1, 101)), loss=[1 / i for i in range(1, 101)],
                            eval_iteration=[50, 100], eval_mean=[0.5, 0.2], eval_ci95=[0.1, 0.05], metric="mse")
    ax = mlkit.plot.learning_curves(history, history, labels=["a", "b"], smooth=10)
    assert len(ax.lines) >= 2 and len(ax.containers) == 2
    assert len(ax.lines[0].get_xdata()) == 91
    plt.close("all")


def test_sine_tasks_draws_one_curve_per_task_with_its_points():
    batch = mlkit.tasks.Sinusoid(shots=4, queries=6).sample(5, generator=torch.Generator().manual_seed(0))
    ax = mlkit.plot.sine_tasks(batch, tasks=3)
    assert len(ax.lines) == 3
    assert [c.get_offsets().shape[0] for c in ax.collections] == [4, 6] * 3
    plt.close("all")


def test_episode_grid_marks_right_and_wrong_predictions():
    dataset = mlkit.data.ClassDataset(torch.randint(0, 255, (40, 1, 6, 6), dtype=torch.uint8),
                                      torch.arange(4).repeat_interleave(10), list("abcd"))
    batch = mlkit.tasks.FewShot(dataset, ways=3, shots=2, queries=3).sample(2)
    predictions = batch.query_y.clone()
    predictions[1, 0] = (predictions[1, 0] + 1) % 3
    fig = mlkit.plot.episode(batch, task=1, predictions=predictions)
    axes = fig.axes
    assert len(axes) == 3 * (2 + 3)
    colors = [ax.title.get_color() for ax in axes if ax.get_title().startswith("→")]
    assert colors.count("tab:red") == 1 and colors.count("tab:green") == 8
    plt.close("all")


def test_sine_explorer_readapts_with_the_slider_values(monkeypatch):
    calls = []
    monkeypatch.setattr(mlkit.widgets, "sine_adaptation",
                        lambda algorithm, batch, steps, inner_lr, ax: calls.append((batch.support_x.shape[1], steps, inner_lr)))
    monkeypatch.setattr(plt, "show", lambda: None)
    explorer = mlkit.widgets.sine_explorer(mlkit.MAML(mlkit.models.MLP(1, [8], 1)))
    (shots, steps), (inner_lr, _task) = explorer.children[0].children, explorer.children[1].children
    shots.value, steps.value, inner_lr.value = 12, 7, 0.05
    assert calls[0] == (5, (0, 1), 0.01)
    assert calls[-1] == (12, (0, 7), pytest.approx(0.05))
    plt.close("all")


def test_importing_mlkit_does_not_import_pyplot():
    import subprocess
    import sys
    code = "import sys, mlkit; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_semi_episode_marks_support_unlabelled_and_distractor_images():
    dataset = mlkit.data.ClassDataset(torch.randint(0, 255, (60, 1, 6, 6), dtype=torch.uint8),
                                      torch.arange(6).repeat_interleave(10), list("abcdef"))
    batch = mlkit.tasks.FewShot(dataset, ways=3, shots=2, queries=3, unlabeled=4, distractors=2).sample(2)
    fig = mlkit.plot.semi_episode(batch, task=1, max_queries=2)
    assert len(fig.axes) == (3 + 2) * (2 + 4 + 2)
    edges = [(ax.spines["left"].get_edgecolor(), ax.spines["left"].get_visible()) for ax in fig.axes if ax.images]
    blue, green, red = (to_rgba(name) for name in ("tab:blue", "tab:green", "tab:red"))
    visible = [e for e, shown in edges if shown]
    assert visible.count(blue) == 3 * 2 and visible.count(green) == 3 * 4 and visible.count(red) == 2 * 4
    assert len(edges) - len(visible) == 3 * 2, "queries carry no frame"
    with pytest.raises(ValueError, match="unlabelled images"):
        mlkit.plot.semi_episode(mlkit.tasks.FewShot(dataset, ways=3, shots=1, queries=1).sample(1))
    plt.close("all")

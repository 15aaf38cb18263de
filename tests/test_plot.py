import matplotlib.pyplot as plt
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

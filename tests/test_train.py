import math

import pytest
import torch

import mlkit
from mlkit.tasks import TaskBatch


def sine_maml(seed=0, **kwargs):
    torch.manual_seed(seed)
    return mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1), loss="mse", **{"inner_lr": 0.01, **kwargs})


def test_same_seed_gives_the_same_numbers():
    family = mlkit.tasks.Sinusoid()
    runs = [mlkit.fit(sine_maml(), family, iterations=15, meta_batch=5, seed=3, progress=False, device="cpu")
            for _ in range(2)]
    assert runs[0].loss == runs[1].loss
    other = mlkit.fit(sine_maml(), family, iterations=15, meta_batch=5, seed=4, progress=False, device="cpu")
    assert other.loss != runs[0].loss


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    family = mlkit.tasks.Sinusoid()
    whole = sine_maml()
    full = mlkit.fit(whole, family, iterations=30, meta_batch=5, progress=False, device="cpu")
    path = tmp_path / "run.pt"
    mlkit.fit(sine_maml(), family, iterations=20, meta_batch=5, checkpoint=path, checkpoint_every=10,
              progress=False, device="cpu")
    resumed_algo = sine_maml(seed=99)  # different init: everything must come from the checkpoint
    resumed = mlkit.fit(resumed_algo, family, iterations=30, meta_batch=5, checkpoint=path, checkpoint_every=10,
                        progress=False, device="cpu")
    assert resumed.loss == full.loss
    for a, b in zip(whole.parameters(), resumed_algo.parameters()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary files left behind


def test_time_budget_stops_training_and_a_resumed_run_does_not_overrun(tmp_path):
    path = tmp_path / "run.pt"
    history = mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=10_000, meta_batch=2, minutes=1e-9,
                        checkpoint=path, eval_every=1000, eval_tasks=5, progress=False)
    assert history.iteration == [1] and history.eval_iteration == [1]
    again = mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=10_000, meta_batch=2, minutes=1e-9,
                      checkpoint=path, eval_every=1000, eval_tasks=5, progress=False)
    assert again.iteration == [1]


def test_a_cpu_time_budget_counts_this_process_only():
    history = mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=10_000, meta_batch=2, minutes=1e-9, clock="cpu",
                        progress=False)
    assert history.iteration == [1] and 0 < history.seconds < 60


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=2, meta_batch=3, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="written with"):
        mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=4, meta_batch=5, checkpoint=path, progress=False)


def test_non_finite_loss_raises_before_anything_is_written(tmp_path):
    torch.manual_seed(0)
    nan_loss = lambda p, t: ((p - t) ** 2).mean() * float("nan")  # noqa: E731
    algo = mlkit.MAML(mlkit.models.MLP(1, [8], 1), loss=nan_loss)
    path = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match="meta-loss is nan at iteration 0"):
        mlkit.fit(algo, mlkit.tasks.Sinusoid(), iterations=5, checkpoint=path, checkpoint_every=1, progress=False)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"iterations": 0}, "iterations"), ({"meta_batch": 0}, "meta_batch"), ({"meta_lr": -1.0}, "meta_lr"),
    ({"meta_lr": float("nan")}, "meta_lr"), ({"device": "tpu"}, "unknown device"), ({"eval_every": 0}, "eval_every"),
    ({"checkpoint_every": -5}, "checkpoint_every"), ({"minutes": 0}, "minutes"), ({"minutes": float("inf")}, "minutes"),
    ({"clock": "gpu"}, "clock"), ({"optimizer": 3}, "optimizer"), ({"clip_grad_norm": 0}, "clip_grad_norm"),
    ({"scheduler": "linear"}, "scheduler"), ({"on_step": 1}, "on_step"),
])
def test_bad_fit_arguments_raise_before_any_file_is_written(tmp_path, kwargs, match):
    args = {"iterations": 5, "checkpoint": tmp_path / "run.pt", "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), **args)
    assert list(tmp_path.iterdir()) == []


def test_periodic_evaluation_uses_the_eval_family():
    train, held_out = mlkit.tasks.Sinusoid(amplitude=(0.1, 0.2)), mlkit.tasks.Sinusoid(amplitude=(4.9, 5.0))
    on_train = mlkit.fit(sine_maml(), train, iterations=2, meta_batch=2, eval_every=2, eval_tasks=20, progress=False)
    on_held_out = mlkit.fit(sine_maml(), train, iterations=2, meta_batch=2, eval_every=2, eval_tasks=20,
                            eval_family=held_out, progress=False)
    assert on_held_out.eval_mean[0] > 20 * on_train.eval_mean[0]  # big amplitudes, big errors


def test_fit_rejects_what_is_not_an_algorithm_or_a_family():
    with pytest.raises(ValueError, match="mlkit algorithm"):
        mlkit.fit(mlkit.models.MLP(1, [4], 1), mlkit.tasks.Sinusoid(), iterations=1)
    with pytest.raises(ValueError, match="task family"):
        mlkit.fit(sine_maml(), [1, 2, 3], iterations=1)
    with pytest.raises(ValueError, match="eval_family"):
        mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=1, eval_family="val")


def test_resolve_device():
    assert mlkit.resolve_device("cpu") == torch.device("cpu")
    assert mlkit.resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("tpu", "gpu0", 3):
        with pytest.raises(ValueError, match="device"):
            mlkit.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            mlkit.resolve_device("cuda")


def test_evaluate_returns_mean_and_ci95_of_per_task_mse():
    algo = sine_maml()
    family = mlkit.tasks.Sinusoid(shots=5, queries=9)
    mean, ci95 = mlkit.evaluate(algo, family, tasks=30, steps=3, meta_batch=7, seed=11)
    batch = family.sample(30, generator=torch.Generator().manual_seed(11))
    per_task = []
    for i in range(30):
        params = algo.adapt(batch.support_x[i], batch.support_y[i], steps=3)
        per_task.append(((algo.predict(params, batch.query_x[i]) - batch.query_y[i]) ** 2).mean().item())
    per_task = torch.tensor(per_task, dtype=torch.float64)
    assert mean == pytest.approx(per_task.mean().item(), rel=1e-5)
    assert ci95 == pytest.approx(1.96 * per_task.std().item() / math.sqrt(30), rel=1e-4)


class Prototypes:
    """A toy classification family: class c is a Gaussian blob around a random centre."""

    def sample(self, tasks, generator=None, device=None):
        centres = torch.randn(tasks, 3, 1, 4, generator=generator) * 3
        labels = torch.arange(3).repeat_interleave(6).expand(tasks, -1)
        x = centres.repeat_interleave(6, dim=1)[:, :, 0] + 0.3 * torch.randn(tasks, 18, 4, generator=generator)
        s = torch.tensor([i % 6 < 2 for i in range(18)])
        return TaskBatch(x[:, s], labels[:, s], x[:, ~s], labels[:, ~s])


def test_evaluate_reports_accuracy_in_percent_for_classification():
    torch.manual_seed(0)
    algo = mlkit.MAML(mlkit.models.MLP(4, [32], 3), loss="cross_entropy", inner_lr=0.5)
    before, _ = mlkit.evaluate(algo, Prototypes(), tasks=50, steps=0)
    after, ci = mlkit.evaluate(algo, Prototypes(), tasks=50, steps=10)
    assert 0 <= before <= 100 and 0 < ci < 50
    assert after > 80 > before + 20


@pytest.mark.slow
def test_short_fit_beats_unadapted_and_jointly_trained_models():
    family = mlkit.tasks.Sinusoid(shots=10, queries=10)
    maml = sine_maml()
    history = mlkit.fit(maml, family, iterations=1500, meta_batch=25, meta_lr=1e-3, eval_every=500, progress=False)
    torch.manual_seed(0)
    joint = mlkit.JointTraining(mlkit.models.MLP(1, [40, 40], 1), inner_lr=0.01)
    mlkit.fit(joint, family, iterations=1500, meta_batch=25, meta_lr=1e-3, progress=False)
    adapted, _ = mlkit.evaluate(maml, family, tasks=300, steps=10)
    unadapted, _ = mlkit.evaluate(maml, family, tasks=300, steps=0)
    joint_adapted, _ = mlkit.evaluate(joint, family, tasks=300, steps=10)
    assert adapted < 0.4 * unadapted
    assert adapted < 0.4 * joint_adapted
    assert history.eval_iteration == [500, 1000, 1500] and history.eval_mean[-1] < history.eval_mean[0]


# Checkpoints remember the algorithm --------------------------------------------------------------------------
@pytest.mark.parametrize("change", [{"inner_steps": 3}, {"first_order": True}, {"inner_lr": 0.02}])
def test_resuming_with_other_inner_loop_settings_is_refused_before_anything_changes(tmp_path, change):
    path = tmp_path / "run.pt"
    mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=2, meta_batch=2, checkpoint=path, progress=False)
    other = sine_maml(seed=5, **change)
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError, match=r"saved by MAML\(loss=mse, inner_lr=0.01, inner_steps=1, first_order=False\)"):
        mlkit.fit(other, mlkit.tasks.Sinusoid(), iterations=4, meta_batch=2, checkpoint=path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


def test_load_state_dict_refuses_another_algorithm_or_loss():
    state = sine_maml().state_dict()
    with pytest.raises(ValueError, match="the algorithm"):
        mlkit.JointTraining(mlkit.models.MLP(1, [40, 40], 1), inner_lr=0.01).load_state_dict(state)
    with pytest.raises(ValueError, match="the loss"):
        mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1), loss=torch.nn.L1Loss(), inner_lr=0.01).load_state_dict(state)
    restored = sine_maml(seed=3)
    restored.load_state_dict(state)
    assert restored.inner_lr == 0.01 and torch.equal(restored.model[0].weight, state["model.0.weight"])


def test_a_resumed_run_with_dropout_equals_the_uninterrupted_one(tmp_path):
    def dropout_maml():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1))
        return mlkit.MAML(model, inner_lr=0.01)

    family = mlkit.tasks.Sinusoid()
    whole = dropout_maml()
    full = mlkit.fit(whole, family, iterations=12, meta_batch=3, progress=False, device="cpu")
    path = tmp_path / "run.pt"
    mlkit.fit(dropout_maml(), family, iterations=6, meta_batch=3, checkpoint=path, progress=False, device="cpu")
    resumed_algo = dropout_maml()
    torch.manual_seed(123)  # another global random state: the checkpoint must restore the one the run had
    resumed = mlkit.fit(resumed_algo, family, iterations=12, meta_batch=3, checkpoint=path, progress=False, device="cpu")
    assert resumed.loss == full.loss
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed_algo.parameters()))


# fit, opened up ------------------------------------------------------------------------------------------------
def test_sgd_at_meta_lr_takes_exactly_one_plain_gradient_step():
    family = mlkit.tasks.Sinusoid()
    algo = sine_maml()
    batch = family.sample(4, generator=torch.Generator().manual_seed(0))
    expected = [p - 0.1 * g for p, g in zip(algo.parameters(), torch.autograd.grad(algo.meta_loss(batch), list(algo.parameters())))]
    mlkit.fit(algo, family, iterations=1, meta_batch=4, optimizer="sgd", meta_lr=0.1, device="cpu", progress=False)
    for p, e in zip(algo.parameters(), expected):
        torch.testing.assert_close(p, e)


def test_optimizer_factory_scheduler_and_callbacks_are_used():
    steps, evals = [], []
    history = mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=10, meta_batch=2, device="cpu", progress=False,
                        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
                        scheduler=lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=10),
                        on_step=steps.append, on_eval=evals.append, eval_every=5, eval_tasks=4)
    assert [s.iteration for s in steps] == list(range(1, 11)) and [s.loss for s in steps] == history.loss
    assert [round(s.lr, 8) for s in steps] == [round(0.01 * (1 - i / 10), 8) for i in range(10)]
    assert [(e.iteration, e.metric) for e in evals] == [(5, "mse"), (10, "mse")] and evals[1].mean == history.eval_mean[1]


def test_meta_lr_with_an_optimizer_factory_or_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="inside the optimizer factory"):
        mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=1, meta_lr=0.1,
                  optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        mlkit.fit(sine_maml(), mlkit.tasks.Sinusoid(), iterations=1, optimizer="adagrad")


def test_gradient_clipping_bounds_the_step():
    family = mlkit.tasks.Sinusoid()
    algo = sine_maml()
    before = torch.cat([p.detach().flatten() for p in algo.parameters()])
    mlkit.fit(algo, family, iterations=1, meta_batch=4, optimizer="sgd", meta_lr=1.0, clip_grad_norm=0.01,
              device="cpu", progress=False)
    after = torch.cat([p.detach().flatten() for p in algo.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)


# evaluate -------------------------------------------------------------------------------------------------------
def test_evaluate_reports_accuracy_for_any_cross_entropy_and_takes_a_metric():
    torch.manual_seed(0)
    smoothed = mlkit.MAML(mlkit.models.MLP(4, [32], 3), loss=torch.nn.CrossEntropyLoss(label_smoothing=0.1),
                          inner_lr=0.5)
    accuracy, _ = mlkit.evaluate(smoothed, Prototypes(), tasks=20, steps=5)
    assert mlkit.train.metric_name(smoothed) == "accuracy" and 0 <= accuracy <= 100
    loss, _ = mlkit.evaluate(smoothed, Prototypes(), tasks=20, steps=5, metric="loss")
    errors, _ = mlkit.evaluate(smoothed, Prototypes(), tasks=20, steps=5,
                               metric=lambda pred, y: (pred.argmax(-1) != y).float().mean() * 100)
    assert errors == pytest.approx(100 - accuracy) and 0 < loss < 5
    with pytest.raises(ValueError, match="metric"):
        mlkit.evaluate(smoothed, Prototypes(), tasks=2, metric="f1")


def test_evaluate_inner_lr_overrides_the_algorithms_step_size():
    family = mlkit.tasks.Sinusoid()
    at_default = mlkit.evaluate(sine_maml(), family, tasks=20, steps=2)
    overridden = mlkit.evaluate(sine_maml(), family, tasks=20, steps=2, inner_lr=0.05)
    rebuilt = mlkit.evaluate(sine_maml(inner_lr=0.05), family, tasks=20, steps=2)
    assert overridden == rebuilt != at_default


def test_per_layer_inner_learning_rates_use_the_longest_matching_prefix(float64):
    torch.manual_seed(0)
    model = mlkit.models.MLP(1, [8], 1)
    batch = mlkit.tasks.Sinusoid().sample(3).to(torch.float64)
    uniform = mlkit.MAML(model.double(), inner_lr={"": 0.02})
    torch.testing.assert_close(uniform.meta_loss(batch), mlkit.MAML(model, inner_lr=0.02).meta_loss(batch))
    per_layer = mlkit.MAML(model, inner_lr={"": 0.02, "2": 0.3, "2.bias": 0.0})
    assert per_layer.learning_rates() == {"0.weight": 0.02, "0.bias": 0.02, "2.weight": 0.3, "2.bias": 0.0}
    adapted = per_layer.adapt(batch.support_x[0], batch.support_y[0], steps=2)
    assert torch.equal(adapted["2.bias"], model[2].bias) and not torch.equal(adapted["2.weight"], model[2].weight)
    with pytest.raises(ValueError, match=r"no step size for parameters \['0.weight', '0.bias'\]"):
        mlkit.MAML(model, inner_lr={"2": 0.3})


def test_test_time_adaptation_without_a_graph_keeps_no_memory_of_the_steps():
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.Conv4(1, ways=5, filters=8), loss="cross_entropy", inner_lr=0.4)
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    tracked = maml.adapt(x, y, steps=5)
    free = maml.adapt(x, y, steps=5, differentiable=False)
    assert all(t.grad_fn is not None for t in tracked.values())
    assert all(f.grad_fn is None and not f.requires_grad for f in free.values())
    for name in free:
        torch.testing.assert_close(free[name], tracked[name].detach())

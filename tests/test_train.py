import math

import pytest
import torch

import mlkit
from mlkit.tasks import TaskBatch


def sine_maml(seed=0, **kwargs):
    torch.manual_seed(seed)
    return mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1), loss="mse", inner_lr=0.01, **kwargs)


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

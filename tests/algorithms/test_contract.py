"""One contract over every algorithm mlkit exports. A new algorithm joins with one line in ALGORITHMS."""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

import mlkit
from conftest import flat_grad


@dataclass
class Spec:
    make: Callable[..., mlkit.MetaLearner]   # (model, loss) -> algorithm
    regression: bool = True                  # also runs on sinusoids (an MSE loss)
    zero_steps: str = "query"                # what meta_loss(steps=0) is: "query" loss at θ, "pooled" loss, or "none"
    running_stats_refused: bool = True       # batch norm updating running statistics cannot be adapted


ALGORITHMS = {
    "maml": Spec(lambda model, loss: mlkit.MAML(model, loss, inner_lr=0.1, inner_steps=2)),
    "fomaml": Spec(lambda model, loss: mlkit.MAML(model, loss, inner_lr=0.1, inner_steps=2, first_order=True)),
    "meta-sgd": Spec(lambda model, loss: mlkit.MetaSGD(model, loss, inner_lr=0.1, inner_steps=2)),
    "reptile": Spec(lambda model, loss: mlkit.Reptile(model, loss, inner_lr=0.1, inner_steps=2)),
    "anil": Spec(lambda model, loss: mlkit.ANIL(model, loss, inner_lr=0.1, inner_steps=2)),
    "anil-fo": Spec(lambda model, loss: mlkit.ANIL(model, loss, inner_lr=0.1, inner_steps=2, first_order=True)),
    "joint": Spec(lambda model, loss: mlkit.JointTraining(model, loss, inner_lr=0.1, inner_steps=2), zero_steps="pooled"),
    "protonet": Spec(lambda model, loss: mlkit.ProtoNet(model), regression=False, zero_steps="none"),
    "protonet-soft-kmeans": Spec(lambda model, loss: mlkit.SemiProtoNet(model, "soft_kmeans"), regression=False, zero_steps="none"),
    "protonet-cluster": Spec(lambda model, loss: mlkit.SemiProtoNet(model, "soft_kmeans_cluster"), regression=False, zero_steps="none"),
    "protonet-masked": Spec(lambda model, loss: mlkit.SemiProtoNet(model, "masked_soft_kmeans"), regression=False, zero_steps="none"),
}
CLASSIFIERS = list(ALGORITHMS)
REGRESSORS = [name for name, spec in ALGORITHMS.items() if spec.regression]


def conv_classifier(ways=3, dropout=False, frozen=False, norm=mlkit.models.BatchNorm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.ReLU(), *( [nn.Dropout2d(0.2)] if dropout else []),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1), norm(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 8), nn.Tanh(), nn.Linear(8, ways))
    if frozen:
        model[0].requires_grad_(False)
    return model


def image_episodes(tasks=3, ways=3, shots=2, queries=2, seed=0, dtype=torch.float64):
    """Episodes with 4 unlabelled images per task, which algorithms without a use for them ignore."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, ways * (shots + queries) + 4, 1, 6, 6, generator=g, dtype=dtype)
    y = torch.stack([torch.randperm(ways, generator=g).repeat(shots + queries) for _ in range(tasks)])
    n, m = ways * shots, ways * (shots + queries)
    return mlkit.TaskBatch(x[:, :n], y[:, :n], x[:, n:m], y[:, n:], unlabeled_x=x[:, m:])


class Blobs:
    """A tiny classification family on 6x6 images: class k is a bright pixel at a task-specific place."""

    def sample(self, tasks, generator=None, device=None):
        g = generator or torch.Generator().manual_seed(0)
        spots = torch.stack([torch.randperm(36, generator=g)[:3] for _ in range(tasks)])       # [tasks, 3]
        labels = torch.arange(3).repeat(4).expand(tasks, -1)                                  # 4 per class
        x = 0.3 * torch.randn(tasks, 12, 36, generator=g)
        x.scatter_add_(2, spots.gather(1, labels)[..., None], torch.full((tasks, 12, 1), 3.0))
        x = x.view(tasks, 12, 1, 6, 6)
        support = (torch.arange(12) % 4) < 2
        batch = mlkit.TaskBatch(x[:, support], labels[:, support], x[:, ~support], labels[:, ~support])
        return batch if device is None else batch.to(device)


def parametrize(names):
    return pytest.mark.parametrize("name", names)


@parametrize(CLASSIFIERS)
@pytest.mark.parametrize("cpu_vmap", ["vmap", "task by task"])
def test_batched_equals_the_per_task_loop_in_values_and_gradients(float64, name, cpu_vmap, monkeypatch):
    monkeypatch.setattr(mlkit.algorithms.base, "CPU_CONV_VMAP_MAX_ELEMENTS", 10**9 if cpu_vmap == "vmap" else 0)
    algo = ALGORITHMS[name].make(conv_classifier().double(), "cross_entropy")
    batch = image_episodes()
    batched, looped = algo.meta_loss(batch, batched=True), algo.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flat_grad(batched, algo.parameters()), flat_grad(looped, algo.parameters()),
                               rtol=1e-9, atol=1e-10)
    predictions = algo.query_predictions(batch)
    algo.batched = False
    torch.testing.assert_close(predictions, algo.query_predictions(batch), rtol=1e-9, atol=1e-10)


@parametrize(CLASSIFIERS)
def test_every_meta_parameter_receives_a_finite_nonzero_gradient(name):
    algo = ALGORITHMS[name].make(conv_classifier(), "cross_entropy")
    algo.meta_loss(image_episodes(dtype=torch.float32)).backward()
    for param_name, p in algo.named_parameters():
        if name.startswith("protonet") and param_name.startswith("model.10."):
            continue  # the last layer's bias shifts every embedding alike, so distances ignore it
        if param_name in ("model.0.bias", "model.3.bias"):
            continue  # a conv bias right before batch norm cancels out: its true gradient is zero
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, param_name


@parametrize(CLASSIFIERS)
def test_zero_inner_steps_behave_as_documented(float64, name):
    spec = ALGORITHMS[name]
    algo = spec.make(conv_classifier().double(), "cross_entropy")
    batch = image_episodes()
    if spec.zero_steps == "none":
        with pytest.raises(ValueError, match="no inner steps"):
            algo.meta_loss(batch, steps=2)
        return
    loss = algo.meta_loss(batch, steps=0)
    model, ce = algo.model, nn.functional.cross_entropy
    if spec.zero_steps == "pooled":
        expected = torch.stack([ce(model(torch.cat([sx, qx])), torch.cat([sy, qy])) for sx, sy, qx, qy in
                                zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)]).mean()
    else:
        expected = torch.stack([ce(model(qx), qy) for qx, qy in zip(batch.query_x, batch.query_y)]).mean()
    torch.testing.assert_close(loss, expected)
    if name == "reptile":
        assert all(g.abs().max() == 0 for g in torch.autograd.grad(loss, list(algo.parameters())))


@parametrize(CLASSIFIERS)
def test_fit_then_evaluate_on_few_shot_episodes(name, tmp_path):
    algo = ALGORITHMS[name].make(conv_classifier(), "cross_entropy")
    history = mlkit.fit(algo, Blobs(), iterations=4, meta_batch=2, device="cpu", progress=False, eval_every=2,
                        eval_tasks=4)
    accuracy, ci95 = mlkit.evaluate(algo, Blobs(), tasks=6)
    assert history.metric == "accuracy" and len(history.eval_mean) == 2 and 0 <= accuracy <= 100 and ci95 >= 0


@parametrize(REGRESSORS)
def test_fit_then_evaluate_on_sinusoids(name):
    torch.manual_seed(0)
    algo = ALGORITHMS[name].make(mlkit.models.MLP(1, [16], 1), "mse")
    mlkit.fit(algo, mlkit.tasks.Sinusoid(), iterations=4, meta_batch=3, device="cpu", progress=False)
    mse, _ = mlkit.evaluate(algo, mlkit.tasks.Sinusoid(), tasks=10)
    assert mse > 0


@parametrize(CLASSIFIERS)
def test_checkpoint_and_resume_give_bit_identical_parameters(name, tmp_path):
    def run(iterations, algo=None, **kw):
        algo = algo or ALGORITHMS[name].make(conv_classifier(), "cross_entropy")
        return algo, mlkit.fit(algo, Blobs(), iterations=iterations, meta_batch=2, device="cpu", progress=False, **kw)

    whole, full = run(6)
    path = tmp_path / "run.pt"
    run(3, checkpoint=path, checkpoint_every=1)
    torch.manual_seed(99)
    resumed, history = run(6, algo=ALGORITHMS[name].make(conv_classifier(), "cross_entropy"), checkpoint=path)
    assert history.loss == full.loss
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values())
               if isinstance(a, torch.Tensor))


@parametrize(CLASSIFIERS)
def test_dropout_and_frozen_parameters_are_served(name):
    algo = ALGORITHMS[name].make(conv_classifier(dropout=True, frozen=True), "cross_entropy")
    frozen = algo.model[0].weight.detach().clone()
    mlkit.fit(algo, Blobs(), iterations=2, meta_batch=2, device="cpu", progress=False)
    assert torch.equal(algo.model[0].weight, frozen)
    first, second = mlkit.evaluate(algo, Blobs(), tasks=4), mlkit.evaluate(algo, Blobs(), tasks=4)
    assert first == second


@parametrize(CLASSIFIERS)
def test_bad_arguments_raise_value_error_before_any_work(name):
    spec = ALGORITHMS[name]
    if not name.startswith("protonet"):
        with pytest.raises(ValueError, match="unknown loss"):
            spec.make(conv_classifier(), "hinge")
        with pytest.raises(ValueError, match="inner_steps"):
            spec.make(conv_classifier(), "cross_entropy").meta_loss(image_episodes(), steps=-1)
    if spec.running_stats_refused:
        with pytest.raises(ValueError, match=r"model\.1 \(BatchNorm2d\) updates running statistics"):
            spec.make(conv_classifier(norm=nn.BatchNorm2d), "cross_entropy")
    algo = spec.make(conv_classifier(), "cross_entropy")
    batch = image_episodes(dtype=torch.float32)
    before = [p.detach().clone() for p in algo.parameters()]
    with pytest.raises(ValueError, match="examples per task"):
        algo.meta_loss(mlkit.TaskBatch(batch.support_x, batch.support_y[:, :-1], batch.query_x, batch.query_y))
    two_channels = mlkit.TaskBatch(torch.cat([batch.support_x] * 2, 2), batch.support_y,
                                   torch.cat([batch.query_x] * 2, 2), batch.query_y)
    with pytest.raises(ValueError, match=r"cannot run on support_x of the first task, shape \[6, 2, 6, 6\]"):
        algo.meta_loss(two_channels)
    assert all(torch.equal(a, b) for a, b in zip(before, algo.parameters())) and all(p.grad is None for p in algo.parameters())

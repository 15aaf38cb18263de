import functools

import pytest
import torch
import torch.nn.functional as F

import mlkit
from mlkit import core
from conftest import random_tasks


def test_resolve_loss_maps_names_and_callables():
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(core.resolve_loss("mse")(x, y), F.mse_loss(x, y))
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(core.resolve_loss("cross_entropy")(logits, labels), F.cross_entropy(logits, labels))
    l1 = lambda p, t: (p - t).abs().mean()  # noqa: E731
    assert core.resolve_loss(l1) is l1


@pytest.mark.parametrize("bad", ["l2", "", 3])
def test_resolve_loss_rejects_unknown(bad):
    with pytest.raises(ValueError, match="loss"):
        core.resolve_loss(bad)


def test_named_losses_refuse_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match=r"predictions \[10, 1\] and targets \[10\]"):
        core.resolve_loss("mse")(torch.randn(10, 1), torch.randn(10))
    with pytest.raises(ValueError, match="integer class labels"):
        core.resolve_loss("cross_entropy")(torch.randn(4, 3), torch.zeros(4))


@pytest.mark.parametrize("loss, expected", [
    ("cross_entropy", True), (F.cross_entropy, True), (torch.nn.CrossEntropyLoss(label_smoothing=0.1), True),
    (functools.partial(F.cross_entropy, label_smoothing=0.2), True), ("mse", False), (F.mse_loss, False)])
def test_is_classification_recognises_every_cross_entropy(loss, expected):
    assert core.is_classification(loss) is expected


def test_adapt_zero_steps_returns_initial_params():
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    params = maml.params()
    adapted = core.adapt(maml.functional_forward, F.mse_loss, params, torch.randn(5, 3), torch.randn(5, 1), 0.1, 0)
    assert all(adapted[k] is params[k] for k in params)


def test_adapt_one_step_is_a_gradient_descent_step(float64):
    model = mlkit.models.MLP(3, [8], 1)
    maml = mlkit.MAML(model, inner_lr=0.3)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    grads = torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))
    adapted = maml.adapt(x, y, steps=1)
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(adapted[name], p - 0.3 * g)


def test_adapt_moves_only_the_named_parameters_and_passes_the_others_through(float64):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    params = maml.params()
    adapted = core.adapt(maml.functional_forward, F.mse_loss, params, torch.randn(5, 3), torch.randn(5, 1), 0.3, 2,
                         adapted={"2.weight", "2.bias"})
    assert adapted["0.weight"] is params["0.weight"] and adapted["0.bias"] is params["0.bias"]
    assert not torch.equal(adapted["2.weight"], params["2.weight"])


def test_non_differentiable_adaptation_keeps_no_graph_and_equals_the_differentiable_one(float64):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    tracked = core.adapt(maml.functional_forward, F.mse_loss, maml.params(), x, y, 0.3, 3)
    free = core.adapt(maml.functional_forward, F.mse_loss, maml.params(), x, y, 0.3, 3, differentiable=False)
    for name in tracked:
        assert tracked[name].requires_grad and not free[name].requires_grad and free[name].grad_fn is None
        torch.testing.assert_close(free[name], tracked[name].detach())


def test_adapt_reduces_support_loss():
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.MLP(3, [16], 1), inner_lr=0.05)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    before = F.mse_loss(maml.predict(maml.params(), x), y)
    after = F.mse_loss(maml.predict(maml.adapt(x, y, steps=20), x), y)
    assert after < 0.8 * before


def test_map_tasks_vmap_equals_loop():
    batch = random_tasks()
    f = lambda x, y: (x.sum(-1, keepdim=True) * y).mean()  # noqa: E731
    torch.testing.assert_close(core.map_tasks(f, batch.support_x, batch.support_y),
                               core.map_tasks(f, batch.support_x, batch.support_y, batched=False))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.1", None, True])
def test_check_number_rejects_non_finite_values(value):
    with pytest.raises(ValueError, match="inner_lr"):
        core.check_number("inner_lr", value)


@pytest.mark.parametrize("steps", [-1, 1.5, None, True])
def test_check_steps_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="inner_steps"):
        core.check_steps(steps)


def convnet_with_batchnorm():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), mlkit.models.BatchNorm(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), mlkit.models.BatchNorm(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 3))


@pytest.mark.parametrize("rates", ["float", "per-parameter", "per-layer"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("adapted", [None, ("2.weight", "2.bias")])
def test_adapt_tasks_equals_adapt_on_each_task(float64, rates, first_order, adapted):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    params = maml.params()
    g = torch.Generator().manual_seed(1)
    lr = {"float": 0.2,
          "per-parameter": {k: (torch.rand(v.shape, generator=g) * 0.3).requires_grad_() for k, v in params.items()},
          "per-layer": {"0.weight": 0.1, "0.bias": 0.2, "2.weight": 0.3, "2.bias": 0.05}}[rates]
    batch = random_tasks(tasks=3)
    per_task, shared = core.adapt_tasks(maml.functional_forward, F.mse_loss, params, batch.support_x,
                                        batch.support_y, lr, 3, first_order, adapted=adapted)
    names = list(params) if adapted is None else list(adapted)
    assert set(per_task) == set(names) and set(shared) == set(params) - set(names)
    assert all(per_task[k].shape == (3, *params[k].shape) for k in names)
    assert all(shared[k] is params[k] for k in shared)
    wanted = list(params.values()) + (list(lr.values()) if rates == "per-parameter" else [])
    direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in params.items()}
    for t in range(3):
        single = core.adapt(maml.functional_forward, F.mse_loss, params, batch.support_x[t], batch.support_y[t],
                            lr, 3, first_order, adapted)
        for k in names:
            torch.testing.assert_close(per_task[k][t], single[k])
        # The Jacobian of θ'_t with respect to θ (and α), projected on a random direction.
        batched_jvp = torch.autograd.grad(sum((per_task[k][t] * direction[k]).sum() for k in names), wanted,
                                          retain_graph=True, allow_unused=True)
        single_jvp = torch.autograd.grad(sum((single[k] * direction[k]).sum() for k in names), wanted,
                                         allow_unused=True)
        for got, expected in zip(batched_jvp, single_jvp):
            assert (got is None) == (expected is None)
            if got is not None:
                torch.testing.assert_close(got, expected)


def test_adapt_tasks_without_gradients_returns_detached_adapted_params(float64):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    batch = random_tasks(tasks=2)
    with torch.no_grad():
        detached, _ = core.adapt_tasks(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x,
                                       batch.support_y, 0.2, 2)
    tracked, _ = core.adapt_tasks(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x,
                                  batch.support_y, 0.2, 2)
    for k in detached:
        assert not detached[k].requires_grad and tracked[k].requires_grad
        torch.testing.assert_close(detached[k], tracked[k].detach())


@pytest.mark.parametrize("first_order", [False, True])
def test_task_losses_vectorized_equals_task_by_task_on_convnet(float64, first_order):
    model = convnet_with_batchnorm()
    maml = mlkit.MAML(model, loss="cross_entropy")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 1, 6, 6, generator=g), torch.randint(0, 3, (3, 8), generator=g)
    adapted, shared = core.adapt_tasks(maml.functional_forward, F.cross_entropy, maml.params(), x[:, :4], y[:, :4],
                                       0.5, 2, first_order, adapted=[n for n in maml.params() if n != "0.weight"])
    vectorized = core.task_losses(maml.functional_forward, F.cross_entropy, adapted, x[:, 4:], y[:, 4:], True, shared)
    looped = core.task_losses(maml.functional_forward, F.cross_entropy, adapted, x[:, 4:], y[:, 4:], False, shared)
    assert vectorized.shape == (3,)
    torch.testing.assert_close(vectorized, looped)
    params = list(model.parameters())
    for g, e in zip(torch.autograd.grad(vectorized.sum(), params, retain_graph=True),
                    torch.autograd.grad(looped.sum(), params)):
        torch.testing.assert_close(g, e)


def test_vmapped_dropout_draws_different_masks_for_different_tasks():
    torch.manual_seed(0)
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(4, 3, 50)
    out = core.task_outputs(lambda params, xt: dropout(xt), {}, x)
    masks = (out != 0).flatten(1)
    assert not any(torch.equal(masks[0], masks[t]) for t in range(1, 4))

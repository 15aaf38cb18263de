import pytest
import torch
import torch.nn.functional as F

import mlkit
from mlkit import core
from conftest import flat_grad, random_tasks


def test_resolve_loss_maps_names_and_callables():
    assert core.resolve_loss("mse") is F.mse_loss
    assert core.resolve_loss("cross_entropy") is F.cross_entropy
    l1 = lambda p, t: (p - t).abs().mean()  # noqa: E731
    assert core.resolve_loss(l1) is l1


@pytest.mark.parametrize("bad", ["l2", "", 3])
def test_resolve_loss_rejects_unknown(bad):
    with pytest.raises(ValueError, match="loss"):
        core.resolve_loss(bad)


def test_adapt_zero_steps_returns_initial_params():
    model = mlkit.models.MLP(3, [8], 1)
    maml = mlkit.MAML(model)
    params = maml.params()
    adapted = core.adapt(maml.functional_forward, F.mse_loss, params, torch.randn(5, 3), torch.randn(5, 1), 0.1, 0)
    assert all(adapted[k] is params[k] for k in params)


def test_adapt_one_step_is_a_gradient_descent_step(float64):
    model = mlkit.models.MLP(3, [8], 1)
    maml = mlkit.MAML(model, inner_lr=0.3)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    adapted = maml.adapt(x, y, steps=1)
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(adapted[name], p - 0.3 * g)


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


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), "0.1", None, True])
def test_check_inner_rejects_non_finite_lr(lr):
    with pytest.raises(ValueError, match="inner_lr"):
        core.check_inner(lr, 1)


@pytest.mark.parametrize("steps", [-1, 1.5, None])
def test_check_inner_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="inner_steps"):
        core.check_inner(0.1, steps)


def convnet_with_batchnorm():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), mlkit.models.BatchNorm(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), mlkit.models.BatchNorm(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 3))


@pytest.mark.parametrize("rates", ["float", "per-parameter"])
@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_tasks_equals_adapt_on_each_task(float64, rates, first_order):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    params = maml.params()
    lr = 0.2 if rates == "float" else {k: (torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) * 0.3).requires_grad_()
                                       for k, v in params.items()}
    batch = random_tasks(tasks=3)
    batched = core.adapt_tasks(maml.functional_forward, F.mse_loss, params, batch.support_x, batch.support_y,
                               lr, 3, first_order)
    assert all(batched[k].shape == (3, *v.shape) for k, v in params.items())
    for t in range(3):
        single = core.adapt(maml.functional_forward, F.mse_loss, params, batch.support_x[t], batch.support_y[t],
                            lr, 3, first_order)
        for k in params:
            torch.testing.assert_close(batched[k][t], single[k])
        # The Jacobian of θ'_t with respect to θ, projected on a random direction.
        direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in params.items()}
        wanted = [params[k] for k in params] + ([] if rates == "float" else list(lr.values()))
        for adapted in (batched, single):
            projected = sum(((adapted[k][t] if adapted is batched else adapted[k]) * direction[k]).sum()
                            for k in params)
            grads = torch.autograd.grad(projected, wanted, retain_graph=True, allow_unused=True)
            if adapted is batched:
                expected = grads
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e)


def test_adapt_tasks_without_gradients_returns_detached_adapted_params(float64):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    batch = random_tasks(tasks=2)
    with torch.no_grad():
        detached = core.adapt_tasks(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x,
                                    batch.support_y, 0.2, 2)
    tracked = core.adapt_tasks(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x,
                               batch.support_y, 0.2, 2)
    for k in detached:
        assert not detached[k].requires_grad and tracked[k].requires_grad
        torch.testing.assert_close(detached[k], tracked[k].detach())


def test_adapt_tasks_adapts_frozen_parameters_too(float64):
    model = mlkit.models.MLP(3, [8], 1)
    model[0].weight.requires_grad_(False)
    maml = mlkit.MAML(model)
    batch = random_tasks(tasks=2)
    batched = core.adapt_tasks(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x,
                               batch.support_y, 0.2, 1)
    single = core.adapt(maml.functional_forward, F.mse_loss, maml.params(), batch.support_x[1], batch.support_y[1],
                        0.2, 1)
    torch.testing.assert_close(batched["0.weight"][1], single["0.weight"])
    assert not torch.equal(single["0.weight"], model[0].weight)


@pytest.mark.parametrize("first_order", [False, True])
def test_task_losses_vectorized_equals_task_by_task_on_convnet(float64, first_order):
    model = convnet_with_batchnorm()
    maml = mlkit.MAML(model, loss="cross_entropy")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 1, 6, 6, generator=g), torch.randint(0, 3, (3, 8), generator=g)
    adapted = core.adapt_tasks(maml.functional_forward, F.cross_entropy, maml.params(), x[:, :4], y[:, :4],
                               0.5, 2, first_order)
    vectorized = core.task_losses(maml.functional_forward, F.cross_entropy, adapted, x[:, 4:], y[:, 4:])
    looped = core.task_losses(maml.functional_forward, F.cross_entropy, adapted, x[:, 4:], y[:, 4:], vectorize=False)
    assert vectorized.shape == (3,)
    torch.testing.assert_close(vectorized, looped)
    params = list(model.parameters())
    for g, e in zip(torch.autograd.grad(vectorized.sum(), params, retain_graph=True),
                    torch.autograd.grad(looped.sum(), params)):
        torch.testing.assert_close(g, e)

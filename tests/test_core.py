import pytest
import torch
import torch.nn.functional as F

import mlkit
from mlkit import core
from conftest import random_tasks


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

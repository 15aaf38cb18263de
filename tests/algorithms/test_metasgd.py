import pytest
import torch

import mlkit
from conftest import flat_grad, random_tasks


def test_frozen_rates_equal_maml(float64):
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [16, 16], 1, activation="tanh")
    batch = random_tasks()
    maml = mlkit.MAML(model, inner_lr=0.07, inner_steps=2)
    msgd = mlkit.MetaSGD(model, inner_lr=0.07, inner_steps=2)
    msgd.inner_lrs.requires_grad_(False)
    torch.testing.assert_close(msgd.meta_loss(batch), maml.meta_loss(batch))
    torch.testing.assert_close(flat_grad(msgd.meta_loss(batch), model.parameters()),
                               flat_grad(maml.meta_loss(batch), model.parameters()))


def test_rate_gradient_matches_closed_form_one_step(float64):
    # θ' = θ - α∘g_s with g_s = ∇L_s(θ), so dL_q(θ')/dα = -∇L_q(θ') ∘ g_s.
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [8], 1, activation="tanh")
    msgd = mlkit.MetaSGD(model, init_range=(0.005, 0.1))
    batch = random_tasks(tasks=1)
    rates = msgd.learning_rates()
    rate_grads = torch.autograd.grad(msgd.meta_loss(batch), list(rates.values()))
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    params = msgd.params()
    g_s = torch.autograd.grad(msgd.loss_fn(msgd.predict(params, sx), sy), list(params.values()))
    adapted = {n: (p - rates[n] * g).detach().requires_grad_() for (n, p), g in zip(params.items(), g_s)}
    g_q = torch.autograd.grad(msgd.loss_fn(msgd.predict(adapted, qx), qy), list(adapted.values()))
    for got, gq, gs in zip(rate_grads, g_q, g_s):
        torch.testing.assert_close(got, -gq * gs)


def test_rates_are_trained_parameters_and_change_under_fit():
    torch.manual_seed(0)
    msgd = mlkit.MetaSGD(mlkit.models.MLP(1, [20], 1), inner_lr=0.01)
    assert any(p is msgd.inner_lrs['0/weight'] for p in msgd.parameters())
    before = [a.detach().clone() for a in msgd.inner_lrs.values()]
    mlkit.fit(msgd, mlkit.tasks.Sinusoid(shots=5), iterations=20, meta_batch=4, progress=False, device="cpu")
    changed = [not torch.equal(b, a.detach()) for b, a in zip(before, msgd.inner_lrs.values())]
    assert all(changed)


def test_init_range_draws_rates_inside_the_range():
    torch.manual_seed(0)
    msgd = mlkit.MetaSGD(mlkit.models.MLP(1, [40, 40], 1), init_range=(0.005, 0.1))
    rates = torch.cat([a.detach().flatten() for a in msgd.inner_lrs.values()])
    assert rates.min() >= 0.005 and rates.max() <= 0.1 and rates.std() > 0.01


@pytest.mark.parametrize("init_range", [(0.1, 0.005), (float("nan"), 0.1)])
def test_bad_init_range_raises(init_range):
    with pytest.raises(ValueError):
        mlkit.MetaSGD(mlkit.models.MLP(1, [4], 1), init_range=init_range)


def test_rates_are_saved_by_parameter_name_and_only_for_adapted_parameters():
    model = mlkit.models.MLP(1, [4], 1)
    model[0].weight.requires_grad_(False)
    msgd = mlkit.MetaSGD(model)
    rate_keys = {k for k in msgd.state_dict() if k.startswith("inner_lrs.")}
    assert rate_keys == {"inner_lrs.0/bias", "inner_lrs.2/weight", "inner_lrs.2/bias"}
    assert set(msgd.learning_rates()) == {"0.bias", "2.weight", "2.bias"}

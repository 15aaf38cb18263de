import pytest
import torch
from torch import nn

import mlkit
from conftest import ALGORITHMS, flat_grad, random_tasks


def linear_regression_setup(alpha=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g))
    xs, ys = torch.randn(6, 3, generator=g), torch.randn(6, 1, generator=g)
    xq, yq = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    return model, (xs, ys, xq, yq)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_closed_form_for_linear_regression(float64, first_order):
    alpha = 0.1
    model, (xs, ys, xq, yq) = linear_regression_setup(alpha)
    batch = mlkit.tasks.TaskBatch(xs[None], ys[None], xq[None], yq[None])
    maml = mlkit.MAML(model, loss="mse", inner_lr=alpha, first_order=first_order)
    got = torch.autograd.grad(maml.meta_loss(batch), model.weight)[0].flatten()

    w = model.weight.detach().flatten()
    hessian_s = 2 / len(xs) * xs.T @ xs                        # ∇²L_s, constant for a linear model
    w_adapted = w - alpha * (hessian_s @ w - 2 / len(xs) * xs.T @ ys.flatten())
    grad_q = 2 / len(xq) * xq.T @ (xq @ w_adapted - yq.flatten())
    jacobian = torch.eye(3) - alpha * hessian_s                # dθ'/dθ = I - α∇²L_s
    expected = grad_q if first_order else jacobian @ grad_q
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order_by_the_hessian_term(float64):
    alpha = 0.1
    model, (xs, ys, xq, yq) = linear_regression_setup(alpha)
    batch = mlkit.tasks.TaskBatch(xs[None], ys[None], xq[None], yq[None])
    second = torch.autograd.grad(mlkit.MAML(model, inner_lr=alpha).meta_loss(batch), model.weight)[0].flatten()
    first = torch.autograd.grad(mlkit.MAML(model, inner_lr=alpha, first_order=True).meta_loss(batch),
                                model.weight)[0].flatten()
    hessian_s = 2 / len(xs) * xs.T @ xs
    torch.testing.assert_close(first - second, alpha * hessian_s @ first, rtol=1e-10, atol=1e-12)
    assert (first - second).abs().max() > 1e-3  # the term is not negligible here, so the check has teeth


def directional_fd(f, params, direction, eps=1e-6):
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = f().item()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = f().item()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(float64, steps):
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [16, 16], 1, activation="tanh")
    maml = mlkit.MAML(model, inner_lr=0.2, inner_steps=steps)
    batch = random_tasks(tasks=3)
    params = list(model.parameters())
    grad = flat_grad(maml.meta_loss(batch), params)
    for seed in range(3):
        direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + i)) for i, p in enumerate(params)]
        fd = directional_fd(lambda: maml.meta_loss(batch), params, direction)
        analytic = (grad * torch.cat([d.flatten() for d in direction])).sum().item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_first_order_gradient_is_query_gradient_at_adapted_params(float64):
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [16], 1, activation="tanh")
    maml = mlkit.MAML(model, inner_lr=0.2, inner_steps=2, first_order=True)
    batch = random_tasks(tasks=1)
    grad = torch.autograd.grad(maml.meta_loss(batch), list(model.parameters()))
    adapted = {k: v.detach().requires_grad_() for k, v in maml.adapt(batch.support_x[0], batch.support_y[0]).items()}
    query = maml.loss_fn(maml.predict(adapted, batch.query_x[0]), batch.query_y[0])
    expected = torch.autograd.grad(query, list(adapted.values()))
    for g, e in zip(grad, expected):
        torch.testing.assert_close(g, e)


def tiny_convnet(bn):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), bn(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 3))


def image_tasks(tasks=4, shots=3, queries=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, shots + queries, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (tasks, shots + queries), generator=g)
    return mlkit.tasks.TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_on_mlp(float64, name, first_order):
    torch.manual_seed(0)
    algo = ALGORITHMS[name](mlkit.models.MLP(3, [16, 16], 1), inner_lr=0.1, inner_steps=2, first_order=first_order)
    batch = random_tasks(tasks=5)
    batched, looped = algo.meta_loss(batch, batched=True), algo.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat_grad(batched, algo.parameters()), flat_grad(looped, algo.parameters()),
                               rtol=1e-5, atol=1e-5)


BATCHNORMS = {"mlkit": mlkit.models.BatchNorm, "torch": lambda c: nn.BatchNorm2d(c, track_running_stats=False)}


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("bn", BATCHNORMS)
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("cpu_vmap", ["vmap", "task by task"])
def test_batched_equals_loop_on_convnet_with_batchnorm(float64, name, bn, first_order, cpu_vmap, monkeypatch):
    monkeypatch.setattr(mlkit.algorithms.base, "CPU_CONV_VMAP_MAX_ELEMENTS", 10**9 if cpu_vmap == "vmap" else 0)
    algo = ALGORITHMS[name](tiny_convnet(BATCHNORMS[bn]), loss="cross_entropy", inner_lr=0.5, inner_steps=2,
                            first_order=first_order)
    batch = image_tasks()
    batched, looped = algo.meta_loss(batch, batched=True), algo.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flat_grad(batched, algo.parameters()), flat_grad(looped, algo.parameters()),
                               rtol=1e-10, atol=1e-10)


def test_convnet_with_batchnorm_meta_gradient_matches_finite_differences(float64):
    model = tiny_convnet(mlkit.models.BatchNorm)
    maml = mlkit.MAML(model, loss="cross_entropy", inner_lr=0.5)
    batch = image_tasks()
    params = list(model.parameters())
    grad = flat_grad(maml.meta_loss(batch), params)
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    fd = directional_fd(lambda: maml.meta_loss(batch), params, direction)
    assert (grad * torch.cat([d.flatten() for d in direction])).sum().item() == pytest.approx(fd, rel=1e-6)
    # A conv bias right before batch norm cancels out, so its true meta-gradient is exactly zero.
    assert grad[params[0].numel():params[0].numel() + 4].abs().max() < 1e-12


def test_batchnorm_with_running_statistics_is_refused():
    with pytest.raises(ValueError, match="running statistics"):
        mlkit.MAML(tiny_convnet(nn.BatchNorm2d))
    with pytest.raises(ValueError, match="replace_batchnorm"):
        mlkit.MAML(tiny_convnet(nn.BatchNorm2d), batched=False)
    mlkit.MAML(mlkit.models.replace_batchnorm(tiny_convnet(nn.BatchNorm2d)))


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("bn", BATCHNORMS)
@pytest.mark.parametrize("cpu_vmap", ["vmap", "task by task"])
def test_batched_query_predictions_equal_the_loop(float64, name, bn, cpu_vmap, monkeypatch):
    monkeypatch.setattr(mlkit.algorithms.base, "CPU_CONV_VMAP_MAX_ELEMENTS", 10**9 if cpu_vmap == "vmap" else 0)
    batch = image_tasks()
    algo = ALGORITHMS[name](tiny_convnet(BATCHNORMS[bn]), loss="cross_entropy", inner_lr=0.5, inner_steps=3)
    looped = ALGORITHMS[name](tiny_convnet(BATCHNORMS[bn]), loss="cross_entropy", inner_lr=0.5, inner_steps=3,
                              batched=False)
    looped.load_state_dict(algo.state_dict())
    batched = algo.query_predictions(batch)
    assert batched.shape == (4, 4, 3) and not batched.requires_grad
    torch.testing.assert_close(batched, looped.query_predictions(batch).detach(), rtol=1e-10, atol=1e-10)


def test_adapt_and_predict_shapes():
    maml = mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1))
    batch = mlkit.tasks.Sinusoid(shots=10, queries=7).sample(3)
    params = maml.adapt(batch.support_x[0], batch.support_y[0], steps=5)
    assert set(params) == {n for n, _ in maml.model.named_parameters()}
    assert all(params[n].shape == p.shape for n, p in maml.model.named_parameters())
    assert maml.predict(params, batch.query_x[0]).shape == (7, 1)
    assert maml.query_predictions(batch, steps=2).shape == (3, 7, 1)


def test_adapt_inner_lr_override(float64):
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1), inner_lr=0.1)
    batch = random_tasks(tasks=1)
    sx, sy = batch.support_x[0], batch.support_y[0]
    a = maml.adapt(sx, sy, steps=1, inner_lr=0.3)
    b = mlkit.MAML(maml.model, inner_lr=0.3).adapt(sx, sy, steps=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="inner_lr"):
        maml.adapt(sx, sy, inner_lr=float("nan"))


def test_more_inner_steps_adapt_further(float64):
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.MLP(3, [16], 1), inner_lr=0.05)
    batch = random_tasks(tasks=1)
    losses = [maml.loss_fn(maml.predict(maml.adapt(batch.support_x[0], batch.support_y[0], steps=k),
                                        batch.support_x[0]), batch.support_y[0]).item() for k in (0, 1, 5)]
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("kwargs, match", [
    ({"inner_lr": float("nan")}, "inner_lr"), ({"inner_lr": float("inf")}, "inner_lr"),
    ({"inner_steps": -1}, "inner_steps"), ({"loss": "hinge"}, "unknown loss"),
])
def test_bad_arguments_raise_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ALGORITHMS[name](mlkit.models.MLP(1, [4], 1), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(ValueError, match="nn.Module"):
        mlkit.MAML(lambda x: x)


def test_adapt_rejects_mismatched_support():
    maml = mlkit.MAML(mlkit.models.MLP(1, [4], 1))
    with pytest.raises(ValueError, match="support_x has 5 examples but support_y has 4"):
        maml.adapt(torch.randn(5, 1), torch.randn(4, 1))


def test_callable_loss_is_used_for_inner_and_outer_objective():
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [8], 1)
    l1 = lambda p, t: (p - t).abs().mean()  # noqa: E731
    batch = random_tasks()
    value = mlkit.MAML(model, loss=l1, inner_steps=0).meta_loss(batch)
    expected = torch.stack([l1(model(x), y) for x, y in zip(batch.query_x, batch.query_y)]).mean()
    torch.testing.assert_close(value, expected)
    one_step = mlkit.MAML(model, loss=l1, inner_lr=0.1, inner_steps=1).meta_loss(batch)
    assert not torch.allclose(one_step, value)

import pytest
import torch

import mlkit
from conftest import random_tasks


def manual_reptile_direction(model, batch, inner_lr, steps):
    """mean_i(θ - θ'_i) with θ'_i from plain SGD on task i's support set, written out by hand."""
    theta = [p.detach() for p in model.parameters()]
    directions = []
    for sx, sy in zip(batch.support_x, batch.support_y):
        phi = [p.clone().requires_grad_() for p in theta]
        for _ in range(steps):
            out = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], phi)), (sx,))
            grads = torch.autograd.grad(((out - sy) ** 2).mean(), phi)
            phi = [(p - inner_lr * g).detach().requires_grad_() for p, g in zip(phi, grads)]
        directions.append([t - p.detach() for t, p in zip(theta, phi)])
    return [torch.stack(ds).mean(0) for ds in zip(*directions)]


@pytest.mark.parametrize("batched", [True, False])
def test_backward_leaves_the_reptile_direction_in_grad(float64, batched):
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [16], 1, activation="tanh")
    reptile = mlkit.Reptile(model, inner_lr=0.1, inner_steps=3, batched=batched)
    batch = random_tasks(tasks=4)
    reptile.meta_loss(batch).backward()
    for p, expected in zip(model.parameters(), manual_reptile_direction(model, batch, 0.1, 3)):
        torch.testing.assert_close(p.grad, expected)


def test_one_inner_step_direction_is_the_scaled_support_gradient(float64):
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [16], 1, activation="tanh")
    batch = random_tasks(tasks=3)
    grads = mlkit.Reptile(model, inner_lr=0.2, inner_steps=1).meta_loss(batch)
    direction = torch.autograd.grad(grads, list(model.parameters()))
    support = torch.stack([((model(sx) - sy) ** 2).mean() for sx, sy in zip(batch.support_x, batch.support_y)]).mean()
    for d, g in zip(direction, torch.autograd.grad(support, list(model.parameters()))):
        torch.testing.assert_close(d, 0.2 * g)


def test_the_loss_shown_is_the_query_loss_at_the_adapted_weights(float64):
    torch.manual_seed(0)
    reptile = mlkit.Reptile(mlkit.models.MLP(3, [16], 1), inner_lr=0.1, inner_steps=2)
    batch = random_tasks(tasks=3)
    expected = torch.stack([reptile.loss_fn(reptile.predict(reptile.adapt(sx, sy), qx), qy) for sx, sy, qx, qy in
                            zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)]).mean()
    torch.testing.assert_close(reptile.meta_loss(batch), expected)


def test_fit_with_sgd_at_epsilon_is_the_reptile_update_with_linear_annealing(float64):
    torch.manual_seed(0)
    model = mlkit.models.MLP(1, [16], 1).double()
    reptile = mlkit.Reptile(model, inner_lr=0.02, inner_steps=4)
    family = mlkit.tasks.Sinusoid()
    epsilon, iterations = 0.5, 4
    theta = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    for t in range(iterations):
        batch = family.sample(5, generator=generator).to(torch.float64)
        with torch.no_grad():
            check = mlkit.Reptile(model.__class__(1, [16], 1).double(), inner_lr=0.02, inner_steps=4)
            for p, value in zip(check.model.parameters(), theta):
                p.copy_(value)
        direction = manual_reptile_direction(check.model, batch, 0.02, 4)
        step = epsilon * (1 - t / iterations)                    # ε annealed linearly to 0
        theta = [p - step * d for p, d in zip(theta, direction)]  # θ ← θ + ε_t · mean(θ' - θ)

    class Float64(mlkit.tasks.Sinusoid):
        def sample(self, tasks, generator=None, device=None):
            return super().sample(tasks, generator, device).to(torch.float64)

    lrs = []
    mlkit.fit(reptile, Float64(), iterations=iterations, meta_batch=5, optimizer="sgd", meta_lr=epsilon, device="cpu",
              scheduler=lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=iterations),
              on_step=lambda step: lrs.append(step.lr), progress=False)
    assert lrs == pytest.approx([epsilon * (1 - t / iterations) for t in range(iterations)])
    for p, expected in zip(model.parameters(), theta):
        torch.testing.assert_close(p, expected)

import pytest
import torch
from torch import nn

import mlkit
from conftest import flat_grad, random_tasks


def body_and_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def test_the_default_head_is_the_last_linear_and_adapt_keeps_every_body_tensor():
    model = body_and_head()
    anil = mlkit.ANIL(model, inner_lr=0.1, inner_steps=3)
    assert anil.head == ["4"] and anil.adapted_names() == ["4.weight", "4.bias"]
    batch = random_tasks(tasks=1)
    adapted = anil.adapt(batch.support_x[0], batch.support_y[0])
    theta = dict(model.named_parameters())
    assert all(adapted[name] is theta[name] for name in theta if not name.startswith("4."))
    assert not torch.equal(adapted["4.weight"], theta["4.weight"])


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_an_autograd_reference_with_only_the_head_adapted(float64, first_order):
    model = body_and_head()
    anil = mlkit.ANIL(model, inner_lr=0.3, inner_steps=2, first_order=first_order)
    batch = random_tasks(tasks=3)
    names = [n for n, _ in model.named_parameters()]
    losses = []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        params = dict(model.named_parameters())
        for _ in range(2):
            head = [params["4.weight"], params["4.bias"]]
            support = ((torch.func.functional_call(model, params, (sx,)) - sy) ** 2).mean()
            grads = torch.autograd.grad(support, head, create_graph=not first_order)
            params = {**params, "4.weight": head[0] - 0.3 * grads[0], "4.bias": head[1] - 0.3 * grads[1]}
        losses.append(((torch.func.functional_call(model, params, (qx,)) - qy) ** 2).mean())
    expected = flat_grad(torch.stack(losses).mean(), [dict(model.named_parameters())[n] for n in names])
    torch.testing.assert_close(flat_grad(anil.meta_loss(batch), model.parameters()), expected)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_is_maml_with_a_zero_step_size_on_the_body(float64, first_order):
    model = body_and_head()
    batch = random_tasks(tasks=3)
    anil = mlkit.ANIL(model, inner_lr=0.3, inner_steps=2, first_order=first_order)
    maml = mlkit.MAML(model, inner_lr={"": 0.0, "4": 0.3}, inner_steps=2, first_order=first_order)
    torch.testing.assert_close(anil.meta_loss(batch), maml.meta_loss(batch))
    torch.testing.assert_close(flat_grad(anil.meta_loss(batch), model.parameters()),
                               flat_grad(maml.meta_loss(batch), model.parameters()))


def test_reused_features_equal_the_whole_network_at_every_step_and_run_the_body_once(float64):
    torch.manual_seed(0)
    conv = mlkit.models.Conv4(1, ways=3, filters=4, image_size=8).double()
    calls = []
    conv.features[0].register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 12, 1, 8, 8)
    y = torch.arange(3).repeat(4).expand(2, -1)
    batch = mlkit.TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])
    results = {}
    for reuse in (True, False):
        for steps in (1, 5):
            anil = mlkit.ANIL(conv, "cross_entropy", inner_lr=0.5, inner_steps=steps, reuse_features=reuse)
            anil.meta_loss(batch)                       # the first call probes the model once
            calls.clear()
            loss = anil.meta_loss(batch)
            results[reuse, steps] = (loss, flat_grad(loss, conv.parameters()), len(calls))
    for steps in (1, 5):
        torch.testing.assert_close(results[True, steps][0], results[False, steps][0])
        torch.testing.assert_close(results[True, steps][1], results[False, steps][1])
    assert results[True, 1][2] == results[True, 5][2] == 2        # support and query, once each (vmapped)
    assert results[False, 5][2] > results[False, 1][2]


def test_a_head_that_is_not_the_last_operation_or_covers_everything_is_refused():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.body = nn.Linear(3, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.body(self.head(x))

    anil = mlkit.ANIL(HeadFirst(), head="head")
    with pytest.raises(ValueError, match="must be the model's last operation"):
        anil.meta_loss(random_tasks())
    mlkit.ANIL(HeadFirst(), head="head", reuse_features=False).meta_loss(random_tasks())  # the general path serves it
    with pytest.raises(ValueError, match="covers every parameter"):
        mlkit.ANIL(body_and_head(), head=["0", "2", "4"])
    with pytest.raises(ValueError, match="matches no parameter"):
        mlkit.ANIL(body_and_head(), head="classifier")

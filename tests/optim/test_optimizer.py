import io

import pytest
import torch

from mlkit.optim import LearnedOptimizer, load_params, lstm, optimizees, train
from mlkit.optim.optimizer import SHIPPED


class FullBatch:
    """A one-problem family with a fixed batch, to compare with a plain PyTorch loop."""

    def __init__(self, network):
        self.network = network

    def loss(self, theta, data, generator=None):
        return self.network.full_loss(theta)


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(40, 6, generator=g), torch.arange(40) % 3
    network = optimizees.Network(optimizees.mlp([6, 5, 3]), x, y, batch=40)
    theta = network.sample(1, g).theta
    model = optimizees.mlp([6, 5, 3])
    with torch.no_grad():
        for p, v in zip(model.parameters(), network.unflatten(theta[0]).values()):
            p.copy_(v)
    return network, theta, model, x, y


def train_steps(model, optimizer, x, y, steps):
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_optimizer_makes_the_same_updates_as_the_functional_core():
    weights, _ = load_params("mlp")
    network, theta, model, x, y = make()
    run = train.rollout(weights, FullBatch(network), theta, {}, 8)
    losses = train_steps(model, LearnedOptimizer(model.parameters()), x, y, 8)
    torch.testing.assert_close(torch.tensor(losses), run.losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(network.flatten(dict(model.named_parameters())).detach(), run.theta[0], rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    _, _, model, x, y = make(1)
    optimizer = LearnedOptimizer(model.parameters())
    train_steps(model, optimizer, x, y, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = optimizees.mlp([6, 5, 3])
    twin.load_state_dict(saved["model"])
    twin_optimizer = LearnedOptimizer(twin.parameters(), weights=lstm.init_params())  # weights come from the state
    twin_optimizer.load_state_dict(saved["optimizer"])
    assert train_steps(model, optimizer, x, y, 5) == train_steps(twin, twin_optimizer, x, y, 5)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert optimizer.state[next(model.parameters())]["step"] == 10


def test_pretrained_files_load_and_are_under_2_mb():
    import importlib.resources

    for name in SHIPPED:
        path = importlib.resources.files("mlkit.optim").joinpath(f"pretrained/{name}.pt")
        with importlib.resources.as_file(path) as file:
            assert file.stat().st_size < 2_000_000
        params, record = load_params(name)
        lstm.check_params(params)
        assert params["w_rec0"].shape == (20, 80) and lstm.layers_of(params) == 2
        assert record["config"]["seed"] == 0 and record["config"]["family"] == name


def test_pretrained_optimizer_beats_sgd_at_a_fixed_lr_on_fresh_quadratics():
    weights, _ = load_params("quadratic")
    family = optimizees.Quadratic()
    problems = family.sample(128, torch.Generator().manual_seed(31337))
    learned = train.rollout(weights, family, problems.theta, problems.data, 100).losses
    sgd = train.rollout({"log_lr": torch.tensor(0.01).log()}, family, problems.theta, problems.data, 100, (),
                        rule=train.lr_rule).losses
    # the meta-objective (mean loss along 100 steps) and the final loss, both clearly lower
    assert learned.mean() < 0.8 * sgd.mean()
    assert learned[:, -1].mean() < sgd[:, -1].mean()


def test_plain_pytorch_loop_trains_a_classifier():
    _, _, model, x, y = make(2)
    losses = train_steps(model, LearnedOptimizer(model.parameters()), x, y, 60)
    assert losses[-1] < 0.8 * losses[0]


def test_bad_arguments_raise_value_error():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="weights"):
        LearnedOptimizer(model.parameters(), weights="adam")
    with pytest.raises(ValueError, match="scale"):
        LearnedOptimizer(model.parameters(), scale=0)
    with pytest.raises(ValueError, match="w_in0"):
        LearnedOptimizer(model.parameters(), weights={"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="weights"):
        load_params(3)

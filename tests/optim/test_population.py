import pytest
import torch

from mlkit.optim import lstm, optimizees, train

PARAMS = lstm.init_params(generator=torch.Generator().manual_seed(0))


def test_batched_population_equals_per_optimizee_loop():
    family = optimizees.Quadratic()
    problems = family.sample(5, torch.Generator().manual_seed(1))
    batched = train.rollout(PARAMS, family, problems.theta, problems.data, 12)
    for b in range(5):
        one = train.rollout(PARAMS, family, problems.theta[b:b + 1], {k: v[b:b + 1] for k, v in problems.data.items()}, 12)
        torch.testing.assert_close(batched.losses[b], one.losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.theta[b], one.theta[0], rtol=1e-5, atol=1e-6)


def test_network_population_loss_equals_per_network_loss():
    x, y = torch.rand(60, 64, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 10
    family = optimizees.Network(optimizees.mlp([64, 20, 10]), x, y, batch=16)
    theta = family.sample(4, torch.Generator().manual_seed(2)).theta
    batched = family.loss(theta, {}, torch.Generator().manual_seed(3))
    index = torch.randint(0, 60, (4, 16), generator=torch.Generator().manual_seed(3))
    model = optimizees.mlp([64, 20, 10])
    for b in range(4):
        with torch.no_grad():
            for p, v in zip(model.parameters(), family.unflatten(theta[b]).values()):
                p.copy_(v)
        expected = torch.nn.functional.cross_entropy(model(x[index[b]]), y[index[b]])
        torch.testing.assert_close(batched[b], expected)
    assert family.dim == 64 * 20 + 20 + 20 * 10 + 10


def test_rule_reads_detached_gradients_so_second_derivatives_are_dropped():
    seen = []

    def spy(params, grad, state):
        seen.append(grad.requires_grad)
        return lstm.step(params, grad, state)

    params = {n: p.clone().requires_grad_() for n, p in PARAMS.items()}
    family = optimizees.Quadratic()
    problems = family.sample(3, torch.Generator().manual_seed(4))
    run = train.rollout(params, family, problems.theta, problems.data, 5, rule=spy, track=True)
    run.losses.sum().backward()
    assert seen == [False] * 5
    assert params["w_out"].grad is not None and params["w_out"].grad.abs().sum() > 0


def test_meta_training_lowers_the_loss_on_fresh_quadratics():
    family = optimizees.Quadratic()
    config = train.TrainConfig(family="quadratic", iterations=12, population=64, horizon=40, unroll=20, lr=1e-2, seed=0)
    start = lstm.init_params(generator=torch.Generator().manual_seed(0))
    trained, history = train.meta_train(config, params=start)
    problems = family.sample(64, torch.Generator().manual_seed(99))
    before = train.rollout(start, family, problems.theta, problems.data, 40).losses.mean()
    after = train.rollout(trained, family, problems.theta, problems.data, 40).losses.mean()
    assert len(history["loss"]) == 12 * 2
    assert after < 0.8 * before


def test_bad_settings_and_shapes_raise_value_error():
    with pytest.raises(ValueError, match="multiple"):
        train.TrainConfig(horizon=30, unroll=20).check()
    with pytest.raises(ValueError, match="positive"):
        train.TrainConfig(population=0).check()
    family = optimizees.Quadratic()
    with pytest.raises(ValueError, match="tasks"):
        family.sample(0)
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        family.loss(torch.zeros(3, 9), family.sample(3).data)
    with pytest.raises(ValueError, match="steps"):
        train.rollout(PARAMS, family, torch.zeros(2, 10), family.sample(2).data, 0)
    with pytest.raises(ValueError, match="unknown family"):
        optimizees.family("mnist")
    with pytest.raises(ValueError, match="activation"):
        optimizees.mlp([3, 4], activation="gelu")

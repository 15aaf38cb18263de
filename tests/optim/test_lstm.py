import math

import pytest
import torch

from mlkit.optim import LearnedOptimizer, lstm


def paper_preprocess(g: float, p: float = 10.0) -> tuple[float, float]:
    """Andrychowicz et al. (2016), Appendix A, written out for one number."""
    if abs(g) >= math.exp(-p):
        return math.log(abs(g)) / p, math.copysign(1.0, g)
    return -1.0, math.exp(p) * g


def test_preprocessing_matches_the_papers_formula():
    values = [0.0, 1e-9, -1e-9, 4.5e-5, -4.5e-5, math.exp(-10), 1e-3, -0.7, 2.0, -350.0, 1e6]
    got = lstm.preprocess(torch.tensor(values, dtype=torch.float64))
    expected = torch.tensor([paper_preprocess(v) for v in values], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.shape == (len(values), 2)


def test_preprocessing_is_continuous_enough_and_bounded_for_small_gradients():
    small = lstm.preprocess(torch.tensor([1e-30, -1e-30]))
    assert torch.all(small[:, 0] == -1) and torch.all(small[:, 1].abs() < 1e-20)


def test_every_coordinate_is_updated_by_its_own_history_only():
    params = lstm.init_params(generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(50, generator=g) for _ in range(3)]
    perm = torch.randperm(50, generator=g)
    state, state_p = lstm.initial_state(params, 50), lstm.initial_state(params, 50)
    for grad in grads:
        update, state = lstm.step(params, grad, state)
        update_p, state_p = lstm.step(params, grad[perm], state_p)
        torch.testing.assert_close(update[perm], update_p)
    # one coordinate alone gives the same step as inside the batch
    alone = lstm.initial_state(params, 1)
    for grad in grads:
        single, alone = lstm.step(params, grad[7:8], alone)
    torch.testing.assert_close(single, update[7:8])


def test_a_100k_parameter_model_takes_one_batched_lstm_call_per_step(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(500, 200), torch.nn.Sigmoid(), torch.nn.Linear(200, 10))
    assert sum(p.numel() for p in model.parameters()) > 100_000
    calls = []
    original = lstm.step

    def counting(params, grad, state, *args, **kwargs):
        calls.append(grad.shape[0])
        return original(params, grad, state, *args, **kwargs)

    monkeypatch.setattr(lstm, "step", counting)
    optimizer = LearnedOptimizer(model.parameters())
    x, y = torch.randn(32, 500, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert calls == [sum(p.numel() for p in model.parameters())] * 2
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bad_input_raises_value_error_before_any_work():
    params = lstm.init_params()
    with pytest.raises(ValueError, match="p must be positive"):
        lstm.preprocess(torch.ones(3), p=0)
    with pytest.raises(ValueError, match="flat"):
        lstm.step(params, torch.ones(2, 3), lstm.initial_state(params, 6))
    with pytest.raises(ValueError, match="coordinates"):
        lstm.step(params, torch.ones(5), lstm.initial_state(params, 6))
    with pytest.raises(ValueError, match="hidden"):
        lstm.init_params(hidden=0)
    with pytest.raises(ValueError, match="shape"):
        lstm.check_params({**params, "w_rec1": torch.zeros(3, 3)})

import math

import numpy as np
import pytest
import torch

from mlkit.blackbox import EvaluationError, LSTMOptimizer, Minimizer, functions, minimize

BRANIN_BOUNDS = functions.branin.bounds


@pytest.fixture(scope="module", params=["model-free", "surrogate"])
def optimizer(request):
    """A small untrained optimiser, without and with the surrogate input: these tests pin the interface, not the
    quality (see test_pretrained.py)."""
    from mlkit.blackbox import rnn

    if request.param == "surrogate":
        return LSTMOptimizer(hidden=16, seed=0, start="model", inputs=rnn.INPUTS)
    return LSTMOptimizer(hidden=16, seed=0)


def test_result_is_a_scipy_result_with_the_full_history(optimizer):
    from scipy.optimize import OptimizeResult

    result = minimize(functions.branin, BRANIN_BOUNDS, budget=25, optimizer=optimizer, seed=0)
    assert isinstance(result, OptimizeResult)
    assert result.nfev == 25 and result.success and result.history_x.shape == (25, 2) and result.history_y.shape == (25,)
    bounds = np.array(BRANIN_BOUNDS)
    assert (result.history_x >= bounds[:, 0]).all() and (result.history_x <= bounds[:, 1]).all()
    np.testing.assert_allclose(result.history_y, functions.branin(result.history_x), rtol=1e-12)
    best = int(np.argmin(result.history_y))
    assert result.fun == result.history_y[best] and np.array_equal(result.x, result.history_x[best])
    np.testing.assert_array_equal(result.best_so_far, np.minimum.accumulate(result.history_y))
    assert not result.failed.any() and result.errors == [] and result.seed == 0 and "25 evaluations" in result.message


def test_ask_tell_gives_the_same_run_as_minimize(optimizer):
    expected = minimize(functions.hartmann3, functions.hartmann3.bounds, budget=20, optimizer=optimizer, seed=5)
    asker = Minimizer(functions.hartmann3.bounds, optimizer=optimizer, seed=5)
    for _ in range(20):
        x = asker.suggest()
        assert np.array_equal(asker.suggest(), x)  # asking again before telling gives the same point
        asker.observe(x, float(functions.hartmann3(x)))
    result = asker.result()
    np.testing.assert_array_equal(result.history_x, expected.history_x)
    np.testing.assert_array_equal(result.history_y, expected.history_y)


def test_same_seed_same_run_other_seed_other_run(optimizer):
    a = minimize(functions.branin, BRANIN_BOUNDS, budget=10, optimizer=optimizer, seed=3)
    b = minimize(functions.branin, BRANIN_BOUNDS, budget=10, optimizer=optimizer, seed=3)
    c = minimize(functions.branin, BRANIN_BOUNDS, budget=10, optimizer=optimizer, seed=4)
    assert np.array_equal(a.history_x, b.history_x) and not np.allclose(a.history_x, c.history_x)


@pytest.mark.parametrize("vectorized", [True, False])
def test_a_batch_of_runs_equals_the_runs_one_by_one(optimizer, vectorized):
    calls = []

    def f(x):
        calls.append(np.shape(x))
        return functions.hartmann6(x)

    batch = minimize(f, functions.hartmann6.bounds, budget=30, optimizer=optimizer, seed=10, runs=4, vectorized=vectorized)
    assert calls[0] == ((4, 6) if vectorized else (6,)) and len(calls) == (30 if vectorized else 120)
    for i, result in enumerate(batch):
        single = minimize(functions.hartmann6, functions.hartmann6.bounds, budget=30, optimizer=optimizer, seed=10 + i)
        assert result.seed == 10 + i
        np.testing.assert_allclose(result.history_x, single.history_x, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.history_y, single.history_y, rtol=0, atol=1e-9)


def test_the_optimiser_is_invariant_to_offset_and_scale_of_f(optimizer):
    a = minimize(functions.hartmann3, functions.hartmann3.bounds, budget=30, optimizer=optimizer, seed=1)
    b = minimize(lambda x: 1e3 * functions.hartmann3(x) + 7.0, functions.hartmann3.bounds, budget=30, optimizer=optimizer, seed=1)
    np.testing.assert_allclose(a.history_x, b.history_x, rtol=0, atol=1e-8)


def test_torch_objectives_get_tensors(optimizer):
    seen = []

    def f(x):
        seen.append(type(x))
        return functions.branin(x)  # a 0-d tensor

    result = minimize(f, BRANIN_BOUNDS, budget=5, optimizer=optimizer, seed=0, tensor=True)
    assert seen == [torch.Tensor] * 5 and result.success


def test_nan_and_inf_are_kept_as_failures_and_never_the_best(optimizer):
    count = {"n": 0}

    def f(x):
        count["n"] += 1
        if count["n"] % 3 == 0:
            return math.nan
        if count["n"] % 5 == 0:
            return -math.inf  # not a better value: a failed evaluation
        return float(functions.branin(x))

    result = minimize(f, BRANIN_BOUNDS, budget=30, optimizer=optimizer, seed=0)
    expected_failed = np.array([(i % 3 == 0) or (i % 5 == 0) for i in range(1, 31)])
    np.testing.assert_array_equal(result.failed, expected_failed)
    assert np.isnan(result.history_y[expected_failed]).all() and np.isfinite(result.history_y[~expected_failed]).all()
    assert result.success and np.isfinite(result.fun) and result.fun == np.nanmin(result.history_y)
    assert result.history_x.shape == (30, 2) and "failed" in result.message


def test_raising_objective_is_penalized_and_logged(optimizer):
    count = {"n": 0}

    def f(x):
        count["n"] += 1
        if count["n"] in (2, 7):
            raise RuntimeError("simulation diverged")
        return float(functions.branin(x))

    result = minimize(f, BRANIN_BOUNDS, budget=12, optimizer=optimizer, seed=0)
    assert result.nfev == 12 and [i for i, _ in result.errors] == [1, 6]
    assert "simulation diverged" in result.errors[0][1]
    np.testing.assert_array_equal(np.flatnonzero(result.failed), [1, 6])


def test_raising_objective_with_on_error_raise_keeps_the_history(optimizer):
    count = {"n": 0}

    def f(x):
        count["n"] += 1
        if count["n"] == 4:
            raise RuntimeError("cluster job lost")
        return float(functions.branin(x))

    with pytest.raises(EvaluationError) as info:
        minimize(f, BRANIN_BOUNDS, budget=10, optimizer=optimizer, seed=0, on_error="raise")
    partial = info.value.result
    assert isinstance(info.value.__cause__, RuntimeError)
    assert partial.nfev == 4 and partial.failed.tolist() == [False, False, False, True] and partial.success
    assert partial.errors[0][0] == 3


def test_nothing_succeeding_is_reported_as_no_success(optimizer):
    result = minimize(lambda x: math.nan, BRANIN_BOUNDS, budget=5, optimizer=optimizer, seed=0)
    assert not result.success and math.isnan(result.fun) and np.isnan(result.x).all() and result.nfev == 5


def test_keyboard_interrupt_is_not_swallowed(optimizer):
    def f(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        minimize(f, BRANIN_BOUNDS, budget=5, optimizer=optimizer, seed=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"bounds": [[0.0, 1.0, 2.0]]}, "shape"),
    ({"bounds": [0.0, 1.0]}, "shape"),
    ({"bounds": [[0.0, 1.0]] * 7}, "1 <= d <= 6"),
    ({"bounds": [[1.0, 0.0]]}, "low < high"),
    ({"bounds": [[0.0, math.inf]]}, "finite"),
    ({"budget": 0}, "budget"),
    ({"budget": 2.5}, "budget"),
    ({"runs": 0}, "runs"),
    ({"seed": -1}, "seed"),
    ({"on_error": "ignore"}, "on_error"),
    ({"optimizer": 3}, "optimizer"),
])
def test_bad_input_is_one_value_error_before_any_evaluation(optimizer, kwargs, match):
    calls = []
    arguments = {"bounds": [[0.0, 1.0]], "budget": 5, "optimizer": optimizer, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        minimize(lambda x: calls.append(x) or 0.0, **arguments)
    assert calls == []


def test_observe_rejects_points_outside_the_bounds(optimizer):
    asker = Minimizer([[0.0, 1.0], [0.0, 1.0]], optimizer=optimizer, seed=0)
    with pytest.raises(ValueError, match="inside the bounds"):
        asker.observe([1.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="shape"):
        asker.observe([0.5], 1.0)
    assert asker.nfev == 0


def test_scipy_bounds_give_the_same_run_as_an_array(optimizer):
    from scipy.optimize import Bounds

    as_array = minimize(functions.branin, BRANIN_BOUNDS, budget=8, optimizer=optimizer, seed=3)
    as_bounds = minimize(functions.branin, Bounds([-5.0, 0.0], [10.0, 15.0]), budget=8, optimizer=optimizer, seed=3)
    np.testing.assert_array_equal(as_array.history_x, as_bounds.history_x)
    with pytest.raises(ValueError, match="one \\(low, high\\) pair per dimension"):
        minimize(functions.branin, Bounds(np.zeros((2, 1)), np.ones((2, 1))), budget=8, optimizer=optimizer)


def test_minimize_runs_the_network_with_what_it_was_trained_to_read():
    from mlkit.blackbox import rnn

    optimizer = LSTMOptimizer(hidden=8, seed=1, inputs=("x", "x_best", "value"), standardise=False)
    result = minimize(functions.hartmann3, functions.hartmann3.bounds, budget=7, optimizer=optimizer, seed=5)
    generator = torch.Generator().manual_seed(5)  # the stream of run 0: a uniform and a normal draw per step
    draws = [(torch.rand(6, generator=generator, dtype=torch.float64), torch.randn(6, generator=generator, dtype=torch.float64))
             for _ in range(7)]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0, 0, 0]], dtype=torch.float64)
    params = {n: p.detach().double() for n, p in optimizer.params().items()}
    xs, _ = rnn.rollout(params, lambda x: functions.hartmann3(x[:, :3]), mask, 7, uniform=draws[0][0][None],
                        noise=torch.stack([n for _, n in draws])[None], inputs=optimizer.inputs, standardise=False)
    np.testing.assert_allclose(result.history_x, xs[0, :, :3].numpy(), atol=1e-12)
    other, _ = rnn.rollout(params, lambda x: functions.hartmann3(x[:, :3]), mask, 7, uniform=draws[0][0][None],
                           noise=torch.stack([n for _, n in draws])[None])
    assert not np.allclose(result.history_x, other[0, :, :3].numpy(), atol=1e-6)


def test_minimize_with_the_model_input_is_the_rollout_on_the_runs_own_stream():
    from mlkit.blackbox import rnn, surrogate

    optimizer = LSTMOptimizer(hidden=8, seed=1, start="model", inputs=rnn.INPUTS)
    result = minimize(functions.hartmann3, functions.hartmann3.bounds, budget=7, optimizer=optimizer, seed=5)
    generator = torch.Generator().manual_seed(5)  # per step: a uniform and a normal draw, then the candidates
    steps = [(torch.rand(6, generator=generator, dtype=torch.float64), torch.randn(6, generator=generator, dtype=torch.float64),
              torch.rand(surrogate.CANDIDATES, 6, generator=generator, dtype=torch.float64)) for _ in range(7)]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0, 0, 0]], dtype=torch.float64)
    params = {n: p.detach().double() for n, p in optimizer.params().items()}
    xs, _ = rnn.rollout(params, lambda x: functions.hartmann3(x[:, :3]), mask, 7, uniform=steps[0][0][None],
                        noise=torch.stack([n for _, n, _ in steps])[None], inputs=rnn.INPUTS,
                        candidate_draws=torch.stack([c for _, _, c in steps])[None])
    np.testing.assert_allclose(result.history_x, xs[0, :, :3].numpy(), atol=1e-12)
    batch = minimize(functions.hartmann3, functions.hartmann3.bounds, budget=7, optimizer=optimizer, seed=5, runs=2,
                     vectorized=True)
    np.testing.assert_allclose(batch[0].history_x, result.history_x, atol=1e-12)

import numpy as np
import pytest
import torch

from mlkit.blackbox import functions

ALL = list(functions.ALL.values()) + list(functions.UNSEEN.values())


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_value_at_every_published_argmin_is_the_known_minimum(f):
    for point in f.argmins:
        # published argmins are rounded to about 6 digits; the value moves by at most ~1e-5 there
        assert f(np.array(point)) == pytest.approx(f.minimum, abs=1e-5)
        assert float(f(torch.tensor(point, dtype=torch.float64))) == pytest.approx(f.minimum, abs=1e-5)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_no_random_point_of_the_domain_is_below_the_minimum(f):
    rng = np.random.default_rng(0)
    bounds = np.array(f.bounds)
    x = bounds[:, 0] + rng.random((200_000, f.dim)) * (bounds[:, 1] - bounds[:, 0])
    values = f(x)
    assert values.shape == (200_000,)
    assert values.min() >= f.minimum - 1e-9
    assert values.min() - f.minimum < 0.5 * (np.median(values) - f.minimum)  # and the sample gets close: not constant


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_numpy_and_torch_agree_on_batches_of_any_shape(f):
    x = np.random.default_rng(1).random((3, 5, f.dim))
    expected = np.stack([[f(x[i, j]) for j in range(5)] for i in range(3)])
    np.testing.assert_allclose(f(x), expected, rtol=1e-12)
    np.testing.assert_allclose(f(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)


def test_branin_goldstein_price_known_values_elsewhere():
    # Goldstein-Price at the origin: (1 + 19) * (30 + 0) = 600; Branin at (0, 0): 36*... computed by hand below
    assert functions.goldstein_price(np.zeros(2)) == pytest.approx(600.0)
    b, c, t = 5.1 / (4 * np.pi ** 2), 5 / np.pi, 1 / (8 * np.pi)
    assert functions.branin(np.zeros(2)) == pytest.approx((0 - 0 + 0 - 6) ** 2 + 10 * (1 - t) * 1 + 10)
    del b, c


def test_wrong_dimension_is_a_value_error():
    with pytest.raises(ValueError, match="dimension 2"):
        functions.branin(np.zeros(3))


def test_unseen_functions_known_values_elsewhere():
    # by hand: camel at (1, 1): (4 - 2.1 + 1/3) + 1 + 0 = 3.2333...; Rosenbrock at 0: 3 * (0 + 1) = 3;
    # Ackley at (1, 0, 0): -20 exp(-0.2 sqrt(1/3)) - exp(1) + 20 + e; Levy at x = -3 (w = 0): sin(0)^2 + 4 (1 + 10 sin(1)^2) + 1 (1 + sin(0)^2)
    assert functions.six_hump_camel(np.ones(2)) == pytest.approx(4 - 2.1 + 1 / 3 + 1)
    assert functions.rosenbrock4(np.zeros(4)) == pytest.approx(3.0)
    assert functions.ackley3(np.array([1.0, 0, 0])) == pytest.approx(-20 * np.exp(-0.2 * np.sqrt(1 / 3)) + 20)
    assert functions.levy5(np.full(5, -3.0)) == pytest.approx(4 * (1 + 10 * np.sin(1.0) ** 2) + 1.0)

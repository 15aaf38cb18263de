import math

import pytest
import torch

from mlkit.blackbox import gp, rnn


def test_random_feature_covariance_matches_the_rbf_kernel():
    # Cov[f(x), f(x')] = k(x, x') exactly for any number of features; 20,000 draws estimate it with a
    # standard error below sqrt((1 + k^2) / 20,000) < 0.01, so 0.04 is a 4-sigma tolerance.
    draws, length = 20_000, 0.3
    sample = gp.sample_gp(draws, 2, max_dim=3, features=64, lengthscale_range=(length, length),
                          generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    points = torch.tensor([[0.1, 0.2, 0.0], [0.15, 0.25, 0.0], [0.4, 0.2, 0.0], [0.9, 0.9, 0.0], [0.1, 0.5, 0.0]],
                          dtype=torch.float64)
    values = gp.gp_values(sample, points.expand(draws, -1, -1))  # [draws, 5]
    empirical = values.T @ values / draws
    kernel = gp.rbf_kernel(points[None], points[None], torch.full((1, 3), length, dtype=torch.float64)
                           .masked_fill(torch.tensor([[False, False, True]]), math.inf))[0]
    assert torch.allclose(empirical, kernel, atol=0.04)
    assert values.mean(0).abs().max() < 0.04  # zero mean


def test_unused_input_slots_do_not_change_a_function():
    sample = gp.sample_gp(4, torch.tensor([1, 2, 3, 6]), generator=torch.Generator().manual_seed(1))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(2))
    moved = x.clone()
    for row, d in enumerate([1, 2, 3, 6]):
        moved[row, d:] = torch.rand(6 - d)
    assert torch.equal(gp.gp_values(sample, x), gp.gp_values(sample, moved))


def test_values_are_differentiable_in_the_query():
    sample = gp.sample_gp(3, 2, max_dim=2, features=16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: gp.gp_values(sample, q), (x,))


def test_gp_values_of_one_point_equal_those_of_a_batch_of_points():
    sample = gp.sample_gp(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = torch.rand(5, 7, 6, dtype=torch.float64)
    batch = gp.gp_values(sample, x)
    single = torch.stack([gp.gp_values(sample, x[:, j]) for j in range(7)], 1)
    assert torch.allclose(batch, single, atol=1e-12)


def test_expected_improvement_equals_the_posterior_computed_step_by_step():
    sample = gp.sample_gp(2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xs = torch.rand(2, 6, 6, dtype=torch.float64) * sample.mask[:, None, :]
    ys = gp.gp_values(sample, xs)
    ei = rnn.expected_improvement(xs, ys, sample.lengthscales, jitter=1e-4)
    normal = torch.distributions.Normal(0.0, 1.0)
    for b in range(2):
        for t in range(1, 6):
            k = lambda a, c: gp.rbf_kernel(a[None], c[None], sample.lengthscales[b:b + 1])[0]  # noqa: E731
            past, new = xs[b, :t], xs[b, t:t + 1]
            gram = k(past, past) + 1e-4 * torch.eye(t, dtype=torch.float64)
            cross = k(new, past)[0]
            mean = cross @ torch.linalg.solve(gram, ys[b, :t])
            sd = torch.sqrt(1 + 1e-4 - cross @ torch.linalg.solve(gram, cross))
            best = ys[b, :t].min()
            u = (best - mean) / sd
            expected = (best - mean) * normal.cdf(u) + sd * normal.log_prob(u).exp()
            assert ei[b, t - 1] == pytest.approx(expected.item(), rel=1e-6, abs=1e-9)


def test_heldout_set_is_fixed_and_covers_every_dimension():
    a, b = gp.heldout_functions(12), gp.heldout_functions(12)
    assert torch.equal(a.weights, b.weights)
    assert sorted(set(a.dims.tolist())) == [1, 2, 3, 4, 5, 6]


def test_bad_dimensions_are_a_value_error():
    with pytest.raises(ValueError, match="dims"):
        gp.sample_gp(2, torch.tensor([0, 7]))

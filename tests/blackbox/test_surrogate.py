import numpy as np
import pytest
import torch

from mlkit.blackbox import gp, surrogate


def reference_suggestion(xs, zs, points, kappa=surrogate.KAPPA, lengthscales=surrogate.LENGTHSCALES):
    assert all(2 * a == b for a, b in zip(lengthscales, lengthscales[1:]))  # suggest's squarings assume it
    """One run, the textbook way (numpy, explicit inverse): the grid's most likely length scale, then the
    posterior at every candidate and the lowest confidence bound."""
    xs, zs, points = (np.asarray(a, dtype=np.float64) for a in (xs, zs, points))
    n = len(zs)

    def kernel(a, b, scale):
        return np.exp(-0.5 * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / scale**2)

    best = None
    for scale in lengthscales:
        k = kernel(xs, xs, scale) + surrogate.JITTER * np.eye(n)
        inverse = np.linalg.inv(k)
        log_likelihood = -0.5 * zs @ inverse @ zs - 0.5 * np.linalg.slogdet(k)[1]
        if best is None or log_likelihood > best[0]:
            best = (log_likelihood, scale, inverse)
    _, scale, inverse = best
    cross = kernel(points, xs, scale)
    mean = cross @ inverse @ zs
    sd = np.sqrt(np.clip(1 - np.einsum("cn,nm,cm->c", cross, inverse, cross), 1e-12, None))
    pick = np.argmin(mean - kappa * sd)
    return points[pick], mean[pick], sd[pick], scale


def random_data(seed, batch=3, n=9, max_dim=3, candidates=64):
    generator = torch.Generator().manual_seed(seed)
    mask = gp.dim_mask(torch.tensor([1, 2, 3][:batch]), max_dim, torch.float64)
    xs = torch.rand(batch, n, max_dim, generator=generator, dtype=torch.float64) * mask[:, None, :]
    zs = torch.randn(batch, n, generator=generator, dtype=torch.float64)
    best_x = xs[torch.arange(batch), zs.argmin(1)]
    points = surrogate.candidates(best_x, mask, torch.rand(batch, candidates, max_dim, generator=generator,
                                                             dtype=torch.float64))
    return xs, zs, points, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_suggestion_is_the_lowest_bound_of_the_exact_posterior(seed):
    xs, zs, points, _ = random_data(seed)
    x, mean, sd = surrogate.suggest(xs, zs, points)
    for b in range(xs.shape[0]):
        ref_x, ref_mean, ref_sd, _ = reference_suggestion(xs[b], zs[b], points[b])
        np.testing.assert_allclose(x[b].numpy(), ref_x, atol=1e-12)
        assert mean[b].item() == pytest.approx(ref_mean, abs=1e-8) and sd[b].item() == pytest.approx(ref_sd, abs=1e-8)


def test_a_batch_suggests_what_its_runs_suggest_one_by_one(monkeypatch):
    xs, zs, points, _ = random_data(3)
    together = surrogate.suggest(xs, zs, points)
    monkeypatch.setattr(surrogate, "CHUNK", 2)  # in chunks of two runs and one: the same
    assert all(torch.equal(a, b) for a, b in zip(together, surrogate.suggest(xs, zs, points)))
    for b in range(xs.shape[0]):
        alone = surrogate.suggest(xs[b:b + 1], zs[b:b + 1], points[b:b + 1])
        assert all(torch.allclose(t[b], a[0], atol=1e-12) for t, a in zip(together, alone))


def test_the_grid_picks_a_short_length_scale_for_a_rough_function_and_a_long_one_for_a_smooth_one():
    generator = torch.Generator().manual_seed(0)
    xs = torch.rand(1, 40, 1, generator=generator, dtype=torch.float64)
    for scale, expected in ((0.05, 0.05), (0.8, 0.8)):
        draw = gp.sample_gp(1, 1, 1, 2048, (scale, scale), generator, torch.float64)
        zs = gp.gp_values(draw, xs)
        assert reference_suggestion(xs[0], zs[0], xs[0])[3] == expected


def test_the_suggestion_explores_where_nothing_was_seen_and_exploits_near_a_low_value():
    xs = torch.tensor([[[0.1], [0.2], [0.3]]], dtype=torch.float64)
    points = torch.tensor([[[0.15], [0.9]]], dtype=torch.float64)
    # equal values: no reason to stay, the far candidate has the larger sd and so the lower bound
    assert surrogate.suggest(xs, torch.zeros(1, 3, dtype=torch.float64), points)[0].item() == 0.9
    # a deep minimum at 0.2: the candidate beside it wins despite its small sd
    assert surrogate.suggest(xs, torch.tensor([[1.0, -3.0, 1.0]], dtype=torch.float64), points)[0].item() == 0.15


def test_candidates_are_half_uniform_and_half_around_the_best_point_in_the_used_slots():
    generator = torch.Generator().manual_seed(0)
    mask = gp.dim_mask(torch.tensor([2]), 3, torch.float64)
    draws = torch.rand(1, 2000, 3, generator=generator, dtype=torch.float64)
    best_x = torch.tensor([[0.7, 0.2, 0.0]], dtype=torch.float64)
    points = surrogate.candidates(best_x, mask, draws)
    assert torch.equal(points[:, :1000, :2], draws[:, :1000, :2]) and (points[..., 2] == 0).all()
    local = torch.logit(points[0, 1000:, :2]) - torch.logit(best_x[0, :2])
    assert torch.allclose(local.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.05)
    assert torch.allclose(local.std(0), torch.full((2,), surrogate.LOCAL_SCALE, dtype=torch.float64), rtol=0.05)
    assert (points[..., :2] > 0).all() and (points[..., :2] < 1).all()

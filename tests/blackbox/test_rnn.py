import math

import pytest
import torch

from mlkit.blackbox import gp, rnn


def tiny_problem(seed=0, batch=3, max_dim=2, hidden=5):
    generator = torch.Generator().manual_seed(seed)
    params = rnn.init_params(hidden, max_dim, generator, dtype=torch.float64)
    params["w_skip"] = 0.1 * torch.randn(params["w_skip"].shape, generator=generator, dtype=torch.float64)
    functions = gp.sample_gp(batch, torch.tensor([1, 2, 2][:batch]), max_dim, 16, generator=generator,
                             dtype=torch.float64)
    uniform = torch.rand(batch, max_dim, generator=generator, dtype=torch.float64)
    noise = torch.randn(batch, 6, max_dim, generator=generator, dtype=torch.float64)
    return params, functions, uniform, noise


@pytest.mark.parametrize("loss", rnn.LOSSES)
def test_meta_gradient_matches_finite_differences(loss):
    # float64, central differences along random directions of all the weights at once: a wrong term anywhere
    # in backpropagation through the trajectory changes the directional derivative
    params, functions, uniform, noise = tiny_problem()

    def meta_loss(p):
        xs, ys = rnn.rollout(p, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise)
        return rnn.trajectory_loss(loss, xs, ys, functions.lengthscales).mean()

    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = dict(zip(leaves, torch.autograd.grad(meta_loss(leaves), list(leaves.values()))))
    assert all(g.abs().sum() > 0 for g in grads.values())  # the loss reaches every weight through the trajectory
    generator = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in params.items()}
        plus = meta_loss({n: p + eps * direction[n] for n, p in params.items()})
        minus = meta_loss({n: p - eps * direction[n] for n, p in params.items()})
        numeric = ((plus - minus) / (2 * eps)).item()
        analytic = sum((grads[n] * direction[n]).sum() for n in params).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_batched_rollout_equals_one_function_at_a_time():
    params, functions, uniform, noise = tiny_problem(seed=1)
    xs, ys = rnn.rollout(params, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise)
    for b in range(3):
        one = gp.select(functions, b)
        x1, y1 = rnn.rollout(params, lambda x: gp.gp_values(one, x), one.mask, 6, uniform=uniform[b:b + 1],
                             noise=noise[b:b + 1])
        assert torch.allclose(xs[b], x1[0], atol=1e-12) and torch.allclose(ys[b], y1[0], atol=1e-12)


def test_queries_stay_in_the_unit_box_and_unused_slots_stay_zero():
    params, functions, uniform, noise = tiny_problem(seed=2)
    xs, _ = rnn.rollout(params, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise)
    assert xs.min() >= 0 and xs.max() <= 1
    assert (xs[0, :, 1] == 0).all()  # the first function is one-dimensional


def test_observed_improvement_loss_by_hand():
    ys = torch.tensor([[3.0, 1.0, 2.0, 0.5]])
    # improvements below the best so far: 1 - 3 = -2, 2 - 1 -> 0, 0.5 - 1 = -0.5; averaged over 4 steps
    assert rnn.trajectory_loss("oi", None, ys).item() == pytest.approx(-2.5 / 4)
    assert rnn.trajectory_loss("sum", None, ys).item() == pytest.approx(6.5 / 4)


def test_failed_evaluation_is_read_as_the_worst_and_never_the_best():
    params = rnn.init_params(4, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    state = rnn.initial_state(params, 1)
    state = rnn.observe(params, state, torch.tensor([[0.2, 0.3]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), mask)
    state = rnn.observe(params, state, torch.tensor([[0.6, 0.6]], dtype=torch.float64), torch.tensor([math.nan], dtype=torch.float64), mask)
    assert state.best_y.item() == 1.0 and torch.equal(state.best_x, torch.tensor([[0.2, 0.3]], dtype=torch.float64))
    assert state.count.item() == 1 and state.observed[0, 1] == math.inf
    assert torch.isfinite(state.hidden).all() and torch.isfinite(state.logits).all()


def test_meta_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = rnn.TrainConfig(iterations=4, batch=3, horizon=4, hidden=6, features=8, seed=3)
    straight, _ = rnn.meta_train(config, progress=False)

    calls = {"n": 0}
    original = rnn.trajectory_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rnn, "trajectory_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rnn.meta_train(config, progress=False, checkpoint=tmp_path / "run.pt", checkpoint_every=2)
    monkeypatch.setattr(rnn, "trajectory_loss", original)
    resumed, history = rnn.meta_train(config, progress=False, checkpoint=tmp_path / "run.pt", checkpoint_every=2)
    assert len(history["loss"]) == 4
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)


def test_save_and_load_round_trip(tmp_path):
    optimizer = rnn.LSTMOptimizer(hidden=8, max_dim=3, seed=1)
    optimizer.record = {"seed": 1, "note": "test"}
    optimizer.save(tmp_path / "opt.pt")
    loaded = rnn.LSTMOptimizer.load(tmp_path / "opt.pt")
    assert loaded.record == optimizer.record and (loaded.hidden, loaded.max_dim) == (8, 3)
    assert all(torch.equal(loaded.params()[n], optimizer.params()[n]) for n in optimizer.params())


@pytest.mark.parametrize("change", [{"loss": "mse"}, {"horizon": 1}, {"batch": 0}, {"lr": -1.0}, {"warp": -1.0},
                                    {"validate_every": -1}, {"start": "middle"}, {"inputs": ("x", "y")}])
def test_bad_training_settings_are_a_value_error(change):
    with pytest.raises(ValueError):
        rnn.meta_train(rnn.TrainConfig(**change), progress=False)


def test_detached_inputs_change_the_gradient_not_the_trajectory():
    params, functions, uniform, noise = tiny_problem(seed=4)
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    runs = {}
    for detach in (False, True):
        xs, ys = rnn.rollout(leaves, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform,
                             noise=noise, detach_inputs=detach)
        loss = rnn.trajectory_loss("oi", xs, ys)
        runs[detach] = (xs.detach(), torch.autograd.grad(loss.mean(), leaves["w_in"])[0])
    assert torch.equal(runs[False][0], runs[True][0])
    assert not torch.allclose(runs[False][1], runs[True][1])


def test_best_so_far_loss_by_hand_and_observed_improvement_telescopes():
    ys = torch.tensor([[3.0, 1.0, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0]])
    assert rnn.trajectory_loss("best", None, ys)[0].item() == pytest.approx((3 + 1 + 1 + 0.5) / 4)
    # the improvements sum to (best - first): the OI gradient reaches only those two queries
    assert torch.allclose(rnn.trajectory_loss("oi", None, ys) * 4, ys.min(1).values - ys[:, 0])


def test_local_start_centres_the_first_proposal_on_the_best_point():
    params = rnn.init_params(8, 3, torch.Generator().manual_seed(0), dtype=torch.float64, start="local")
    params["w_out"] = torch.zeros_like(params["w_out"])
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    state = rnn.initial_state(params, 1)
    best = torch.tensor([[0.2, 0.9, 0.0]], dtype=torch.float64)
    state = rnn.observe(params, state, best, torch.tensor([1.0], dtype=torch.float64), mask)
    state = rnn.observe(params, state, torch.tensor([[0.7, 0.1, 0.0]], dtype=torch.float64),
                        torch.tensor([2.0], dtype=torch.float64), mask)
    assert torch.allclose(state.logits[0, :2], torch.logit(best[0, :2]), atol=1e-12)
    assert torch.allclose(state.log_scale.exp(), torch.full((1, 3), rnn.STARTS["local"], dtype=torch.float64))
    uniform = rnn.init_params(8, 3, torch.Generator().manual_seed(0), dtype=torch.float64, start="uniform")
    assert torch.count_nonzero(uniform["w_skip"]) == 0
    with pytest.raises(ValueError, match="unknown start"):
        rnn.init_params(8, 3, start="middle")


@pytest.mark.parametrize("dropped", ["x", "x_best", "value", "rank", "best_value"])
def test_a_dropped_input_group_reaches_nothing(dropped):
    params, functions, uniform, noise = tiny_problem(seed=5)
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    inputs = tuple(g for g in rnn.BASE_INPUTS if g != dropped)
    xs, ys = rnn.rollout(leaves, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise,
                         inputs=inputs)
    grad = torch.autograd.grad(rnn.trajectory_loss("best", xs, ys).sum(), leaves["w_in"])[0]
    read = rnn.input_mask(2, inputs, torch.float64)
    assert read.sum() < read.numel() and (grad[read == 0] == 0).all()
    assert (grad[read == 1].abs().sum(1) > 0).any()
    with pytest.raises(ValueError, match="unknown inputs"):
        rnn.input_mask(2, ("x", "gradient"))


def test_standardised_reading_is_invariant_to_the_scale_and_offset_of_the_objective():
    # the optimiser reads z (running standardisation) and ranks: f and 3 f + 7 give the same queries; read raw, they do not
    params, functions, uniform, noise = tiny_problem(seed=6)
    runs = {}
    for standardise in (True, False):
        for a, b in ((1.0, 0.0), (3.0, 7.0)):
            xs, _ = rnn.rollout(params, lambda x: a * gp.gp_values(functions, x) + b, functions.mask, 6, uniform=uniform,
                                noise=noise, standardise=standardise)
            runs[standardise, a] = xs
    assert torch.allclose(runs[True, 1.0], runs[True, 3.0], atol=1e-9)
    assert not torch.allclose(runs[False, 1.0], runs[False, 3.0], atol=1e-6)


def test_training_dimensions_follow_the_configured_range():
    config = rnn.TrainConfig(batch=200, max_dim=6, features=8, dims=(2, 3))
    functions = rnn.sample_training_functions(config, torch.Generator().manual_seed(0))
    assert set(functions.dims.tolist()) == {2, 3}
    with pytest.raises(ValueError, match="dims must be"):
        rnn.meta_train(rnn.TrainConfig(dims=(0, 3)), progress=False)


def test_early_stopping_returns_the_weights_with_the_best_validation_score():
    config = rnn.TrainConfig(iterations=6, batch=4, horizon=4, hidden=6, features=8, seed=2, validate_every=2, lr=0.05,
                             warp=2.0)
    params, history = rnn.meta_train(config, progress=False)
    scores = [score for _, score in history["validation"]]
    assert [it for it, _ in history["validation"]] == [2, 4, 6]
    assert rnn.validation_score(params, config) == pytest.approx(min(scores), abs=1e-6)
    assert history["kept_iteration"] == history["validation"][scores.index(min(scores))][0]


def test_saved_optimizer_keeps_what_its_network_reads(tmp_path):
    optimizer = rnn.LSTMOptimizer(hidden=4, max_dim=2, inputs=("x", "rank"), standardise=False)
    optimizer.save(tmp_path / "opt.pt")
    loaded = rnn.LSTMOptimizer.load(tmp_path / "opt.pt")
    assert loaded.inputs == ("x", "rank") and loaded.standardise is False


def model_problem(seed=0, batch=3, max_dim=2, hidden=5, steps=6, candidates=16):
    """A tiny problem for the optimiser that reads the surrogate, with its candidate draws fixed."""
    params, functions, uniform, noise = tiny_problem(seed, batch, max_dim, hidden)
    generator = torch.Generator().manual_seed(seed + 100)
    params = rnn.init_params(hidden, max_dim, generator, dtype=torch.float64, inputs=rnn.INPUTS)
    params["w_skip"] = 0.1 * torch.randn(params["w_skip"].shape, generator=generator, dtype=torch.float64)
    draws = torch.rand(batch, steps, candidates, max_dim, generator=generator, dtype=torch.float64)
    return params, functions, uniform, noise, draws


def test_with_the_model_input_the_meta_gradient_matches_finite_differences_with_the_suggestions_held():
    # the surrogate runs without gradients: the weights get theirs through what the network does with its
    # suggestion. Finite differences therefore replay the suggestions of the unperturbed run.
    params, functions, uniform, noise, draws = model_problem()
    recorded, original = [], rnn.surrogate.suggest

    def recording(*args, **kwargs):
        recorded.append(original(*args, **kwargs))
        return recorded[-1]

    def meta_loss(p):
        xs, ys = rnn.rollout(p, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise,
                             inputs=rnn.INPUTS, candidate_draws=draws)
        return rnn.trajectory_loss("best", xs, ys).mean()

    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    rnn.surrogate.suggest = recording
    try:
        grads = dict(zip(leaves, torch.autograd.grad(meta_loss(leaves), list(leaves.values()))))
    finally:
        rnn.surrogate.suggest = original
    assert len(recorded) == 5 and all(g.abs().sum() > 0 for g in grads.values())
    model_rows = slice(rnn.input_size(2), rnn.input_size(2, model=True))
    assert grads["w_in"][model_rows].abs().sum() > 0 and grads["w_skip"][model_rows].abs().sum() > 0
    replay = iter([])

    def replaying(*args, **kwargs):
        return next(replay)

    rnn.surrogate.suggest = replaying
    try:
        generator = torch.Generator().manual_seed(7)
        eps = 1e-6
        for _ in range(3):
            direction = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in params.items()}
            replay = iter(recorded)
            plus = meta_loss({n: p + eps * direction[n] for n, p in params.items()})
            replay = iter(recorded)
            minus = meta_loss({n: p - eps * direction[n] for n, p in params.items()})
            numeric = ((plus - minus) / (2 * eps)).item()
            analytic = sum((grads[n] * direction[n]).sum() for n in params).item()
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    finally:
        rnn.surrogate.suggest = original


def test_with_the_model_input_a_batch_equals_its_functions_one_at_a_time():
    params, functions, uniform, noise, draws = model_problem(seed=1)
    xs, ys = rnn.rollout(params, lambda x: gp.gp_values(functions, x), functions.mask, 6, uniform=uniform, noise=noise,
                         inputs=rnn.INPUTS, candidate_draws=draws)
    for b in range(3):
        one = gp.select(functions, b)
        x1, y1 = rnn.rollout(params, lambda x: gp.gp_values(one, x), one.mask, 6, uniform=uniform[b:b + 1],
                             noise=noise[b:b + 1], inputs=rnn.INPUTS, candidate_draws=draws[b:b + 1])
        assert torch.allclose(xs[b], x1[0], atol=1e-12) and torch.allclose(ys[b], y1[0], atol=1e-12)


def test_the_model_start_queries_the_surrogates_suggestion():
    params, functions, uniform, noise, draws = model_problem(seed=2)
    params = rnn.init_params(5, 2, torch.Generator().manual_seed(0), dtype=torch.float64, start="model", inputs=rnn.INPUTS)
    state = rnn.initial_state(params, 3)
    x = rnn.propose(state, functions.mask, noise[:, 0], uniform)
    for t in range(1, 5):
        y = gp.gp_values(functions, x)
        queries, observed = torch.cat([state.queries, x[:, None]], 1), torch.cat([state.observed, y[:, None]], 1)
        state = rnn.observe(params, state, x, y, functions.mask, rnn.INPUTS, candidate_draws=draws[:, t])
        zs = ((observed - state.y_mean[:, None]) / (state.y_m2 / state.count).sqrt().clamp(min=1e-12)[:, None]).clamp(-5, 5)
        if t == 1:
            zs = observed - state.y_mean[:, None]  # one value: its deviation (zero), the scale is 1
        suggested = rnn.surrogate.suggest(queries, zs, rnn.surrogate.candidates(state.best_x, functions.mask, draws[:, t]))[0]
        x = rnn.propose(state, functions.mask, noise[:, t], uniform)
        # sigma 0.005 in logit units: within 0.005 * 0.25 * 4 sd of the suggestion (clamped to [0.005, 0.995])
        assert torch.allclose(x, suggested.clamp(0.005, 0.995) * functions.mask, atol=0.006)


def test_the_model_start_and_an_optimiser_of_another_width_are_refused_clearly():
    with pytest.raises(ValueError, match='inputs must include "model"'):
        rnn.init_params(8, 3, start="model")
    with pytest.raises(ValueError, match='inputs must include "model"'):
        rnn.TrainConfig(start="model").check()
    params, functions, uniform, noise, draws = model_problem()
    state = rnn.initial_state(params, 3)
    with pytest.raises(ValueError, match="needs candidate_draws"):
        rnn.observe(params, state, uniform * functions.mask, gp.gp_values(functions, uniform * functions.mask),
                    functions.mask, rnn.INPUTS)


def test_an_optimiser_with_the_model_input_saves_and_loads(tmp_path):
    optimizer = rnn.LSTMOptimizer(hidden=8, max_dim=3, seed=1, start="model", inputs=rnn.INPUTS)
    optimizer.save(tmp_path / "opt.pt")
    loaded = rnn.LSTMOptimizer.load(tmp_path / "opt.pt")
    assert loaded.inputs == rnn.INPUTS and loaded.params()["w_in"].shape[0] == rnn.input_size(3, model=True)
    assert all(torch.equal(loaded.params()[n], optimizer.params()[n]) for n in optimizer.params())


def test_with_the_model_input_a_failed_evaluation_is_read_as_the_worst():
    params, functions, uniform, noise, draws = model_problem()
    state = rnn.initial_state(params, 1)
    mask = torch.ones(1, 2, dtype=torch.float64)
    for x, y in (([0.2, 0.3], 1.0), ([0.6, 0.6], math.nan), ([0.9, 0.1], 2.0)):
        state = rnn.observe(params, state, torch.tensor([x], dtype=torch.float64), torch.tensor([y], dtype=torch.float64),
                            mask, rnn.INPUTS, candidate_draws=draws[:1, 0])
    assert state.best_y.item() == 1.0 and state.observed[0, 1] == math.inf and state.queries.shape == (1, 3, 2)
    assert torch.isfinite(state.hidden).all() and torch.isfinite(state.logits).all()


def test_the_untrained_model_start_beats_random_search_on_held_out_draws():
    functions = gp.select(gp.heldout_functions(), slice(0, 32))
    params = rnn.init_params(16, 6, torch.Generator().manual_seed(0), dtype=torch.float64, start="model", inputs=rnn.INPUTS)
    learned = rnn.best_so_far(params, functions, 30, seed=0, inputs=rnn.INPUTS)[:, -1]
    xs = torch.rand(32, 30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * functions.mask[:, None]
    random = gp.gp_values(functions, xs).min(1).values
    # paired over 32 draws: ahead on most of them, and by much more than the spread of the pairs' differences allows by chance
    difference = random - learned
    assert (difference > 0).float().mean() > 0.75 and difference.mean() > 3 * difference.std() / 32**0.5

"""The learned optimiser: an LSTM that maps the history of queries and values to the next query.

Chen et al. (2017) train a recurrent network ``h_t, x_t = RNN_theta(h_{t-1}, x_{t-1}, y_{t-1})`` on functions
drawn from a GP prior, by backpropagation through whole optimisation trajectories: the training functions
are differentiable, so the loss at step t reaches every earlier query through the values the network read.
At test time the network needs only function values.

Design here (one pure core, batched over functions; :class:`LSTMOptimizer` is a thin module around it):

- Queries live on the unit box ``[0, 1]^D`` with ``D = max_dim`` (6) input slots; a d-dimensional problem
  uses the first d slots and a mask marks them, so one network serves every dimension 1..6.
- The first query is uniform on the box (the run's seed decides it). After each observation the LSTM reads
  ``[x_t, x_best, mask, z_t, r_t, z_best]`` (queries as logits) and outputs a Gaussian in logit space; the
  next query is ``sigmoid(mu + sigma * eps)`` (reparameterised, so noise and all stay differentiable). A
  linear skip from the inputs to the output lets it place queries relative to the best point directly.
- Values enter standardised by the running mean and standard deviation of the finite values seen so far
  (``z``, clipped to +-5), plus ``r_t``, the fraction of earlier evaluations that ``y_t`` beats. Both are
  unchanged by ``a * f + b`` for ``a > 0``, so the optimiser is invariant to the objective's offset and
  scale; ``r`` is also unchanged by any increasing transform, which helps on heavy-tailed objectives.
- A failed evaluation (NaN or inf) never becomes the best, is left out of the running statistics and is
  read as the worst possible value: ``z = +5``, ``r = 0``.
- With the ``"model"`` input (the shipped optimiser has it), the network also reads the suggestion of a cheap
  Gaussian-process surrogate fitted to the ``z`` values so far (:mod:`mlkit.blackbox.surrogate`): the point
  ``x_model`` and the posterior mean and standard deviation there. ``start="model"`` makes the untrained
  network query ``x_model`` (with a little noise); meta-training learns what to do with it.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from . import surrogate
from .gp import GPSample, gp_values, rbf_kernel, sample_gp

Params = dict[str, Tensor]
MAX_DIM = 6
Z_CLIP = 5.0
LOGIT_SCALE = 2.5
LOG_SCALE_MID, LOG_SCALE_HALF = -2.5, 3.5  # log sigma = MID + HALF * tanh(raw), in [-6, 1]
STARTS = {"local": 0.8, "uniform": 1.5, "model": 0.005}  # sigma (logit units) of the untrained head for each start
LOSSES = ("sum", "oi", "ei", "best")
BASE_INPUTS = ("x", "x_best", "value", "rank", "best_value")
INPUTS = (*BASE_INPUTS, "model")  # the groups of what the network reads; "model" widens the input


def raw_scale(sigma: float) -> float:
    """The head's pre-activation that gives ``sigma`` (logit units): the inverse of the tanh squashing."""
    return math.atanh((math.log(sigma) - LOG_SCALE_MID) / LOG_SCALE_HALF)


def input_size(max_dim: int, model: bool = False) -> int:
    """Width of the LSTM input: x, x_best (as scaled logits) and the mask (``max_dim`` each), then z, r, z_best;
    with ``model``, then x_model (``max_dim``), its posterior mean and standard deviation."""
    return 3 * max_dim + 3 + (max_dim + 2 if model else 0)


def scaled_logit(x: Tensor) -> Tensor:
    """``logit(x) / LOGIT_SCALE`` with x kept inside ``[0.005, 0.995]``: a query as the network reads it."""
    return torch.logit(x.clamp(0.005, 0.995)) / LOGIT_SCALE


def init_params(hidden: int = 128, max_dim: int = MAX_DIM, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, start: str = "local", inputs=BASE_INPUTS) -> Params:
    """Fresh LSTM and output-head weights, ``name -> tensor``, uniform in ``+-1/sqrt(hidden)`` as torch's LSTM.

    The forget-gate bias starts at 1. ``w_skip`` maps the inputs straight to the head. ``start`` decides what
    the untrained optimiser does: ``"local"`` (default) samples around the best point so far (``w_skip``
    copies its logits to the mean, sigma 0.8 logit units), a local random search that already beats uniform
    sampling on smooth functions; ``"uniform"`` has a zero mean and sigma 1.5, close to random search;
    ``"model"`` queries the surrogate's suggestion (sigma 0.005, ``w_out`` zero) and needs ``"model"`` in
    ``inputs``, which decides the input width (:func:`input_size`).
    """
    check_start(start, inputs)
    model = "model" in inputs
    bound = 1.0 / math.sqrt(hidden)

    def uniform(*shape: int) -> Tensor:
        return (2 * torch.rand(*shape, generator=generator, dtype=dtype) - 1) * bound

    bias = uniform(4 * hidden)
    bias[hidden:2 * hidden] += 1.0
    width = input_size(max_dim, model)
    skip = torch.zeros(width, 2 * max_dim, dtype=dtype)
    if start == "local":
        skip[max_dim:2 * max_dim, :max_dim] = LOGIT_SCALE * torch.eye(max_dim, dtype=dtype)
    if start == "model":
        skip[3 * max_dim + 3:4 * max_dim + 3, :max_dim] = LOGIT_SCALE * torch.eye(max_dim, dtype=dtype)
    params = {"w_in": uniform(width, 4 * hidden), "w_rec": uniform(hidden, 4 * hidden), "bias": bias,
              "w_out": 0.1 * uniform(hidden, 2 * max_dim), "w_skip": skip,
              "b_out": torch.cat([torch.zeros(max_dim, dtype=dtype),
                                  torch.full((max_dim,), raw_scale(STARTS[start]), dtype=dtype)])}
    if start == "model":  # the untrained optimiser queries the surrogate's suggestion, with the head's noise only
        params["w_out"] = torch.zeros_like(params["w_out"])
    return params


def check_start(start: str, inputs) -> None:
    """Raise ``ValueError`` unless ``start`` is one of :data:`STARTS` and fits ``inputs``."""
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}: use one of {tuple(STARTS)}")
    if start == "model" and "model" not in inputs:
        raise ValueError('start="model" copies the surrogate\'s suggestion, so inputs must include "model"')


def input_mask(max_dim: int, inputs=INPUTS, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[input_size]``: 1 where the network reads a group of ``inputs`` (see :data:`INPUTS`), 0 where it is dropped.

    The mask is a group of the input, kept whole, so that a network with an input dropped has the same shape.
    """
    unknown = set(inputs) - set(INPUTS)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}: choose from {INPUTS}")
    widths = {"x": max_dim, "x_best": max_dim, "value": 1, "rank": 1, "best_value": 1}
    parts = [torch.full((widths[g],), float(g in inputs), dtype=dtype) for g in ("x", "x_best")]
    parts.append(torch.ones(max_dim, dtype=dtype))  # the dimension mask is always read
    parts += [torch.full((1,), float(g in inputs), dtype=dtype) for g in ("value", "rank", "best_value")]
    if "model" in inputs:  # read whole or not at all: it changes the width (and costs a GP fit per step)
        parts.append(torch.ones(max_dim + 2, dtype=dtype))
    return torch.cat(parts)


class State(NamedTuple):
    """Everything a batch of runs carries between queries (each field batched over runs B).

    ``hidden, cell [B, H]``: the LSTM state. ``logits, log_scale [B, D]``: the Gaussian of the next query in
    logit space. ``count, y_mean, y_m2 [B]``: running statistics of the finite values (Welford).
    ``best_y [B]`` (inf before any finite value), ``best_x [B, D]``. ``observed [B, n]``: every value so far,
    +inf where an evaluation failed. ``queries [B, n, D]``: every query so far (no gradients; the surrogate's data).
    """

    hidden: Tensor
    cell: Tensor
    logits: Tensor
    log_scale: Tensor
    count: Tensor
    y_mean: Tensor
    y_m2: Tensor
    best_y: Tensor
    best_x: Tensor
    observed: Tensor
    queries: Tensor


def initial_state(params: Params, batch: int) -> State:
    """The state before any observation, for ``batch`` independent runs."""
    hidden = params["w_rec"].shape[0]
    max_dim = params["b_out"].shape[0] // 2
    like = params["w_rec"]
    zeros = like.new_zeros(batch)
    return State(like.new_zeros(batch, hidden), like.new_zeros(batch, hidden), like.new_zeros(batch, max_dim),
                 like.new_zeros(batch, max_dim), zeros, zeros, zeros, torch.full_like(zeros, math.inf),
                 torch.full_like(like.new_zeros(batch, max_dim), 0.5), like.new_zeros(batch, 0),
                 like.new_zeros(batch, 0, max_dim))


def propose(state: State, mask: Tensor, noise: Tensor, uniform: Tensor) -> Tensor:
    """The next query of every run, ``[B, D]`` in ``[0, 1]`` (zero in unused slots).

    Args:
        state: from :func:`initial_state` or :func:`observe`. mask: ``[B, D]``.
        noise: ``[B, D]`` standard normal draws; uniform: ``[B, D]`` uniform draws, used for the first query.
    """
    if state.observed.shape[1] == 0:
        return uniform * mask
    return torch.sigmoid(state.logits + state.log_scale.exp() * noise) * mask


def observe(params: Params, state: State, x: Tensor, y: Tensor, mask: Tensor, inputs=BASE_INPUTS,
            standardise: bool = True, candidate_draws: Tensor | None = None) -> State:
    """Read one evaluation per run and advance the LSTM one step.

    Args:
        x: ``[B, D]`` the queries (unit box, zero in unused slots); y: ``[B]`` their values, NaN or inf
            where the evaluation failed. mask: ``[B, D]``.
        inputs: the groups of :data:`INPUTS` the network reads (the others are zeroed; for ablations).
        standardise: read values standardised by their running statistics (default), or raw (clipped).
        candidate_draws: ``[B, C, D]`` uniform draws for the surrogate's candidates; needed with ``"model"``.

    Returns:
        The new :class:`State`, differentiable with respect to ``params``, ``x`` and ``y``.
    """
    finite = torch.isfinite(y)
    y0 = torch.where(finite, y, torch.zeros_like(y))
    count = state.count + finite.to(y.dtype)
    delta = y0 - state.y_mean
    y_mean = state.y_mean + torch.where(finite, delta / count.clamp(min=1), torch.zeros_like(y))
    y_m2 = state.y_m2 + torch.where(finite, delta * (y0 - y_mean), torch.zeros_like(y))
    variance = y_m2 / count.clamp(min=1)
    scale = torch.sqrt(torch.where(variance > 1e-24, variance, torch.ones_like(variance)))
    centre = y_mean
    if not standardise:
        centre, scale = torch.zeros_like(y_mean), torch.ones_like(scale)
    z = torch.where(finite, ((y0 - centre) / scale).clamp(-Z_CLIP, Z_CLIP), torch.full_like(y, Z_CLIP))

    improved = finite & (y0 < state.best_y)
    best_y = torch.where(improved, y0, state.best_y)
    best_x = torch.where(improved[:, None], x, state.best_x)
    has_best = torch.isfinite(best_y)
    z_best = torch.where(has_best, ((torch.where(has_best, best_y, centre) - centre) / scale).clamp(-Z_CLIP, Z_CLIP),
                         torch.full_like(y, Z_CLIP))

    value = torch.where(finite, y0, torch.full_like(y, math.inf))
    if state.observed.shape[1] == 0:
        rank = torch.full_like(y, 0.5)
    else:
        rank = (state.observed > value[:, None]).to(y.dtype).mean(1)
    observed = torch.cat([state.observed, value.detach()[:, None]], 1)
    queries = torch.cat([state.queries, x.detach()[:, None, :]], 1)

    parts = [scaled_logit(x) * mask, scaled_logit(best_x) * mask, mask, z[:, None], rank[:, None], z_best[:, None]]
    if "model" in inputs:
        if candidate_draws is None:
            raise ValueError('the "model" input needs candidate_draws [B, C, D] (uniform draws for the candidates)')
        with torch.no_grad():  # every value as the network reads it, failed ones (inf) at the clip: the worst
            zs = ((observed - centre[:, None]) / scale[:, None]).clamp(-Z_CLIP, Z_CLIP)
            points = surrogate.candidates(best_x.detach(), mask, candidate_draws)
            x_model, model_mean, model_sd = surrogate.suggest(queries, zs, points)
        parts += [scaled_logit(x_model) * mask, model_mean.clamp(-Z_CLIP, Z_CLIP)[:, None], model_sd[:, None]]
    read = torch.cat(parts, -1)
    if tuple(inputs) not in (INPUTS, BASE_INPUTS):
        read = read * input_mask(mask.shape[1], inputs, read.dtype)
    gates = read @ params["w_in"] + state.hidden @ params["w_rec"] + params["bias"]
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, -1)
    cell = torch.sigmoid(forget_gate) * state.cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
    logits, raw_scale = (hidden @ params["w_out"] + read @ params["w_skip"] + params["b_out"]).chunk(2, -1)
    log_scale = LOG_SCALE_MID + LOG_SCALE_HALF * torch.tanh(raw_scale)
    return State(hidden, cell, logits, log_scale, count, y_mean, y_m2, best_y, best_x, observed, queries)


def rollout(params: Params, objective: Callable[[Tensor], Tensor], mask: Tensor, steps: int,
            generator: torch.Generator | None = None, uniform: Tensor | None = None,
            noise: Tensor | None = None, detach_inputs: bool = False, inputs=BASE_INPUTS,
            standardise: bool = True, candidate_draws: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run the optimiser for ``steps`` queries on a batch of objectives.

    Args:
        objective: ``x [B, D] -> y [B]``, one function per row (differentiable for meta-training).
        mask: ``[B, D]`` the slots each function uses. generator: the random stream of the queries, used
            for ``uniform [B, D]`` (the first query) and ``noise [B, steps, D]`` unless they are given, and,
            with the ``"model"`` input, for the surrogate's candidates (drawn after them, step by step,
            unless ``candidate_draws [B, steps, C, D]`` gives them).
        detach_inputs: stop gradients where the network reads a query and its value back, so that the
            loss reaches the weights only through the queries and the LSTM state (lower-variance gradients).
        inputs, standardise: what the network reads, as in :func:`observe`.

    Returns:
        ``(xs [B, steps, D], ys [B, steps])``: the queries and their values, in order.
    """
    batch, max_dim = mask.shape
    dtype = params["w_rec"].dtype
    if uniform is None:
        uniform = torch.rand(batch, max_dim, generator=generator, dtype=dtype)
    if noise is None:
        noise = torch.randn(batch, steps, max_dim, generator=generator, dtype=dtype)
    state = initial_state(params, batch)
    xs, ys = [], []
    for t in range(steps):
        x = propose(state, mask, noise[:, t], uniform)
        y = objective(x)
        xs.append(x)
        ys.append(y)
        if t + 1 < steps:
            draws = None
            if "model" in inputs:
                draws = (candidate_draws[:, t] if candidate_draws is not None else
                         torch.rand(batch, surrogate.CANDIDATES, max_dim, generator=generator, dtype=dtype))
            state = observe(params, state, x.detach() if detach_inputs else x, y.detach() if detach_inputs else y, mask,
                            inputs, standardise, draws)
    return torch.stack(xs, 1), torch.stack(ys, 1)


def expected_improvement(xs: Tensor, ys: Tensor, lengthscales: Tensor, jitter: float = 1e-4) -> Tensor:
    """EI of every query after the first under the exact GP posterior given the earlier queries.

    One Cholesky factor ``L`` of the kernel matrix of all T queries serves every step: the posterior of
    ``f(x_t)`` given ``(x_i, y_i)_{i<t}`` has standard deviation ``L[t, t]`` and mean
    ``sum_{i<t} L[t, i] z_i`` with ``z = L^{-1} y`` (the leading block of ``L`` factors the leading block of K).

    Args:
        xs: ``[B, T, D]``; ys: ``[B, T]``; lengthscales: ``[B, D]`` of the prior the functions came from.

    Returns:
        ``[B, T - 1]``: EI for minimisation below the best value before each step, computed in float64.
    """
    dtype = ys.dtype
    xs, ys, lengthscales = xs.double(), ys.double(), lengthscales.double()
    steps = xs.shape[1]
    kernel = rbf_kernel(xs, xs, lengthscales) + jitter * torch.eye(steps, dtype=torch.float64)
    chol = torch.linalg.cholesky(kernel)
    z = torch.linalg.solve_triangular(chol, ys[..., None], upper=False)
    mean = (chol.tril(-1) @ z)[..., 0][:, 1:]
    sd = torch.diagonal(chol, dim1=-2, dim2=-1)[:, 1:]
    best = torch.cummin(ys, 1).values[:, :-1]
    u = (best - mean) / sd
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    ei = (best - mean) * normal.cdf(u) + sd * normal.log_prob(u).exp()
    return ei.to(dtype)


def trajectory_loss(kind: str, xs: Tensor, ys: Tensor, lengthscales: Tensor | None = None) -> Tensor:
    """The meta-loss of each trajectory, ``[B]``, averaged over its T steps (Chen et al., 2017, Sec. 2.1).

    ``"sum"``: the mean observed value. ``"oi"``: observed improvement, the mean of
    ``min(y_t - min_{i<t} y_i, 0)`` over t >= 2. ``"ei"``: minus the mean expected improvement of each query
    under the GP posterior of the earlier ones (needs the prior's ``lengthscales``). ``"best"``: the mean of
    the best value so far, the area under the best-so-far curve that benchmarks report at fixed budgets.

    The observed improvements telescope: their sum is ``min_t y_t - y_1``, so the ``"oi"`` gradient reaches
    the trajectory only through its first and its best query. ``"best"`` weighs each best point by how long
    it stays the best, and every query that was the best at some step gets a gradient.
    """
    steps = ys.shape[1]
    if kind == "best":
        return torch.cummin(ys, 1).values.mean(1)
    if kind == "sum":
        return ys.mean(1)
    if kind == "oi":
        best_before = torch.cummin(ys, 1).values[:, :-1]
        return (ys[:, 1:] - best_before).clamp(max=0).sum(1) / steps
    if kind == "ei":
        if lengthscales is None:
            raise ValueError("the 'ei' loss needs the GP prior's lengthscales")
        return -expected_improvement(xs, ys, lengthscales).sum(1) / steps
    raise ValueError(f"unknown loss {kind!r}: use one of {LOSSES}")


@dataclass
class TrainConfig:
    """Settings of meta-training; the artefact records them."""

    iterations: int = 3000  # 0: no meta-training, the initial weights (see init_params' start)
    batch: int = 128
    horizon: int = 100
    loss: str = "oi"
    lr: float = 1e-3
    hidden: int = 128
    max_dim: int = MAX_DIM
    features: int = 512
    lengthscale_range: tuple[float, float] = (0.1, 1.0)
    clip: float = 1.0
    detach_inputs: bool = False
    seed: int = 0
    start: str = "local"
    inputs: tuple[str, ...] = BASE_INPUTS
    standardise: bool = True
    dims: tuple[int, int] | None = None  # (lowest, highest) training dimension; None: 1..max_dim
    warp: float = 0.0  # the network reads expm1(c f) / c, c ~ U(0, warp) per function: heavy-tailed values
    validate_every: int = 0  # > 0: score on validation draws this often and return the best weights

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot train."""
        for name in ("iterations", "batch", "horizon", "hidden", "max_dim", "features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'iterations' else 'positive'} integer, "
                                 f"got {value!r}")
        if self.horizon < 2:
            raise ValueError(f"horizon must be at least 2, got {self.horizon}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: use one of {LOSSES}")
        if isinstance(self.validate_every, bool) or not isinstance(self.validate_every, int) or self.validate_every < 0:
            raise ValueError(f"validate_every must be a non-negative integer, got {self.validate_every!r}")
        if not self.warp >= 0:
            raise ValueError(f"warp must be >= 0, got {self.warp!r}")
        if not (self.lr > 0 and self.clip > 0):
            raise ValueError(f"lr and clip must be positive, got lr={self.lr!r}, clip={self.clip!r}")
        check_start(self.start, self.inputs)
        input_mask(self.max_dim, self.inputs)
        low, high = self.dim_range
        if not 1 <= low <= high <= self.max_dim:
            raise ValueError(f"dims must be (low, high) with 1 <= low <= high <= max_dim={self.max_dim}, got {self.dims!r}")

    @property
    def dim_range(self) -> tuple[int, int]:
        """The lowest and highest dimension of the training functions."""
        return tuple(self.dims) if self.dims is not None else (1, self.max_dim)


def sample_training_functions(config: TrainConfig, generator: torch.Generator) -> GPSample:
    """One meta-batch: dimensions uniform in ``config.dim_range``, then a GP draw for each."""
    low, high = config.dim_range
    dims = torch.randint(low, high + 1, (config.batch,), generator=generator)
    return sample_gp(config.batch, dims, config.max_dim, config.features, tuple(config.lengthscale_range), generator)


def meta_train(config: TrainConfig, progress: bool = True, checkpoint: str | os.PathLike | None = None,
               checkpoint_every: int = 100) -> tuple[Params, dict]:
    """Meta-train the LSTM optimiser on GP draws by backpropagation through whole trajectories.

    Adam with a cosine-decayed learning rate and gradient-norm clipping; everything random comes from one
    generator seeded with ``config.seed``. With ``checkpoint``, the run saves itself atomically every
    ``checkpoint_every`` iterations and resumes from there (it refuses a checkpoint of other settings).
    With ``config.validate_every``, the weights are scored on :func:`validation_functions` (never trained on,
    not the held-out test set) and the best-scoring weights are returned: early stopping.

    Returns:
        ``(params, history)``: the trained weights and ``{"loss": [...], "seconds": float, "validation":
        [[iteration, score], ...]}`` (score: :func:`validation_score`, lower is better).
    """
    config.check()
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    params = {name: p.requires_grad_()
              for name, p in init_params(config.hidden, config.max_dim, generator, start=config.start,
                                         inputs=config.inputs).items()}
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, config.iterations) / max(config.iterations, 1))))
    history = {"loss": [], "seconds": 0.0, "validation": []}
    best = None
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=False)
        if saved["config"] != _comparable(asdict(config)):
            raise ValueError(f"checkpoint {path} was written with other settings; delete it or pass another path")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved["params"][name])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        history, start, best = saved["history"], saved["iteration"], saved.get("best")

    began = time.perf_counter() - history["seconds"]
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc=f"meta-training ({config.loss})")
    for iteration in bar:
        functions = sample_training_functions(config, generator)
        objective = lambda x: gp_values(functions, x)  # noqa: E731
        if config.warp > 0:
            objective = _warped(objective, config.warp * torch.rand(config.batch, generator=generator))
        xs, ys = rollout(params, objective, functions.mask, config.horizon, generator,
                         detach_inputs=config.detach_inputs, inputs=config.inputs, standardise=config.standardise)
        if config.warp > 0:  # the loss is on the functions' own values: a warp changes what is read, not the goal
            ys = gp_values(functions, xs)
        loss = trajectory_loss(config.loss, xs, ys, functions.lengthscales).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), config.clip)
        optimizer.step()
        schedule.step()
        history["loss"].append(loss.item())
        if iteration % 20 == 0:
            bar.set_postfix(loss=f"{sum(history['loss'][-20:]) / len(history['loss'][-20:]):.4f}")
        done = iteration + 1
        if config.validate_every and (done % config.validate_every == 0 or done == config.iterations):
            score = validation_score(params, config)
            history["validation"].append([done, score])
            if best is None or score < best["score"]:
                best = {"score": score, "iteration": done, "params": {n: p.detach().clone() for n, p in params.items()}}
        if path is not None and (done % checkpoint_every == 0 or done == config.iterations):
            history["seconds"] = time.perf_counter() - began
            _save_atomic({"config": _comparable(asdict(config)), "params": {n: p.detach() for n, p in params.items()},
                          "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                          "generator": generator.get_state(), "history": history, "iteration": done, "best": best}, path)
    history["seconds"] = time.perf_counter() - began
    if best is not None:
        history["kept_iteration"] = best["iteration"]
        return dict(best["params"]), history
    return {name: p.detach() for name, p in params.items()}, history


VALIDATION_SEED = 31


def validation_functions(config: TrainConfig, count: int = 256) -> GPSample:
    """Fixed GP draws for early stopping: the training prior, dimensions cycling through ``config.dim_range``.

    Their seed differs from meta-training's stream and from :func:`mlkit.blackbox.gp.heldout_functions`, the
    test set, so choosing weights on them leaves the test set untouched.
    """
    low, high = config.dim_range
    dims = torch.arange(count) % (high - low + 1) + low
    return sample_gp(count, dims, config.max_dim, config.features, tuple(config.lengthscale_range),
                     torch.Generator().manual_seed(VALIDATION_SEED))


@torch.no_grad()
def validation_score(params: Params, config: TrainConfig) -> float:
    """Mean best value so far over ``2 * horizon`` queries on :func:`validation_functions` (fixed noise)."""
    functions = validation_functions(config)
    values = best_so_far({n: p.detach() for n, p in params.items()}, functions, 2 * config.horizon, seed=VALIDATION_SEED,
                         inputs=config.inputs, standardise=config.standardise)
    return values.mean().item()


def _warped(objective: Callable[[Tensor], Tensor], c: Tensor) -> Callable[[Tensor], Tensor]:
    """``objective`` read through ``expm1(c f) / c`` (per function; ``f`` itself where ``c`` is near 0)."""
    def read(x: Tensor) -> Tensor:
        y = objective(x)
        return torch.where(c > 1e-3, torch.expm1(c * y) / c.clamp(min=1e-3), y)
    return read


def _comparable(config: dict) -> dict:
    """A config dict with tuples as lists, as a checkpoint stores it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


@torch.no_grad()
def best_so_far(params: Params, functions: GPSample, steps: int, seed: int = 0, inputs=BASE_INPUTS,
                standardise: bool = True) -> Tensor:
    """Best value found after each query on every function of ``functions``: ``[B, steps]`` (no gradients)."""
    generator = torch.Generator().manual_seed(seed)
    params = {name: p.to(functions.weights.dtype) for name, p in params.items()}
    _, ys = rollout(params, lambda x: gp_values(functions, x), functions.mask, steps, generator, inputs=inputs,
                    standardise=standardise)
    return torch.cummin(ys, 1).values


class LSTMOptimizer(nn.Module):
    """The learned black-box optimiser as a module: its weights and the record of how they were trained.

    Args:
        hidden: LSTM width H. max_dim: input slots D (problems of dimension 1..D). seed: initial weights.
        start: the untrained behaviour (see :func:`init_params`). inputs, standardise: what the network
            reads (see :func:`observe`; the defaults, except in ablations).

    ``params()`` gives the weights as a dict for the pure functions of this module (:func:`observe`,
    :func:`propose`, :func:`rollout`); :func:`mlkit.blackbox.minimize` runs it on a user's function.
    """

    def __init__(self, hidden: int = 128, max_dim: int = MAX_DIM, seed: int = 0, start: str = "local",
                 inputs=BASE_INPUTS, standardise: bool = True):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterDict({n: nn.Parameter(p) for n, p in
                                         init_params(hidden, max_dim, generator, start=start, inputs=inputs).items()})
        input_mask(max_dim, inputs)
        self.inputs, self.standardise = tuple(inputs), bool(standardise)
        self.record: dict = {}

    @property
    def hidden(self) -> int:
        return self.weights["w_rec"].shape[0]

    @property
    def max_dim(self) -> int:
        return self.weights["b_out"].shape[0] // 2

    def params(self) -> Params:
        """The weights, ``name -> tensor``."""
        return dict(self.weights)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, max_dim={self.max_dim}"

    def save(self, path: str | os.PathLike) -> None:
        """Write weights and training record atomically (a plain dict of tensors, loadable with weights_only)."""
        _save_atomic({"format": 2, "hidden": self.hidden, "max_dim": self.max_dim, "record": self.record,
                      "inputs": list(self.inputs), "standardise": self.standardise,
                      "params": {n: p.detach().cpu().clone() for n, p in self.weights.items()}}, Path(path))

    @classmethod
    def load(cls, path_or_file) -> "LSTMOptimizer":
        """Read what :meth:`save` wrote (a path or an open binary file)."""
        saved = torch.load(path_or_file, map_location="cpu", weights_only=True)
        optimizer = cls(saved["hidden"], saved["max_dim"], inputs=tuple(saved.get("inputs", BASE_INPUTS)),
                        standardise=saved.get("standardise", True))
        with torch.no_grad():
            for name, p in optimizer.weights.items():
                p.copy_(saved["params"][name])
        optimizer.record = saved["record"]
        return optimizer


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

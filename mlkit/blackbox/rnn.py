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

from .gp import GPSample, gp_values, rbf_kernel, sample_gp

Params = dict[str, Tensor]
MAX_DIM = 6
Z_CLIP = 5.0
LOGIT_SCALE = 2.5
LOG_SCALE_MID, LOG_SCALE_HALF = -2.5, 3.5  # log sigma = MID + HALF * tanh(raw), in [-6, 1]
INIT_SCALE_RAW = math.atanh((0.4 - LOG_SCALE_MID) / LOG_SCALE_HALF)  # log sigma = 0.4 at the start
LOSSES = ("sum", "oi", "ei")


def input_size(max_dim: int) -> int:
    """Width of the LSTM input: x, x_best (as scaled logits) and the mask (``max_dim`` each), then z, r, z_best."""
    return 3 * max_dim + 3


def scaled_logit(x: Tensor) -> Tensor:
    """``logit(x) / LOGIT_SCALE`` with x kept inside ``[0.005, 0.995]``: a query as the network reads it."""
    return torch.logit(x.clamp(0.005, 0.995)) / LOGIT_SCALE


def init_params(hidden: int = 128, max_dim: int = MAX_DIM, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> Params:
    """Fresh LSTM and output-head weights, ``name -> tensor``, uniform in ``+-1/sqrt(hidden)`` as torch's LSTM.

    The forget-gate bias starts at 1. The head starts near zero with a wide Gaussian (sigma about 1.5 logit
    units, close to uniform on the box), so an untrained optimiser behaves like random search; ``w_skip``
    maps the inputs straight to the head, so that "search near the best point" is one linear map away.
    """
    bound = 1.0 / math.sqrt(hidden)

    def uniform(*shape: int) -> Tensor:
        return (2 * torch.rand(*shape, generator=generator, dtype=dtype) - 1) * bound

    bias = uniform(4 * hidden)
    bias[hidden:2 * hidden] += 1.0
    return {"w_in": uniform(input_size(max_dim), 4 * hidden), "w_rec": uniform(hidden, 4 * hidden), "bias": bias,
            "w_out": 0.1 * uniform(hidden, 2 * max_dim), "w_skip": torch.zeros(input_size(max_dim), 2 * max_dim, dtype=dtype),
            "b_out": torch.cat([torch.zeros(max_dim, dtype=dtype), torch.full((max_dim,), INIT_SCALE_RAW, dtype=dtype)])}


class State(NamedTuple):
    """Everything a batch of runs carries between queries (each field batched over runs B).

    ``hidden, cell [B, H]``: the LSTM state. ``logits, log_scale [B, D]``: the Gaussian of the next query in
    logit space. ``count, y_mean, y_m2 [B]``: running statistics of the finite values (Welford).
    ``best_y [B]`` (inf before any finite value), ``best_x [B, D]``. ``observed [B, n]``: every value so far,
    +inf where an evaluation failed.
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


def initial_state(params: Params, batch: int) -> State:
    """The state before any observation, for ``batch`` independent runs."""
    hidden = params["w_rec"].shape[0]
    max_dim = params["b_out"].shape[0] // 2
    like = params["w_rec"]
    zeros = like.new_zeros(batch)
    return State(like.new_zeros(batch, hidden), like.new_zeros(batch, hidden), like.new_zeros(batch, max_dim),
                 like.new_zeros(batch, max_dim), zeros, zeros, zeros, torch.full_like(zeros, math.inf),
                 torch.full_like(like.new_zeros(batch, max_dim), 0.5), like.new_zeros(batch, 0))


def propose(state: State, mask: Tensor, noise: Tensor, uniform: Tensor) -> Tensor:
    """The next query of every run, ``[B, D]`` in ``[0, 1]`` (zero in unused slots).

    Args:
        state: from :func:`initial_state` or :func:`observe`. mask: ``[B, D]``.
        noise: ``[B, D]`` standard normal draws; uniform: ``[B, D]`` uniform draws, used for the first query.
    """
    if state.observed.shape[1] == 0:
        return uniform * mask
    return torch.sigmoid(state.logits + state.log_scale.exp() * noise) * mask


def observe(params: Params, state: State, x: Tensor, y: Tensor, mask: Tensor) -> State:
    """Read one evaluation per run and advance the LSTM one step.

    Args:
        x: ``[B, D]`` the queries (unit box, zero in unused slots); y: ``[B]`` their values, NaN or inf
            where the evaluation failed. mask: ``[B, D]``.

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
    z = torch.where(finite, ((y0 - y_mean) / scale).clamp(-Z_CLIP, Z_CLIP), torch.full_like(y, Z_CLIP))

    improved = finite & (y0 < state.best_y)
    best_y = torch.where(improved, y0, state.best_y)
    best_x = torch.where(improved[:, None], x, state.best_x)
    has_best = torch.isfinite(best_y)
    z_best = torch.where(has_best, ((torch.where(has_best, best_y, y_mean) - y_mean) / scale).clamp(-Z_CLIP, Z_CLIP),
                         torch.full_like(y, Z_CLIP))

    value = torch.where(finite, y0, torch.full_like(y, math.inf))
    if state.observed.shape[1] == 0:
        rank = torch.full_like(y, 0.5)
    else:
        rank = (state.observed > value[:, None]).to(y.dtype).mean(1)
    observed = torch.cat([state.observed, value.detach()[:, None]], 1)

    inputs = torch.cat([scaled_logit(x) * mask, scaled_logit(best_x) * mask, mask, z[:, None], rank[:, None],
                        z_best[:, None]], -1)
    gates = inputs @ params["w_in"] + state.hidden @ params["w_rec"] + params["bias"]
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, -1)
    cell = torch.sigmoid(forget_gate) * state.cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
    logits, raw_scale = (hidden @ params["w_out"] + inputs @ params["w_skip"] + params["b_out"]).chunk(2, -1)
    log_scale = LOG_SCALE_MID + LOG_SCALE_HALF * torch.tanh(raw_scale)
    return State(hidden, cell, logits, log_scale, count, y_mean, y_m2, best_y, best_x, observed)


def rollout(params: Params, objective: Callable[[Tensor], Tensor], mask: Tensor, steps: int,
            generator: torch.Generator | None = None, uniform: Tensor | None = None,
            noise: Tensor | None = None, detach_inputs: bool = False) -> tuple[Tensor, Tensor]:
    """Run the optimiser for ``steps`` queries on a batch of objectives.

    Args:
        objective: ``x [B, D] -> y [B]``, one function per row (differentiable for meta-training).
        mask: ``[B, D]`` the slots each function uses. generator: the random stream of the queries, used
            for ``uniform [B, D]`` (the first query) and ``noise [B, steps, D]`` unless they are given.
        detach_inputs: stop gradients where the network reads a query and its value back, so that the
            loss reaches the weights only through the queries and the LSTM state (lower-variance gradients).

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
            state = observe(params, state, x.detach() if detach_inputs else x, y.detach() if detach_inputs else y, mask)
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
    under the GP posterior of the earlier ones (needs the prior's ``lengthscales``).
    """
    steps = ys.shape[1]
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

    iterations: int = 3000
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

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot train."""
        for name in ("iterations", "batch", "horizon", "hidden", "max_dim", "features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.horizon < 2:
            raise ValueError(f"horizon must be at least 2, got {self.horizon}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: use one of {LOSSES}")
        if not (self.lr > 0 and self.clip > 0):
            raise ValueError(f"lr and clip must be positive, got lr={self.lr!r}, clip={self.clip!r}")


def sample_training_functions(config: TrainConfig, generator: torch.Generator) -> GPSample:
    """One meta-batch: dimensions uniform in ``1..max_dim``, then a GP draw for each."""
    dims = torch.randint(1, config.max_dim + 1, (config.batch,), generator=generator)
    return sample_gp(config.batch, dims, config.max_dim, config.features, tuple(config.lengthscale_range), generator)


def meta_train(config: TrainConfig, progress: bool = True, checkpoint: str | os.PathLike | None = None,
               checkpoint_every: int = 100) -> tuple[Params, dict]:
    """Meta-train the LSTM optimiser on GP draws by backpropagation through whole trajectories.

    Adam with a cosine-decayed learning rate and gradient-norm clipping; everything random comes from one
    generator seeded with ``config.seed``. With ``checkpoint``, the run saves itself atomically every
    ``checkpoint_every`` iterations and resumes from there (it refuses a checkpoint of other settings).

    Returns:
        ``(params, history)``: the trained weights and ``{"loss": [...], "seconds": float}``.
    """
    config.check()
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    params = {name: p.requires_grad_() for name, p in init_params(config.hidden, config.max_dim, generator).items()}
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, config.iterations) / config.iterations)))
    history = {"loss": [], "seconds": 0.0}
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=False)
        if saved["config"] != asdict(config):
            raise ValueError(f"checkpoint {path} was written with other settings; delete it or pass another path")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved["params"][name])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        history, start = saved["history"], saved["iteration"]

    began = time.perf_counter() - history["seconds"]
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc=f"meta-training ({config.loss})")
    for iteration in bar:
        functions = sample_training_functions(config, generator)
        xs, ys = rollout(params, lambda x: gp_values(functions, x), functions.mask, config.horizon, generator,
                         detach_inputs=config.detach_inputs)
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
        if path is not None and (done % checkpoint_every == 0 or done == config.iterations):
            history["seconds"] = time.perf_counter() - began
            _save_atomic({"config": asdict(config), "params": {n: p.detach() for n, p in params.items()},
                          "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                          "generator": generator.get_state(), "history": history, "iteration": done}, path)
    history["seconds"] = time.perf_counter() - began
    return {name: p.detach() for name, p in params.items()}, history


@torch.no_grad()
def best_so_far(params: Params, functions: GPSample, steps: int, seed: int = 0) -> Tensor:
    """Best value found after each query on every function of ``functions``: ``[B, steps]`` (no gradients)."""
    generator = torch.Generator().manual_seed(seed)
    params = {name: p.to(functions.weights.dtype) for name, p in params.items()}
    _, ys = rollout(params, lambda x: gp_values(functions, x), functions.mask, steps, generator)
    return torch.cummin(ys, 1).values


class LSTMOptimizer(nn.Module):
    """The learned black-box optimiser as a module: its weights and the record of how they were trained.

    Args:
        hidden: LSTM width H. max_dim: input slots D (problems of dimension 1..D). seed: initial weights.

    ``params()`` gives the weights as a dict for the pure functions of this module (:func:`observe`,
    :func:`propose`, :func:`rollout`); :func:`mlkit.blackbox.minimize` runs it on a user's function.
    """

    def __init__(self, hidden: int = 128, max_dim: int = MAX_DIM, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterDict({n: nn.Parameter(p) for n, p in init_params(hidden, max_dim, generator).items()})
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
        _save_atomic({"format": 1, "hidden": self.hidden, "max_dim": self.max_dim, "record": self.record,
                      "params": {n: p.detach().cpu().clone() for n, p in self.weights.items()}}, Path(path))

    @classmethod
    def load(cls, path_or_file) -> "LSTMOptimizer":
        """Read what :meth:`save` wrote (a path or an open binary file)."""
        saved = torch.load(path_or_file, map_location="cpu", weights_only=True)
        optimizer = cls(saved["hidden"], saved["max_dim"])
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

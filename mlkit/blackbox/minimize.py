"""``minimize`` and the ask/tell :class:`Minimizer`: the learned optimiser on a user's black-box function.

Behaviour on failures (documented contract, tested):

- ``f`` returns NaN, +inf or -inf, or something that is not a number: the evaluation counts as failed. It
  is kept in the history (``history_y`` holds NaN there, ``failed`` is True), it never becomes the best
  point, it is left out of the running statistics, and the optimiser reads it as the worst value possible.
- ``f`` raises an ``Exception``: with ``on_error="penalize"`` (default) the same as above, and the message
  is kept in ``result.errors`` as ``(evaluation index, repr(exception))``; with ``on_error="raise"`` an
  :class:`EvaluationError` is raised from the original exception and carries the history so far in
  ``.result``. ``KeyboardInterrupt`` and other non-``Exception`` errors always propagate.
"""
from __future__ import annotations

import functools
import importlib.resources
import math
import os
import secrets
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import rnn, surrogate

ON_ERROR = ("penalize", "raise")


class EvaluationError(RuntimeError):
    """``f`` raised under ``on_error="raise"``; ``.result`` is the :class:`scipy.optimize.OptimizeResult` so far."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result


@functools.lru_cache(maxsize=1)
def load_pretrained() -> rnn.LSTMOptimizer:
    """The optimiser that ships with mlkit (``mlkit/blackbox/pretrained/lstm.pt``), loaded once.

    It serves dimensions 1-6 and reads the suggestion of a GP surrogate (:mod:`mlkit.blackbox.surrogate`); it
    was made, without meta-training, by ``python -m mlkit.blackbox.pretrain`` (see that module for why). Its
    ``record`` holds the seed, every setting and a held-out check. Treat it as read-only.
    """
    with importlib.resources.files("mlkit.blackbox").joinpath("pretrained/lstm.pt").open("rb") as f:
        return rnn.LSTMOptimizer.load(f)


def _resolve_optimizer(optimizer) -> rnn.LSTMOptimizer:
    if optimizer is None:
        return load_pretrained()
    if isinstance(optimizer, rnn.LSTMOptimizer):
        return optimizer
    if isinstance(optimizer, (str, os.PathLike)):
        return rnn.LSTMOptimizer.load(optimizer)
    raise ValueError(f"optimizer must be None (the shipped one), an LSTMOptimizer or a path to one, got "
                     f"{type(optimizer).__name__}")


def _check_bounds(bounds, max_dim: int) -> np.ndarray:
    from scipy.optimize import Bounds

    if isinstance(bounds, Bounds):  # SciPy's own form: lb and ub arrays of shape [d] (scalars: d = 1)
        lb, ub = np.atleast_1d(np.asarray(bounds.lb, dtype=np.float64)), np.atleast_1d(np.asarray(bounds.ub, dtype=np.float64))
        if lb.ndim != 1 or lb.shape != ub.shape:
            raise ValueError(f"scipy Bounds must have lb and ub of the same shape [d], got {lb.shape} and {ub.shape}; "
                             "give one (low, high) pair per dimension, e.g. Bounds([0, 0], [1, 1])")
        bounds = np.stack([lb, ub], 1)
    try:
        array = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a [d, 2] array of (low, high) pairs, got {bounds!r}") from None
    if array.ndim != 2 or array.shape[1] != 2 or not 1 <= array.shape[0] <= max_dim:
        raise ValueError(f"bounds must have shape [d, 2] with 1 <= d <= {max_dim} (one (low, high) row per "
                         f"dimension), got shape {array.shape}; for more dimensions use CMA-ES or TPE")
    if not np.isfinite(array).all() or not (array[:, 0] < array[:, 1]).all():
        raise ValueError(f"every bound must be finite with low < high, got {array.tolist()}")
    return array


def _check_count(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
    return int(seed)


class Minimizer:
    """Ask-and-tell access to the learned optimiser, for objectives that Python cannot call directly.

    Args:
        bounds: ``[d, 2]`` (low, high) per dimension, ``1 <= d <= 6``, or a ``scipy.optimize.Bounds``.
        optimizer: ``None`` for the shipped :func:`load_pretrained`, an :class:`~mlkit.blackbox.rnn.LSTMOptimizer`
            or a path to a saved one.
        seed: ``None`` draws one (kept in ``self.seed``); run ``i`` of a batch uses ``seed + i``, so a batch
            reproduces single runs exactly.
        runs: ``None`` for one run (vectors ``[d]``, scalar values), or the number R of independent runs
            advanced together (arrays ``[R, d]`` and ``[R]``).

    ``suggest()`` returns the next point (the same one until it is observed); ``observe(x, y)`` records a
    value, for the suggested point or any other point inside the bounds (e.g. earlier results); NaN or inf
    marks a failed evaluation (see the module doc). ``result()`` gives SciPy-style results.
    Implements the optimiser of Chen et al. (2017) at test time: each observation is one LSTM step (and, for a
    network with the surrogate input, one fit of the GP surrogate).
    """

    def __init__(self, bounds, optimizer=None, seed: int | None = None, runs: int | None = None):
        self.optimizer = _resolve_optimizer(optimizer)
        self.bounds = _check_bounds(bounds, self.optimizer.max_dim)
        self.runs = _check_count("runs", runs, allow_none=True)
        self.seed = _check_seed(seed)
        self.dim = self.bounds.shape[0]
        batch = self.runs or 1
        max_dim = self.optimizer.max_dim
        self._params = {name: p.detach().to(torch.float64) for name, p in self.optimizer.params().items()}
        self._mask = torch.zeros(batch, max_dim, dtype=torch.float64)
        self._mask[:, :self.dim] = 1.0
        self._generators = [torch.Generator().manual_seed(self.seed + i) for i in range(batch)]
        self._state = rnn.initial_state(self._params, batch)
        self._pending: Tensor | None = None
        self._xs: list[np.ndarray] = []
        self._ys: list[np.ndarray] = []
        self._failed: list[np.ndarray] = []
        self.errors: list[list[tuple[int, str]]] = [[] for _ in range(batch)]

    @property
    def nfev(self) -> int:
        """Evaluations observed so far (per run)."""
        return len(self._ys)

    def _to_user(self, unit: Tensor) -> np.ndarray:
        low, high = self.bounds[:, 0], self.bounds[:, 1]
        return low + unit[:, :self.dim].numpy() * (high - low)

    def suggest(self) -> np.ndarray:
        """The next point to evaluate: ``[d]`` (one run) or ``[R, d]``, inside the bounds."""
        if self._pending is None:
            # each run draws from its own generator, so a batch equals its runs done one by one
            draws = [(torch.rand(self.optimizer.max_dim, generator=g, dtype=torch.float64),
                      torch.randn(self.optimizer.max_dim, generator=g, dtype=torch.float64)) for g in self._generators]
            uniform = torch.stack([u for u, _ in draws])
            noise = torch.stack([n for _, n in draws])
            with torch.no_grad():
                self._pending = rnn.propose(self._state, self._mask, noise, uniform)
        x = self._to_user(self._pending)
        return x if self.runs else x[0]

    def observe(self, x, y, error: str | list[str | None] | None = None) -> None:
        """Record the value ``y`` at ``x`` (``[d]`` and a number, or ``[R, d]`` and ``[R]``).

        ``y`` NaN or inf marks a failed evaluation. ``error``: a message (or one per run, None for none) kept
        in ``errors`` as ``(evaluation index, message)``.
        """
        batch = self.runs or 1
        x_array = np.asarray(x, dtype=np.float64).reshape(batch, -1) if np.size(x) == batch * self.dim else None
        if x_array is None:
            raise ValueError(f"x must have {'shape [' + str(self.runs) + ', ' if self.runs else 'shape ['}{self.dim}], "
                             f"got {np.shape(x)}")
        low, high = self.bounds[:, 0], self.bounds[:, 1]
        span = high - low
        if not np.isfinite(x_array).all() or (x_array < low - 1e-9 * span).any() or (x_array > high + 1e-9 * span).any():
            raise ValueError(f"x must lie inside the bounds {self.bounds.tolist()}, got {x_array.tolist()}")
        y_array = _values(y, batch)
        failed = ~np.isfinite(y_array)
        unit = torch.zeros(batch, self.optimizer.max_dim, dtype=torch.float64)
        unit[:, :self.dim] = torch.from_numpy(np.clip((x_array - low) / span, 0.0, 1.0))
        values = torch.from_numpy(np.where(failed, np.nan, y_array))
        draws = None
        if "model" in self.optimizer.inputs:  # the surrogate's candidates, from each run's own generator
            draws = torch.stack([torch.rand(surrogate.CANDIDATES, self.optimizer.max_dim, generator=g, dtype=torch.float64)
                                 for g in self._generators])
        with torch.no_grad():
            self._state = rnn.observe(self._params, self._state, unit, values, self._mask, self.optimizer.inputs,
                                      self.optimizer.standardise, draws)
        messages = error if isinstance(error, (list, tuple)) else [error] * batch
        for run, message in enumerate(messages):
            if message is not None:
                self.errors[run].append((self.nfev, message))
        self._xs.append(x_array.copy())
        self._ys.append(np.where(failed, np.nan, y_array))
        self._failed.append(failed)
        self._pending = None

    def result(self, budget: int | None = None):
        """SciPy ``OptimizeResult``s of what was observed: one, or a list of R for a batch of runs.

        Fields: ``x`` and ``fun`` (the best point and value; NaN if nothing succeeded), ``nfev``, ``nit``,
        ``success`` (at least one evaluation returned a finite value), ``message``, ``history_x [n, d]``,
        ``history_y [n]`` (NaN where failed), ``failed [n]``, ``best_so_far [n]``, ``errors``, ``seed``.
        """
        from scipy.optimize import OptimizeResult

        batch = self.runs or 1
        xs = np.stack(self._xs, 1) if self._xs else np.zeros((batch, 0, self.dim))
        ys = np.stack(self._ys, 1) if self._ys else np.zeros((batch, 0))
        failed = np.stack(self._failed, 1) if self._failed else np.zeros((batch, 0), dtype=bool)
        results = []
        for run in range(batch):
            finite = ~failed[run]
            n_failed = int(failed[run].sum())
            if finite.any():
                best = int(np.nanargmin(np.where(finite, ys[run], np.inf)))
                x_best, fun = xs[run, best].copy(), float(ys[run, best])
            else:
                x_best, fun = np.full(self.dim, np.nan), math.nan
            best_so_far = np.fmin.accumulate(np.where(finite, ys[run], np.inf)) if self.nfev else np.zeros(0)
            best_so_far[np.isinf(best_so_far)] = np.nan
            spent = f"{self.nfev} evaluations" + (f" (budget {budget})" if budget is not None else "")
            if not finite.any():
                message = f"no evaluation succeeded: {spent}, all failed" if self.nfev else "nothing observed yet"
            elif n_failed:
                message = f"{spent}; {n_failed} failed (NaN, inf or an exception) and were treated as worst"
            else:
                message = f"{spent} done"
            results.append(OptimizeResult(
                x=x_best, fun=fun, nfev=self.nfev, nit=self.nfev, success=bool(finite.any()), message=message,
                history_x=xs[run].copy(), history_y=ys[run].copy(), failed=failed[run].copy(),
                best_so_far=best_so_far, errors=list(self.errors[run]), seed=self.seed + run))
        return results if self.runs else results[0]


def _values(y, batch: int) -> np.ndarray:
    """``y`` as ``[batch]`` float64; anything that is not a number becomes NaN (a failed evaluation)."""
    if isinstance(y, Tensor):
        y = y.detach().cpu().double().numpy()
    try:
        array = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = np.full(batch, np.nan)
    if array.size != batch:
        raise ValueError(f"expected {batch} value(s), got {np.shape(y)}")
    return array


def minimize(f: Callable, bounds, budget: int = 100, optimizer=None, seed: int | None = None, runs: int | None = None,
             vectorized: bool = False, tensor: bool = False, on_error: str = "penalize", progress: bool = False):
    """Minimise a black-box function on a box with the learned optimiser (Chen et al., 2017).

    Args:
        f: the objective. Called with a float64 vector ``[d]`` (numpy; a torch tensor if ``tensor=True``)
            and returning a number; with ``vectorized=True`` called with ``[R, d]`` and returning ``[R]``.
        bounds: ``[d, 2]`` (low, high) per dimension, ``1 <= d <= 6``, or a ``scipy.optimize.Bounds``.
        budget: number of evaluations per run. The shipped optimiser refits its GP surrogate to every evaluation
            so far: a suggestion costs about 1 ms after 100 evaluations and 3 ms after 200 (growing as n^2 to n^3).
        optimizer: ``None`` (the shipped one), an :class:`~mlkit.blackbox.rnn.LSTMOptimizer` or a path.
        seed: reproducibility; run ``i`` uses ``seed + i``. ``None`` draws one (kept in ``result.seed``).
        runs: ``None`` for one run, or R independent runs advanced together (one LSTM batch).
        vectorized: call ``f`` once per step with all runs' points (else once per point).
        on_error: ``"penalize"`` or ``"raise"`` when ``f`` raises (see the module doc).
        progress: a progress bar over the evaluations.

    Returns:
        A SciPy ``OptimizeResult`` (a list of R with ``runs``): ``x``, ``fun``, ``nfev``, ``success``, ``message``
        and the full history (``history_x``, ``history_y``, ``failed``, ``best_so_far``, ``errors``, ``seed``).

    All arguments are checked before the first evaluation; a bad one raises ``ValueError``.
    """
    if not callable(f):
        raise ValueError(f"f must be callable, got {type(f).__name__}")
    budget = _check_count("budget", budget)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    minimizer = Minimizer(bounds, optimizer, seed, runs)
    from tqdm.auto import tqdm

    for _ in tqdm(range(budget), disable=not progress, desc="minimize"):
        points = np.atleast_2d(minimizer.suggest())
        values, errors = _evaluate(f, points, vectorized, tensor, on_error, minimizer, budget)
        minimizer.observe(points if runs else points[0], values if runs else values[0], errors)
    return minimizer.result(budget)


def _evaluate(f, points: np.ndarray, vectorized: bool, tensor: bool, on_error: str, minimizer: Minimizer, budget: int):
    """Values of ``f`` at ``points [R, d]``, NaN where it failed, and each run's error message (or None)."""
    convert = (lambda a: torch.from_numpy(a.copy())) if tensor else (lambda a: a.copy())
    batch = points.shape[0]
    values = np.full(batch, np.nan)
    errors: list[str | None] = [None] * batch

    def fail(exc: Exception, runs) -> None:
        for run in runs:
            errors[run] = repr(exc)
        if on_error == "raise":  # record this step first: no evaluation is lost
            minimizer.observe(points if minimizer.runs else points[0], values if minimizer.runs else values[0], errors)
            raise EvaluationError(f"f raised {exc!r} at evaluation {minimizer.nfev - 1}; the history so far is in "
                                  "this error's .result", minimizer.result(budget)) from exc

    if vectorized:
        try:
            values[:] = _values(f(convert(points)), batch)
        except Exception as exc:  # noqa: BLE001 - a user objective may raise anything; the contract says so
            fail(exc, range(batch))
        return values, errors
    for run in range(batch):
        try:
            values[run] = _values(f(convert(points[run])), 1)[0]
        except Exception as exc:  # noqa: BLE001
            fail(exc, [run])
    return values, errors

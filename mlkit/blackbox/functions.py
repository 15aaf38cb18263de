"""Standard global-optimisation test functions with their domains and known minima.

Definitions as in Dixon & Szegö (1978) and the Virtual Library of Simulation Experiments (Surjanovic &
Bingham): Branin, Goldstein-Price, Hartmann 3-D and Hartmann 6-D, and four that the learned optimiser is
never tuned on: the six-hump camel, Rosenbrock 4-D, Ackley 3-D and Levy 5-D (domains as in that library). Every function accepts a numpy array or
a torch tensor of shape ``[..., d]`` and returns ``[...]`` of the same kind, so one call evaluates a batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


def _backend(x):
    """(array module, constant maker) for numpy arrays or torch tensors."""
    if isinstance(x, torch.Tensor):
        return torch, lambda c: torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return np, lambda c: np.asarray(c, dtype=np.float64)


def _branin(x):
    xp, const = _backend(x)
    x1, x2 = x[..., 0], x[..., 1]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * xp.cos(x1) + 10


def _goldstein_price(x):
    x1, x2 = x[..., 0], x[..., 1]
    first = 1 + (x1 + x2 + 1) ** 2 * (19 - 14 * x1 + 3 * x1 ** 2 - 14 * x2 + 6 * x1 * x2 + 3 * x2 ** 2)
    second = 30 + (2 * x1 - 3 * x2) ** 2 * (18 - 32 * x1 + 12 * x1 ** 2 + 48 * x2 - 36 * x1 * x2 + 27 * x2 ** 2)
    return first * second


def _six_hump_camel(x):
    x1, x2 = x[..., 0], x[..., 1]
    return (4 - 2.1 * x1 ** 2 + x1 ** 4 / 3) * x1 ** 2 + x1 * x2 + (-4 + 4 * x2 ** 2) * x2 ** 2


def _rosenbrock(x):
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (x[..., :-1] - 1) ** 2).sum(-1)


def _ackley(x):
    xp, const = _backend(x)
    d = x.shape[-1]
    return (-20 * xp.exp(-0.2 * xp.sqrt((x ** 2).sum(-1) / d)) - xp.exp(xp.cos(2 * math.pi * x).sum(-1) / d)
            + 20 + math.e)


def _levy(x):
    xp, const = _backend(x)
    w = 1 + (x - 1) / 4
    inner = ((w[..., :-1] - 1) ** 2 * (1 + 10 * xp.sin(math.pi * w[..., :-1] + 1) ** 2)).sum(-1)
    last = (w[..., -1] - 1) ** 2 * (1 + xp.sin(2 * math.pi * w[..., -1]) ** 2)
    return xp.sin(math.pi * w[..., 0]) ** 2 + inner + last


_HARTMANN_ALPHA = [1.0, 1.2, 3.0, 3.2]
_HARTMANN3_A = [[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]]
_HARTMANN3_P = [[0.3689, 0.1170, 0.2673], [0.4699, 0.4387, 0.7470], [0.1091, 0.8732, 0.5547], [0.0381, 0.5743, 0.8828]]
_HARTMANN6_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_HARTMANN6_P = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
                [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381]]


def _hartmann(a, p):
    def f(x):
        xp, const = _backend(x)
        sq = (const(a) * (x[..., None, :] - const(p)) ** 2).sum(-1)  # [..., 4]
        return -(const(_HARTMANN_ALPHA) * xp.exp(-sq)).sum(-1)
    return f


@dataclass(frozen=True)
class TestFunction:
    """A test function with its domain and known global minimum.

    Fields: ``name``; ``bounds [d, 2]`` (low, high per dimension); ``minimum`` (the global minimum value);
    ``argmins`` (the points where it is attained, as published). Call it on ``[..., d]`` (numpy or torch).
    """

    name: str
    bounds: tuple[tuple[float, float], ...]
    minimum: float
    argmins: tuple[tuple[float, ...], ...]
    formula: Callable

    __test__ = False  # not a pytest test class

    @property
    def dim(self) -> int:
        return len(self.bounds)

    def __call__(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name} takes points of dimension {self.dim} (shape [..., {self.dim}]), got {tuple(x.shape)}")
        return self.formula(x)

    def regret(self, value):
        """``value - minimum`` (numpy or torch, any shape)."""
        return value - self.minimum


branin = TestFunction("Branin", ((-5.0, 10.0), (0.0, 15.0)), 0.397887357729738,
                      ((-math.pi, 12.275), (math.pi, 2.275), (9.42477796076938, 2.475)), _branin)
goldstein_price = TestFunction("Goldstein-Price", ((-2.0, 2.0), (-2.0, 2.0)), 3.0, ((0.0, -1.0),), _goldstein_price)
hartmann3 = TestFunction("Hartmann3", ((0.0, 1.0),) * 3, -3.86277978733266,
                         ((0.114614, 0.555649, 0.852547),), _hartmann(_HARTMANN3_A, _HARTMANN3_P))
hartmann6 = TestFunction("Hartmann6", ((0.0, 1.0),) * 6, -3.32236801141551,
                         ((0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573),), _hartmann(_HARTMANN6_A, _HARTMANN6_P))

six_hump_camel = TestFunction("Six-hump camel", ((-3.0, 3.0), (-2.0, 2.0)), -1.0316284534898774,
                              ((0.0898420131, -0.7126564030), (-0.0898420131, 0.7126564030)), _six_hump_camel)
rosenbrock4 = TestFunction("Rosenbrock4", ((-5.0, 10.0),) * 4, 0.0, ((1.0,) * 4,), _rosenbrock)
ackley3 = TestFunction("Ackley3", ((-32.768, 32.768),) * 3, 0.0, ((0.0,) * 3,), _ackley)
levy5 = TestFunction("Levy5", ((-10.0, 10.0),) * 5, 0.0, ((1.0,) * 5,), _levy)

ALL = {f.name: f for f in (branin, goldstein_price, hartmann3, hartmann6)}
UNSEEN = {f.name: f for f in (six_hump_camel, rosenbrock4, ackley3, levy5)}

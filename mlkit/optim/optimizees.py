"""Optimisees: task families whose tasks are *training problems*, each a loss over a flat parameter vector.

A family draws a population of problems with ``sample(tasks, generator=None, device=None)`` (the
:class:`mlkit.tasks.TaskFamily` signature) and returns :class:`Optimizees`: the starting points ``theta
[B, d]`` and whatever each problem owns (``data``, batched over B). ``loss(theta, data, generator)`` gives
``[B]`` losses, one per problem, by ``torch.func.vmap`` of the per-problem loss over the population.

- :class:`Quadratic`: ``f(theta) = ||W theta - y||^2``, theta in R^10, the first experiment of
  Andrychowicz et al. (2016).
- :class:`Network`: a small network trained on minibatches of a classification set; :func:`mlp` and
  :func:`conv` build the paper's MLP (one hidden layer of 20 sigmoid units), its generalisation probes
  (40 units, two layers, ReLU) and the transfer targets (a wider MLP, a small conv net, another dataset).
  The paper used MNIST; mlkit uses scikit-learn's 8x8 digits (offline), and Omniglot characters pooled to
  8x8 as the "other dataset".
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap


class Optimizees(NamedTuple):
    """A population of B problems: ``theta [B, d]`` starting points and ``data`` (tensors with leading B)."""

    theta: Tensor
    data: dict


def _check_tasks(tasks) -> None:
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks must be a positive int (the population size), got {tasks!r}")


def _check_theta(theta: Tensor, dim: int) -> None:
    if not isinstance(theta, Tensor) or theta.dim() != 2 or theta.shape[1] != dim:
        shape = list(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ValueError(f"theta must be [B, {dim}] (one row of parameters per problem), got {shape}")


class Quadratic:
    """Random quadratics ``f(theta) = ||W theta - y||^2`` with ``W [dim, dim]`` and ``y [dim]`` standard normal.

    Starting points are ``N(0, 0.01^2)`` as in the reference code of Andrychowicz et al. (2016). With
    ``noise > 0`` every evaluation sees ``y + noise * eps``, ``eps`` standard normal and fresh at each call
    (from the generator): a stochastic problem whose gradients are noisy, as a minibatch's are.
    """

    name = "quadratic"

    def __init__(self, dim: int = 10, init_std: float = 0.01, noise: float = 0.0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not noise >= 0:
            raise ValueError(f"noise must be non-negative, got {noise!r}")
        self.dim, self.init_std, self.noise = dim, float(init_std), float(noise)

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Optimizees:
        """Draw ``tasks`` quadratics: ``theta [B, dim]``, ``data = {"W": [B, dim, dim], "y": [B, dim]}``."""
        _check_tasks(tasks)
        w = torch.randn(tasks, self.dim, self.dim, generator=generator)
        y = torch.randn(tasks, self.dim, generator=generator)
        theta = self.init_std * torch.randn(tasks, self.dim, generator=generator)
        return Optimizees(theta.to(device), {"W": w.to(device), "y": y.to(device)})

    @staticmethod
    def loss_one(theta: Tensor, w: Tensor, y: Tensor) -> Tensor:
        """``||W theta - y||^2`` for one problem: ``theta [d]``, ``W [d, d]``, ``y [d]`` -> scalar."""
        return ((w @ theta - y) ** 2).sum()

    def loss(self, theta: Tensor, data: dict, generator: torch.Generator | None = None) -> Tensor:
        """Losses ``[B]`` of ``theta [B, dim]`` (``generator`` draws the noise, if any)."""
        _check_theta(theta, self.dim)
        y = data["y"]
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=generator).to(y.device)
        return vmap(self.loss_one)(theta, data["W"], y)

    def full_loss(self, theta: Tensor, data: dict, generator: torch.Generator | None = None) -> Tensor:
        """Noise-free losses ``[B]``."""
        _check_theta(theta, self.dim)
        return vmap(self.loss_one)(theta, data["W"], data["y"])


def digits_data(flat: bool = True) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: ``x [1797, 64]`` (or ``[1797, 1, 8, 8]``) in ``[0, 1]`` and labels ``[1797]``."""
    from mlkit.data.dataset import digits

    data = digits()
    x = data.images.float() / 255
    return (x.flatten(1) if flat else x), data.labels


def omniglot_data(classes: int = 10, flat: bool = True, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``classes`` Omniglot characters chosen with ``seed`` (20 drawings each), area-pooled from 28x28 to 8x8.

    Returns ``x [20 * classes, 64]`` (or ``[N, 1, 8, 8]``) in ``[0, 1]`` and labels ``[N]`` in ``0..classes-1``.
    Needs the Omniglot archives (see :class:`mlkit.data.Omniglot`).
    """
    from mlkit.data.omniglot import Omniglot

    data = Omniglot(progress=False)
    chosen = torch.randperm(len(data.classes), generator=torch.Generator().manual_seed(seed))[:classes]
    keep = torch.isin(data.labels, chosen)
    images = F.adaptive_avg_pool2d(data.images[keep].float() / 255, 8)
    labels = torch.searchsorted(chosen.sort().values, data.labels[keep])
    return (images.flatten(1) if flat else images), labels


ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: list[int], activation: str = "sigmoid") -> nn.Sequential:
    """A fully connected net ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least input and output widths, got {sizes!r}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def conv(channels: int = 8, classes: int = 10) -> nn.Sequential:
    """A small conv net for ``[1, 8, 8]`` images: conv 3x3 (``channels``), ReLU, max-pool 2, linear."""
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(-3),
                         nn.Linear(channels * 16, classes))


class Network:
    """Train ``model`` on minibatches of ``(x, y)`` with cross-entropy: each task is a fresh initialisation.

    Args:
        model: the architecture (its own weights are ignored); vmap-able layers only.
        x: ``[N, *item]`` inputs; y: ``[N]`` class labels. batch: examples per step (128 as in the paper).
        name: a label for reports.

    Fresh weights are uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default bound), biases too. Every call of
    :meth:`loss` draws a new minibatch per problem from ``generator``: a stochastic training problem.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch: int = 128, name: str = "network"):
        if x.shape[0] != y.shape[0] or y.dim() != 1:
            raise ValueError(f"x [N, ...] and y [N] must hold the same examples, got {list(x.shape)} and {list(y.shape)}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.model, self.x, self.y, self.batch, self.name = model, x, y.long(), batch, name
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        self.dim = sum(self.sizes)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``theta [d]`` -> the model's parameter dict (views)."""
        return {n: t.view(s) for (n, s), t in zip(self.shapes.items(), theta.split(self.sizes))}

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """The model's parameter dict -> ``[d]``."""
        return torch.cat([params[n].reshape(-1) for n in self.shapes])

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Optimizees:
        """``tasks`` fresh initialisations ``theta [B, d]``; ``data`` is empty (the dataset is shared)."""
        _check_tasks(tasks)
        parts, bound = [], 1.0
        for name, shape in self.shapes.items():
            if len(shape) > 1:
                bound = 1.0 / math.sqrt(math.prod(shape[1:]))
            parts.append((2 * torch.rand(tasks, math.prod(shape), generator=generator) - 1) * bound)
        return Optimizees(torch.cat(parts, 1).to(device), {})

    def loss_one(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of one problem: ``theta [d]`` on ``x [n, *item]``, ``y [n]`` -> scalar."""
        return F.cross_entropy(functional_call(self.model, self.unflatten(theta), (x,)), y)

    def loss(self, theta: Tensor, data: dict, generator: torch.Generator | None = None) -> Tensor:
        """Minibatch losses ``[B]`` of ``theta [B, d]``, a fresh minibatch of ``batch`` examples per problem."""
        _check_theta(theta, self.dim)
        index = torch.randint(0, self.x.shape[0], (theta.shape[0], self.batch), generator=generator)
        index = index.to(self.x.device)
        return vmap(self.loss_one)(theta, self.x[index], self.y[index])

    def full_loss(self, theta: Tensor, data: dict | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Losses ``[B]`` on the whole training set."""
        _check_theta(theta, self.dim)
        return vmap(self.loss_one, in_dims=(0, None, None))(theta, self.x, self.y)


def family(name: str) -> Quadratic | Network:
    """A named family of the benchmark and the book.

    ``"quadratic"``; ``"mlp"`` (the training family: digits, 64-20-10 sigmoid); the probes ``"mlp40"``,
    ``"mlp2x20"``, ``"relu"``; the transfer targets ``"wide"`` (64-100-10 sigmoid on digits), ``"conv"``
    (a small conv net on digits) and ``"omniglot"`` (64-20-10 sigmoid on 10 Omniglot characters at 8x8).
    """
    if name == "quadratic":
        return Quadratic()
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: use one of {['quadratic', *FAMILIES]}")
    sizes, activation, dataset = FAMILIES[name]
    if sizes == "conv":
        x, y = digits_data(flat=False)
        return Network(conv(), x, y, name=name)
    x, y = digits_data() if dataset == "digits" else omniglot_data()
    return Network(mlp(sizes, activation), x, y, name=name)


FAMILIES = {"mlp": ([64, 20, 10], "sigmoid", "digits"), "mlp40": ([64, 40, 10], "sigmoid", "digits"),
            "mlp2x20": ([64, 20, 20, 10], "sigmoid", "digits"), "relu": ([64, 20, 10], "relu", "digits"),
            "wide": ([64, 100, 10], "sigmoid", "digits"), "conv": ("conv", None, "digits"),
            "omniglot": ([64, 20, 10], "sigmoid", "omniglot")}

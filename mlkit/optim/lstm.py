"""The coordinatewise LSTM optimiser of Andrychowicz et al. (2016), as pure functions of a weight dict.

One small network ``m`` with weights ``phi`` reads the gradient of every coordinate of the optimisee on its
own, keeps a private state per coordinate, and proposes that coordinate's step:

    g_t = grad f(theta_t),   (u_t, s_{t+1}) = m_phi(preprocess(g_t), s_t),   theta_{t+1} = theta_t + u_t.

The weights are shared by all coordinates, so every coordinate of every parameter (and of every optimisee
of a population) is one row of a single batch: a 100,000-parameter network is one call on ``[100000, 2]``.
Design as in the paper: two LSTM layers of 20 units, the log-and-sign preprocessing with ``p = 10``, a
linear read-out scaled by 0.1. Letters are the paper's (the book's notation page writes m_theta and phi_t).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]
HIDDEN = 20
LAYERS = 2
P = 10.0
OUTPUT_SCALE = 0.1


def preprocess(grad: Tensor, p: float = P) -> Tensor:
    """The log-and-sign gradient preprocessing (Andrychowicz et al., 2016, Appendix A).

    ``g -> (log|g| / p, sign g)`` where ``|g| >= exp(-p)``, else ``(-1, exp(p) g)``: magnitudes over many
    orders become inputs of order one, and tiny gradients stay linear (no log of zero).

    Args:
        grad: ``[N]`` gradients, one per coordinate (any float dtype). p: the cut-off exponent (> 0).

    Returns:
        ``[N, 2]`` network inputs.
    """
    if not p > 0:
        raise ValueError(f"p must be positive, got {p!r}")
    big = grad.abs() >= math.exp(-p)
    first = torch.where(big, grad.abs().clamp(min=math.exp(-p)).log() / p, torch.full_like(grad, -1.0))
    second = torch.where(big, torch.sign(grad), math.exp(p) * grad)
    return torch.stack([first, second], -1)


def init_params(hidden: int = HIDDEN, layers: int = LAYERS, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> Params:
    """Fresh weights ``name -> tensor``, uniform in ``+-1/sqrt(hidden)`` as torch's LSTM; forget bias 1.

    Layer ``l`` has ``w_in{l} [in, 4H]``, ``w_rec{l} [H, 4H]``, ``bias{l} [4H]`` (gates in the order input,
    forget, cell, output); the read-out is ``w_out [H, 1]``, ``b_out [1]``, started small.
    """
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    bound = 1.0 / math.sqrt(hidden)

    def uniform(*shape: int) -> Tensor:
        return (2 * torch.rand(*shape, generator=generator, dtype=dtype) - 1) * bound

    params: Params = {}
    for layer in range(layers):
        width = 2 if layer == 0 else hidden
        bias = uniform(4 * hidden)
        bias[hidden:2 * hidden] += 1.0
        params.update({f"w_in{layer}": uniform(width, 4 * hidden), f"w_rec{layer}": uniform(hidden, 4 * hidden),
                       f"bias{layer}": bias})
    params["w_out"] = 0.1 * uniform(hidden, 1)
    params["b_out"] = torch.zeros(1, dtype=dtype)
    return params


def layers_of(params: Params) -> int:
    """Number of LSTM layers in ``params``."""
    return sum(1 for name in params if name.startswith("w_in"))


class State(NamedTuple):
    """Per-coordinate LSTM state: ``hidden, cell``, each ``[layers, N, H]`` for N coordinates."""

    hidden: Tensor
    cell: Tensor


def initial_state(params: Params, coordinates: int) -> State:
    """Zero state for ``coordinates`` coordinates, on the device and dtype of ``params``."""
    like = params["w_rec0"]
    zeros = like.new_zeros(layers_of(params), coordinates, like.shape[0])
    return State(zeros, zeros.clone())


def check_params(params: Params) -> None:
    """Raise ``ValueError`` unless ``params`` are LSTM-optimiser weights of consistent shapes."""
    if not isinstance(params, dict) or "w_rec0" not in params or "w_out" not in params:
        raise ValueError("params must be the dict of init_params (w_in0, w_rec0, bias0, ..., w_out, b_out)")
    hidden = params["w_rec0"].shape[0]
    for layer in range(layers_of(params)):
        width = 2 if layer == 0 else hidden
        for name, shape in ((f"w_in{layer}", (width, 4 * hidden)), (f"w_rec{layer}", (hidden, 4 * hidden)),
                            (f"bias{layer}", (4 * hidden,))):
            if name not in params or tuple(params[name].shape) != shape:
                raise ValueError(f"params[{name!r}] must have shape {list(shape)}")


def step(params: Params, grad: Tensor, state: State, p: float = P, scale: float = OUTPUT_SCALE) -> tuple[Tensor, State]:
    """One step of the learned optimiser for N coordinates at once.

    Args:
        params: the network's weights (:func:`init_params`). grad: ``[N]`` the gradient of each coordinate.
        state: :class:`State` with ``[layers, N, H]`` tensors. p: preprocessing cut-off. scale: output scale.

    Returns:
        ``(update [N], new_state)``: the step to *add* to the coordinates (Andrychowicz et al., 2016, Eq. 1-3).
    """
    if grad.dim() != 1:
        raise ValueError(f"grad must be a flat [N] tensor of coordinates, got shape {list(grad.shape)}")
    if state.hidden.shape[1] != grad.shape[0]:
        raise ValueError(f"state holds {state.hidden.shape[1]} coordinates but grad has {grad.shape[0]}")
    x = preprocess(grad.to(params["w_rec0"].dtype), p)
    hiddens, cells = [], []
    for layer in range(layers_of(params)):  # torch's fused cell: gates i, f, g, o as in init_params
        x, cell = torch.lstm_cell(x, (state.hidden[layer], state.cell[layer]), params[f"w_in{layer}"].T,
                                  params[f"w_rec{layer}"].T, params[f"bias{layer}"], None)
        hiddens.append(x)
        cells.append(cell)
    update = scale * (x @ params["w_out"] + params["b_out"])[:, 0]
    return update.to(grad.dtype), State(torch.stack(hiddens), torch.stack(cells))

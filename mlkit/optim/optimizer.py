"""``LearnedOptimizer``: the meta-trained coordinatewise LSTM as a drop-in ``torch.optim.Optimizer``."""
from __future__ import annotations

import importlib.resources
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from . import lstm

SHIPPED = ("mlp", "quadratic")


def save_params(params: lstm.Params, record: dict, path: str | os.PathLike) -> None:
    """Write LSTM-optimiser weights and their training record atomically (loadable with ``weights_only``)."""
    lstm.check_params(params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save({"format": 1, "record": record, "params": {n: p.detach().cpu().clone() for n, p in params.items()}}, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_params(source: str | os.PathLike = "mlp") -> tuple[lstm.Params, dict]:
    """Weights and record of a learned optimiser: a shipped one by name (``"mlp"``, ``"quadratic"``) or a file.

    ``"mlp"`` was meta-trained on the digits MLP (64-20-10, sigmoid), ``"quadratic"`` on random 10-D
    quadratics, both by ``python -m mlkit.optim.pretrain`` (the record holds the seed and every setting).
    """
    if isinstance(source, str) and source in SHIPPED:
        with importlib.resources.files("mlkit.optim").joinpath(f"pretrained/{source}.pt").open("rb") as f:
            saved = torch.load(f, map_location="cpu", weights_only=True)
    elif isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise ValueError(f"weights must be one of {SHIPPED} or the path of a saved optimiser; {source!r} is neither")
        saved = torch.load(source, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"weights must be a name in {SHIPPED}, a path or a dict of LSTM weights, got {type(source).__name__}")
    lstm.check_params(saved["params"])
    return saved["params"], saved["record"]


class LearnedOptimizer(torch.optim.Optimizer):
    """The coordinatewise LSTM optimiser of Andrychowicz et al. (2016) as a ``torch.optim.Optimizer``.

    Use it like SGD or Adam in a plain loop (``loss.backward(); opt.step(); opt.zero_grad()``). Each step
    gathers the gradients of every parameter that has one, runs all their coordinates through the LSTM in
    one batched call (:func:`mlkit.optim.lstm.step`), and adds the proposed steps. Each parameter keeps the
    LSTM state of its coordinates in ``self.state[p]``, so ``state_dict()`` / ``load_state_dict()`` save
    and resume a run exactly; the state dict also carries the LSTM weights.

    Args:
        params: parameters or parameter groups, as for any optimiser.
        weights: ``"mlp"`` (default: the shipped optimiser meta-trained on a small sigmoid MLP), ``"quadratic"``,
            a path written by :func:`save_params`, or a dict of weights (:func:`mlkit.optim.lstm.init_params`).
        scale: multiplies every proposed step (1 is the network as trained). It is each parameter group's
            ``"lr"``, so learning-rate schedulers (``StepLR``, ``LambdaLR``, ...) scale the proposed steps, and
            :func:`mlkit.fit` takes ``optimizer=LearnedOptimizer`` (or a factory or an instance of it).

    It was meta-trained for 100 steps on small networks; far outside that (long runs, ReLU nets, large
    models) it may do worse than a tuned Adam: see the book's chapter on learned optimisers.
    """

    def __init__(self, params, weights: str | os.PathLike | dict = "mlp", scale: float = 1.0):
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if isinstance(weights, dict):
            lstm.check_params(weights)
            rule, self.record = {n: t.detach().clone() for n, t in weights.items()}, {}
        else:
            rule, self.record = load_params(weights)
        self.rule = rule
        super().__init__(params, {"lr": float(scale)})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise ValueError("LearnedOptimizer does not support sparse gradients")
            device = params[0].device
            rule = {n: t.to(device) for n, t in self.rule.items()}
            for p in params:
                if not self.state[p]:
                    fresh = lstm.initial_state(rule, p.numel())
                    self.state[p].update(hidden=fresh.hidden, cell=fresh.cell, step=0)
            grad = torch.cat([p.grad.reshape(-1).to(rule["w_rec0"].dtype) for p in params])
            state = lstm.State(torch.cat([self.state[p]["hidden"].to(rule["w_rec0"].dtype) for p in params], 1),
                               torch.cat([self.state[p]["cell"].to(rule["w_rec0"].dtype) for p in params], 1))
            update, state = lstm.step(rule, grad, state)
            start = 0
            for p in params:
                n = p.numel()
                p.add_(group["lr"] * update[start:start + n].view_as(p).to(p.dtype))
                s = self.state[p]
                s["hidden"], s["cell"] = state.hidden[:, start:start + n], state.cell[:, start:start + n]
                s["step"] += 1
                start += n
        return loss

    def state_dict(self) -> dict:
        """The usual optimiser state dict plus ``"rule"``: the LSTM weights in use."""
        state = super().state_dict()
        state["rule"] = {n: t.clone() for n, t in self.rule.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from :meth:`state_dict` (the LSTM weights included, when present)."""
        state_dict = dict(state_dict)
        rule = state_dict.pop("rule", None)
        # States saved before the step multiplier was named "lr" call it "scale".
        state_dict["param_groups"] = [{("lr" if k == "scale" else k): v for k, v in group.items()}
                                      for group in state_dict["param_groups"]]
        if rule is not None:
            lstm.check_params(rule)
            self.rule = {n: t.detach().clone() for n, t in rule.items()}
        super().load_state_dict(state_dict)

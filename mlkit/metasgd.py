"""Meta-SGD: learn the initialisation and a per-parameter inner learning rate (Li et al., 2017)."""
from __future__ import annotations

import torch
from torch import nn

from . import core
from .maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: θ' = θ - α ∘ ∇L_support(θ), where α has the shape of θ and is meta-learned with it.

    Args: as :class:`MAML`; ``inner_lr`` is the value every entry of α starts from, unless
    ``init_range=(low, high)`` draws each entry from U[low, high] (the paper's choice is (0.005, 0.1)).
    ``maml.parameters()`` includes α, so the outer optimiser trains it. Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to
    Learn Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False, batched: bool = True, init_range: tuple[float, float] | None = None):
        super().__init__(model, loss, inner_lr, inner_steps, first_order, batched)
        if init_range is not None:
            low, high = init_range
            core.check_inner(low, inner_steps)
            core.check_inner(high, inner_steps)
            if low > high:
                raise ValueError(f"init_range must be (low, high) with low <= high, got {init_range}")
        self.names = [name for name, _ in model.named_parameters()]

        def initial(p):
            if init_range is None:
                return torch.full_like(p, float(inner_lr))
            return torch.rand_like(p) * (init_range[1] - init_range[0]) + init_range[0]

        # ParameterList, not ParameterDict: parameter names contain dots.
        self.inner_lrs = nn.ParameterList(nn.Parameter(initial(p.detach())) for _, p in model.named_parameters())

    def learning_rates(self) -> core.Params:
        """α as a dict ``name -> tensor`` shaped like the model's parameters."""
        return dict(zip(self.names, self.inner_lrs))

"""Meta-SGD: learn the initialisation and a per-parameter inner learning rate (Li et al., 2017)."""
from __future__ import annotations

import torch
from torch import nn

from .. import core
from .maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: θ' = θ - α ∘ ∇L_support(θ), where α has the shape of θ and is meta-learned with it.

    Args: as :class:`MAML`; ``inner_lr`` (a float) is the value every entry of α starts from, unless
    ``init_range=(low, high)`` draws each entry from U[low, high] (the paper's choice is (0.005, 0.1)).
    α exists for the parameters that require grad; ``maml.parameters()`` includes it, so the outer optimiser
    trains it, and the state saves it by parameter name (``inner_lrs.features/0/weight``).
    Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
    arXiv:1707.09835, 2017.
    """

    def __init__(self, model: nn.Module, loss="mse", inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False, batched: bool = True, init_range: tuple[float, float] | None = None,
                 task: str | None = None):
        if isinstance(inner_lr, (dict, torch.Tensor)):
            raise ValueError("Meta-SGD learns one step size per weight: give inner_lr as the float they start from")
        super().__init__(model, loss, inner_lr, inner_steps, first_order, batched, task)
        if init_range is not None:
            low, high = (core.check_number("init_range", v) for v in init_range)
            if low > high:
                raise ValueError(f"init_range must be (low, high) with low <= high, got {init_range}")
        self.init_range = init_range

        def initial(p: torch.Tensor) -> torch.Tensor:
            if init_range is None:
                return torch.full_like(p, float(inner_lr))
            return torch.rand_like(p) * (init_range[1] - init_range[0]) + init_range[0]

        # Keys are parameter names with "/" for ".", which a ParameterDict key may not contain.
        self.inner_lrs = nn.ParameterDict({name.replace(".", "/"): nn.Parameter(initial(p.detach()))
                                           for name, p in model.named_parameters() if p.requires_grad})

    def settings(self) -> dict:
        return {**super().settings(), "init_range": None if self.init_range is None else list(self.init_range)}

    def learning_rates(self) -> core.Params:
        """α as a dict ``name -> tensor`` shaped like the adapted parameters."""
        missing = [n for n in self.adapted_names() if n.replace(".", "/") not in self.inner_lrs]
        if missing:
            raise ValueError(f"parameters {missing} were frozen when this Meta-SGD was built, so they have no "
                             "learned step size; freeze them again, or build MetaSGD after unfreezing")
        return {name: self.inner_lrs[name.replace(".", "/")] for name in self.adapted_names()}

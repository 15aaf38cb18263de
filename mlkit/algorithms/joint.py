"""The joint-training baseline: one model fit to all tasks at once, fine-tuned on each at test time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ..tasks import TaskBatch
from .maml import MAML


class JointTraining(MAML):
    """Trains θ on the pooled data of every task with no inner loop; ``adapt`` still fine-tunes by
    ``inner_steps`` of gradient descent at α, as the MAML paper's "pretrained" baseline does
    (Finn et al., 2017, Sec. 5.1). Arguments as :class:`MAML`; ``first_order`` plays no role."""

    def task_loss(self, steps: int, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        x = torch.cat([support_x, query_x])
        y = torch.cat([support_y, query_y])
        return self.loss_fn(self.functional_forward(self.params(), x), y)

    def task_losses(self, batch: TaskBatch, steps: int) -> Tensor:
        return core.map_tasks(lambda *task: self.task_loss(steps, *task), batch.support_x, batch.support_y,
                              batch.query_x, batch.query_y)

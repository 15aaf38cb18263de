"""What every algorithm shares: the model check, input checks, eval mode, device, and the saved settings."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .. import checks, core
from ..tasks import TaskBatch

# On the CPU a convolution grouped by task is slower than one per task unless each task's batch is small,
# where vmap saves the per-call overhead: the crossover measured on Conv4 is ~16 28x28 images.
CPU_CONV_VMAP_MAX_ELEMENTS = 16 * 28 * 28


class MetaLearner(nn.Module):
    """Base of every mlkit algorithm: a map from a task's support set to a predictor (``adapt``, ``predict``)
    and the meta-objective that trains it (``meta_loss``).

    Args:
        model: the network, an ``nn.Module``; checked by :func:`mlkit.checks.check_model`.
        loss: ``"mse"``, ``"cross_entropy"`` or a callable ``(pred, target) -> scalar``.
        batched: compute all tasks at once; ``False`` runs the per-task reference loop (same numbers).

    ``state_dict()`` carries the algorithm's settings (:meth:`settings`), the loss and the model's parameter
    shapes; ``load_state_dict`` refuses a state written with other ones.
    """

    def __init__(self, model: nn.Module, loss="mse", batched: bool = True):
        super().__init__()
        checks.check_model(model)
        self.loss_fn = core.resolve_loss(loss)
        self.loss = loss
        self.model = model
        self.batched = batched
        self.example_shape: tuple[int, ...] | None = None  # per-example input shape seen in training
        self._output_shapes: dict = {}

    # Settings ----------------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The hyperparameters that define this algorithm (saved in the state and compared on load)."""
        return {}

    @property
    def classification(self) -> bool:
        """Whether the loss is a cross-entropy, so that the metric is accuracy."""
        return core.is_classification(self.loss)

    @property
    def device(self) -> torch.device:
        """Where the parameters (or buffers) live; the CPU for neither, e.g. ``ProtoNet(nn.Identity())`` on embeddings."""
        return next(self.parameters(), next(self.buffers(), torch.empty(0))).device

    def get_extra_state(self) -> dict:
        return {"algorithm": type(self).__name__, "loss": describe_callable(self.loss), "settings": self.settings(),
                "parameters": {name: list(p.shape) for name, p in self.named_parameters()},
                "example_shape": None if self.example_shape is None else list(self.example_shape)}

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        for key, what in (("algorithm", "the algorithm"), ("loss", "the loss"), ("settings", "the settings"),
                          ("parameters", "the parameter names and shapes")):
            if state.get(key) != mine[key]:
                raise ValueError(f"this state was saved by {_summary(state)} but is loaded into {_summary(mine)}: "
                                 f"{what} differ. Build the algorithm with the saved settings, or load only the "
                                 "network's weights with algorithm.model.load_state_dict(...)")
        if state.get("example_shape") is not None:
            self.example_shape = tuple(state["example_shape"])

    # Shared machinery ----------------------------------------------------------------------------------------
    def functional_forward(self, params: core.Params, x: Tensor) -> Tensor:
        """The model evaluated with ``params`` (and its own buffers) on ``x: [n, *in]``."""
        buffers = dict(self.model.named_buffers())
        return torch.func.functional_call(self.model, (params, buffers), (x,))

    def params(self) -> core.Params:
        """The model's parameters θ as a dict ``name -> tensor``."""
        return dict(self.model.named_parameters())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Put every module in eval mode (dropout off, frozen statistics) and restore each one's mode after."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def check_batch(self, batch: TaskBatch, targets: bool = True) -> None:
        """Check a batch against the model before any work: device, per-example shapes, label types and range."""
        if not isinstance(batch, TaskBatch):
            raise ValueError(f"expected a mlkit.tasks.TaskBatch, got {type(batch).__name__}")
        checks.check_model(self.model)
        checks.check_device(batch.support_x, self.device, "the batch")
        out_shape = self.output_shape(batch.support_x[0], "support_x of the first task")
        if targets:
            checks.check_targets(batch.support_y, out_shape, self.classification, "support_y")
            checks.check_targets(batch.query_y, out_shape, self.classification, "query_y")

    def output_shape(self, x: Tensor, name: str) -> tuple[int, ...]:
        """The model's output shape per example for inputs like ``x: [n, *in]``, found by one probing forward
        pass (cached), which also refuses models that write to buffers (:func:`mlkit.checks.probe_buffers`)."""
        key = (self.training, tuple(x.shape[1:]), x.device, tuple((n, tuple(p.shape)) for n, p in self.model.named_parameters()))
        if key not in self._output_shapes:
            try:
                out = checks.probe_buffers(self.model, functools.partial(self.functional_forward, self.params()), x)
            except RuntimeError as error:
                raise ValueError(f"the model cannot run on {name}, shape {list(x.shape)} ([n, *in]): {error}") from None
            self._output_shapes[key] = tuple(out.shape[1:])
        return self._output_shapes[key]

    def check_task(self, x: Tensor, y: Tensor | None = None, name: str = "support") -> None:
        """Check one task's inputs ``x: [n, *in]`` (and targets ``y: [n, *out]``) for ``adapt``/``predict``."""
        checks.check_model(self.model)
        checks.check_device(x, self.device, f"{name}_x")
        if self.example_shape is not None and tuple(x.shape[1:]) != self.example_shape:
            hint = (" It looks like a batch of tasks: pass one task, e.g. batch.support_x[i], or use meta_loss / "
                    "query_predictions for a TaskBatch." if tuple(x.shape[2:]) == self.example_shape else "")
            raise ValueError(f"{name}_x must be one task's examples [n, {', '.join(map(str, self.example_shape))}] "
                             f"(the shape this model was trained on), got {list(x.shape)}.{hint}")
        if y is None:
            return
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}_x has {x.shape[0]} examples but {name}_y has {y.shape[0]}")
        out_shape = self.output_shape(x, f"{name}_x")
        checks.check_targets(y[None], out_shape, self.classification, f"{name}_y")

    def record_example_shape(self, batch: TaskBatch) -> None:
        if self.training:
            self.example_shape = tuple(batch.support_x.shape[2:])

    def vectorize(self, x: Tensor) -> bool:
        """vmap over tasks, or run them one by one? (Same numbers; only the speed differs.)"""
        if x.device.type != "cpu" or not any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules()):
            return True
        return x[0].numel() < CPU_CONV_VMAP_MAX_ELEMENTS

    def readable(self, batched: Callable[[], Tensor], loop_first_task: Callable[[], object]) -> Tensor:
        """Run the batched computation; if it fails, run the first task alone through the reference path and
        raise its error, whose message names the mistake without vmap's internals."""
        try:
            return batched()
        except RuntimeError:
            try:
                loop_first_task()
            except Exception as error:
                raise error from None
            raise

    def forward(self, batch: TaskBatch) -> Tensor:
        return self.meta_loss(batch)


def describe_callable(loss) -> str:
    """A stable description of a loss or factory for saved state: its name, or the callable's qualified name."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, functools.partial):
        return f"partial({describe_callable(loss.func)}, {sorted(loss.keywords.items())})"
    if isinstance(loss, nn.Module):
        options = {k: v for k, v in vars(loss).items() if not k.startswith("_") and k != "training"}
        return f"{type(loss).__name__}({sorted(options.items())})"
    return f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', type(loss).__name__)}"


def _summary(state: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in (state.get("settings") or {}).items())
    return f"{state.get('algorithm', '?')}(loss={state.get('loss', '?')}{', ' + settings if settings else ''})"

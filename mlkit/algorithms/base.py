"""What every algorithm shares: the model check, input checks, eval mode, device, and the saved settings."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import types
import warnings
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
        loss: ``"mse"``, ``"cross_entropy"`` or any callable ``(pred [n, *out], target [n, ...]) -> scalar``
            (a focal loss, ``nn.NLLLoss()``, a Gaussian NLL, ...); a loss that does not return a scalar is refused.
        batched: compute all tasks at once; ``False`` runs the per-task reference loop (same numbers). If the
            model cannot run under ``torch.func.vmap`` (data-dependent ``if``, ``nn.GRU``, ``.item()``, boolean
            masks) but runs task by task, the first batch warns once, naming the layer, and the algorithm
            continues with ``batched=False``.
        task: what the targets are: ``"classification"`` (labels ``[n]``, torch.long, in ``0..classes-1``;
            ``evaluate`` reports accuracy), ``"regression"`` (any targets the loss accepts), or ``None``: the
            cross-entropies are classification, ``"mse"`` regression, and a custom loss follows its targets
            (integer labels are checked as classification, real targets are left to the loss).

    ``state_dict()`` carries the algorithm's settings (:meth:`settings`), the loss and the model's parameter
    shapes; ``load_state_dict`` refuses a state written with other ones.
    """

    def __init__(self, model: nn.Module, loss="mse", batched: bool = True, task: str | None = None):
        super().__init__()
        checks.check_model(model)
        self.loss_fn = core.resolve_loss(loss)
        self.task = core.resolve_task(loss, task)
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
        """Whether the task is classification (a cross-entropy, or ``task="classification"``): the metric is accuracy."""
        return self.task == "classification"

    def check_targets(self, y: Tensor, out_shape: tuple[int, ...], name: str) -> None:
        """Check targets ``y: [tasks, n, *out]`` for this algorithm's task (:func:`mlkit.checks.check_targets`);
        with ``task=None`` and a custom loss, integer targets are checked as class labels."""
        classification = self.task == "classification" or (
            self.task is None and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool))
        checks.check_targets(y, out_shape, classification, name, same_shape=core.is_elementwise(self.loss))

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
        checks.check_not_empty(batch)
        checks.check_device(batch.support_x, self.device, "the batch")
        out_shape = self.output_shape(batch.support_x[0], "support_x of the first task")
        if targets:
            self.check_targets(batch.support_y, out_shape, "support_y")
            self.check_targets(batch.query_y, out_shape, "query_y")

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
        checks.check_examples(x, y, name)
        what = f"pass one task, e.g. batch.{name}_x[i], or use meta_loss / query_predictions for a TaskBatch."
        if self.example_shape is not None and tuple(x.shape[1:]) != self.example_shape:
            raise ValueError(f"{name}_x must be one task's examples [n, {', '.join(map(str, self.example_shape))}] "
                             f"(the shape this model was trained on), got {list(x.shape)}."
                             f"{' It looks like a batch of tasks: ' + what if tuple(x.shape[2:]) == self.example_shape else ''}")
        if self.example_shape is None and self._pools_tasks(x):
            raise ValueError(f"{name}_x {list(x.shape)} looks like a batch of tasks [tasks, n, *in]: the model maps "
                             f"its first two dimensions alike, so one task would pool {x.shape[0]} tasks; {what} If each "
                             f"example really is {list(x.shape[1:])}, set algorithm.example_shape = {tuple(x.shape[1:])}")
        if y is None:
            return
        out_shape = self.output_shape(x, f"{name}_x")
        self.check_targets(y[None], out_shape, f"{name}_y")

    def _pools_tasks(self, x: Tensor) -> bool:
        """Whether the model maps ``x: [a, b, *rest]`` exactly as ``x.flatten(0, 1)``: then an input shaped like a
        batch of tasks would be taken as one task whose examples are ``[b, *rest]``, pooling the tasks. Checked
        once per input shape, in eval mode, while no example shape is known (a fresh or reloaded model)."""
        if x.dim() < 3:
            return False
        key = ("pools", tuple(x.shape), x.device)
        if key not in self._output_shapes:
            devices = [x.device] if x.device.type == "cuda" else []
            pools = False
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.evaluating():
                try:
                    whole = self.functional_forward(self.params(), x)
                    flat = self.functional_forward(self.params(), x.flatten(0, 1))
                    pools = (whole.shape[:2] == x.shape[:2] and flat.shape == whole.flatten(0, 1).shape
                             and torch.allclose(whole.flatten(0, 1), flat, rtol=1e-4, atol=1e-5))
                except RuntimeError:
                    pass
            self._output_shapes[key] = pools
        return self._output_shapes[key]

    def check_params(self, params, names: Iterator[str] | None = None) -> None:
        """Refuse adapted parameters that are not a complete ``name -> tensor`` dict of this model (a partial
        dict would mix adapted and unadapted weights silently)."""
        expected = list(self.params()) if names is None else list(names)
        if not isinstance(params, dict):
            raise ValueError(f"params must be the dict adapt returned (name -> tensor), got {type(params).__name__}")
        missing = [n for n in expected if n not in params]
        extra = [n for n in params if n not in expected]
        if missing or extra:
            raise ValueError(f"params must hold every parameter of the model, as adapt returns them: "
                             f"{'missing ' + str(missing[:4]) if missing else ''}{'; ' if missing and extra else ''}"
                             f"{'unknown ' + str(extra[:4]) if extra else ''}. Pass the whole dict from adapt "
                             "(merge your changes into it: {**params, name: tensor})")

    def record_example_shape(self, batch: TaskBatch) -> None:
        if self.training:
            self.example_shape = tuple(batch.support_x.shape[2:])

    def vectorize(self, x: Tensor) -> bool:
        """vmap over tasks, or run them one by one? (Same numbers; only the speed differs.)"""
        if x.device.type != "cpu" or not any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules()):
            return True
        return x[0].numel() < CPU_CONV_VMAP_MAX_ELEMENTS

    def readable(self, batched: Callable[[], Tensor], loop_first_task: Callable[[], object],
                 loop: Callable[[], Tensor]) -> Tensor:
        """Run the batched computation; if it fails, run the first task alone through the reference path. If
        that fails too, raise its error, whose message names the mistake without vmap's internals; if it works,
        the model cannot run under ``vmap``: warn once, naming the layer, set ``batched=False`` and return
        ``loop()``, the same computation task by task."""
        try:
            return batched()
        except RuntimeError as error:
            try:
                loop_first_task()
            except Exception as reference:
                raise reference from None
            where = self._failing_module(batched)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warnings.warn(f"{where} cannot run under torch.func.vmap ({reason[:200]}); {type(self).__name__} runs "
                          "the tasks one by one from now on (batched=False), which gives the same numbers more "
                          f"slowly. Pass batched=False to {type(self).__name__} to silence this warning",
                          UserWarning, stacklevel=3)
            self.batched = False
            return loop()

    def _failing_module(self, batched: Callable[[], Tensor]) -> str:
        """Which module ``batched()`` fails in: the innermost one entered and not left (or the loss)."""
        stack: list[str] = []
        labels = {module: checks.module_label(path, module) for path, module in self.model.named_modules()}

        def enter(module, args):
            stack.append(labels[module])

        def leave(module, args, output):
            stack.pop()

        handles = [h for module in labels for h in (module.register_forward_pre_hook(enter),
                                                    module.register_forward_hook(leave))]
        try:
            with torch.no_grad():
                batched()
        except Exception:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return stack[-1] if stack else "the loss (or code outside the model's modules)"

    def outside_inference_mode(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Copies of inference-mode ``tensors`` usable in autograd (call inside ``torch.inference_mode(False)``):
        adaptation takes gradients even when its result is not differentiated."""
        return tuple(t.clone() if isinstance(t, Tensor) and t.is_inference() else t for t in tensors)

    def forward(self, batch: TaskBatch) -> Tensor:
        return self.meta_loss(batch)


def describe_callable(loss) -> str:
    """A stable description of a loss or factory for saved state: its name, or the callable's qualified name.

    A lambda or nested function (``<lambda>`` or ``<locals>`` in its name, which does not tell two apart) also
    gets a fingerprint of its code, constants (nested lambdas included), defaults and closure values."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, functools.partial):
        return f"partial({describe_callable(loss.func)}, {sorted(loss.keywords.items())})"
    if isinstance(loss, nn.Module):
        options = {k: v for k, v in vars(loss).items() if not k.startswith("_") and k != "training"}
        return f"{type(loss).__name__}({sorted(options.items())})"
    name = f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', type(loss).__name__)}"
    if isinstance(loss, types.FunctionType) and ("<lambda>" in name or "<locals>" in name):
        return f"{name}#{_fingerprint(loss)}"
    return name


def _fingerprint(function: types.FunctionType) -> str:
    """12 hex digits that change with a function's bytecode, constants, names, defaults and closure values."""
    def code_parts(code: types.CodeType) -> list:
        return [code.co_code, code.co_names, [code_parts(c) if isinstance(c, types.CodeType) else _plain(c)
                                              for c in code.co_consts]]

    cells = []
    for cell in function.__closure__ or ():
        try:
            cells.append("<self>" if cell.cell_contents is function else _plain(cell.cell_contents))
        except ValueError:  # a cell not yet filled
            cells.append("<empty>")
    parts = [code_parts(function.__code__), _plain(function.__defaults__), cells]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _plain(value) -> str:
    """A value's repr if it is plain data (numbers, strings, tuples of them), else its type and, for functions,
    their own description."""
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr([_plain(v) for v in value])
    if callable(value) and not isinstance(value, type):
        return describe_callable(value)
    return type(value).__qualname__


def _summary(state: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in (state.get("settings") or {}).items())
    return f"{state.get('algorithm', '?')}(loss={state.get('loss', '?')}{', ' + settings if settings else ''})"

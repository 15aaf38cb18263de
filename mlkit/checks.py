"""Checks shared by every algorithm and by ``fit``: one model check for both paths, and readable input errors.

Everything here raises ``ValueError`` with what was wrong and what to do, before any work is done.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def module_label(path: str, module: nn.Module) -> str:
    """``"model.features.1 (BatchNorm2d)"``: where a module sits and what it is."""
    return f"model{'.' + path if path else ''} ({type(module).__name__})"


def check_model(model: nn.Module) -> None:
    """Refuse a model that adaptation cannot run functionally, naming the module by its path and type.

    A normalisation layer that keeps running statistics and is in training mode would update them in every
    forward pass; in eval mode its statistics are constants and it is accepted. Other modules that write to
    their buffers are caught by :func:`probe_buffers` on the first forward pass.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for path, module in model.named_modules():
        if isinstance(module, _NORMS) and module.track_running_stats and module.training:
            raise ValueError(
                f"{module_label(path, module)} updates running statistics in training mode, which adaptation "
                "cannot do functionally: use mlkit.models.replace_batchnorm(model) to normalise with each batch's "
                "statistics, or freeze the statistics with eval() on that module")


def probe_buffers(model: nn.Module, forward, x: Tensor) -> Tensor:
    """Run ``forward(x)`` once without gradients and refuse a model that writes to its buffers in it.

    The random state is restored afterwards, so the probe does not change the numbers of the run it
    precedes; a buffer the forward pass changed is restored too. Returns the output ``[n, *out]``.
    """
    buffers = dict(model.named_buffers())
    versions = {name: b._version for name, b in buffers.items()}
    saved = {name: b.detach().clone() for name, b in buffers.items()}
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        out = forward(x)
    changed = [name for name, b in buffers.items() if b._version != versions[name]]
    if changed:
        with torch.no_grad():
            for name in changed:
                buffers[name].copy_(saved[name])
        owner = changed[0].rpartition(".")[0]
        raise ValueError(f"{module_label(owner, model.get_submodule(owner))} writes to its buffer "
                         f"{changed[0].rpartition('.')[2]!r} in forward, which adaptation cannot do functionally "
                         "(each task needs its own copy): keep that state out of buffers, or freeze the module "
                         "with eval()")
    return out


def check_targets(y: Tensor, out_shape: tuple[int, ...], classification: bool, name: str,
                  same_shape: bool = True) -> None:
    """Check targets ``y: [tasks, n, *out]`` against the model's output shape per example.

    Args:
        y: the targets of a batch of tasks. out_shape: the model's output shape per example.
        classification: integer class labels ``[tasks, n]`` (``torch.long``) in ``0..classes-1``, where
            ``classes`` is the last output dimension.
        name: what to call ``y`` in the message.
        same_shape: (regression) ``*out`` must equal ``out_shape``, for losses that compare elementwise and would
            broadcast a mismatch silently; ``False`` leaves the shapes to the loss (e.g. a Gaussian NLL).
    """
    if classification:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} holds {y.dtype} values, but classification needs integer class labels "
                             f"(torch.long); convert them with .long(), or pass task='regression' for a loss on "
                             "real targets")
        if y.dtype != torch.long:
            raise ValueError(f"{name} holds {y.dtype} class labels, but the losses index with torch.long; convert "
                             "them with .long()")
        if y.dim() != 2:
            raise ValueError(f"{name} must be one label per example, [tasks, n], got shape {list(y.shape)}")
        classes = out_shape[-1] if out_shape else 1
        if y.numel():
            low, high = torch.aminmax(y)
            low, high = int(low), int(high)
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                raise ValueError(f"{name} contains label {bad}, but the model outputs {classes} classes, so labels "
                                 f"must lie in 0..{classes - 1}; remap the labels per task or widen the model's "
                                 "output layer")
    elif same_shape and tuple(y.shape[2:]) != tuple(out_shape):
        hint = (" (integer labels of a custom classification loss? pass task='classification')"
                if not y.is_floating_point() and y.dim() == 2 else "")
        raise ValueError(f"{name} has per-example shape {list(y.shape[2:])}, but the model predicts "
                         f"{list(out_shape)} per example; reshape the targets to [tasks, n, {', '.join(map(str, out_shape))}]"
                         f"{hint}")


def check_not_empty(batch, name: str = "the batch") -> None:
    """Refuse a batch of tasks with no task, or with an empty support or query set."""
    if batch.tasks == 0:
        raise ValueError(f"{name} has 0 tasks (support_x {list(batch.support_x.shape)}); sample at least one task")
    for part in ("support", "query"):
        x = getattr(batch, f"{part}_x")
        if x.shape[1] == 0:
            raise ValueError(f"every task's {part} set in {name} is empty ({part}_x {list(x.shape)}); give each task "
                             f"at least one {part} example")


def check_examples(x: Tensor, y: Tensor | None, name: str) -> None:
    """Refuse one task's inputs ``x: [n, *in]`` with no example, or whose targets ``y`` count other examples."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name}_x has no examples (shape {list(x.shape)}); give at least one")
    if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(f"{name}_x has {x.shape[0]} examples but {name}_y has "
                         f"{y.shape[0] if y.dim() else 'none (a scalar)'}; give one target per example")


def check_device(x: Tensor, device: torch.device, name: str) -> None:
    """Refuse an input on another device than the model, saying how to move it."""
    if x.device != device and not (x.device.type == device.type == "cuda" and device.index is None):
        raise ValueError(f"{name} is on {x.device} but the model is on {device}; move the data with "
                         f".to({str(device)!r}) (a TaskBatch has .to(device) too), or sample it with device=")


def check_family(family, name: str = "family") -> None:
    """Refuse anything that is not a task family: ``sample(tasks, generator=None, device=None) -> TaskBatch``."""
    sample = getattr(family, "sample", None)
    if not callable(sample):
        raise ValueError(f"{name} must be a task family with a sample(tasks, generator=None, device=None) method "
                         f"(see mlkit.tasks.TaskFamily), got {family!r}")
    try:
        inspect.signature(sample).bind(1, generator=None, device=None)
    except TypeError:
        raise ValueError(f"{name}.sample must accept (tasks, generator=None, device=None) (see mlkit.tasks.TaskFamily); "
                         f"{type(family).__name__}.sample{inspect.signature(sample)} does not") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it


def check_seed(seed) -> int:
    """``seed`` unless it is not an integer (``ValueError``); ``None`` is refused, as the run must be repeatable."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer (it fixes the tasks drawn, so that a run can be repeated and "
                         f"resumed), got {seed!r}; for a fresh stream each run pass e.g. seed=random.randrange(2**31)")
    return seed


def positive_int(name: str, value) -> int:
    """``value`` unless it is not a positive integer (``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value

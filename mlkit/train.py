"""The shared meta-training loop, evaluation with confidence intervals, and atomic checkpoints."""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .maml import MAML


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda > mps > cpu; otherwise the named device, which must be available."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]', 'mps' or a torch.device, got {device!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda[:N]' or 'mps'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use device='auto' or 'cpu'")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} was asked for but MPS is not available here; use device='auto' or 'cpu'")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use 'auto', 'cpu', 'cuda[:N]' or 'mps'")
    return resolved


@dataclass
class History:
    """What ``fit`` records: the meta-loss of every iteration and each periodic evaluation."""

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_iteration: list[int] = field(default_factory=list)
    eval_mean: list[float] = field(default_factory=list)
    eval_ci95: list[float] = field(default_factory=list)
    metric: str = ""
    seconds: float = 0.0


def metric_name(algorithm: MAML) -> str:
    """``"accuracy"`` (percent) for a cross-entropy loss, else ``"mse"``... or ``"loss"`` for a callable."""
    if algorithm.loss == "cross_entropy":
        return "accuracy"
    return "mse" if algorithm.loss == "mse" else "loss"


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


EVAL_BLOCK = 100


@torch.no_grad()
def evaluate(algorithm: MAML, family, tasks: int = 600, steps: int | None = None, meta_batch: int = 100,
             seed: int = 1234, device: str | torch.device | None = None, progress: bool = False) -> tuple[float, float]:
    """Adapt to ``tasks`` fresh tasks and score each on its query set.

    Args:
        algorithm: a MAML-family module. family: a task family with ``sample(n, generator, device)``.
        tasks: number of test tasks; steps: inner steps at test (default: the algorithm's).
        meta_batch: tasks adapted at once; seed: fixes the test tasks; device: default the algorithm's.
    Returns:
        ``(mean, ci95)`` over tasks of the query metric (MSE for "mse", accuracy in percent for
        "cross_entropy", the loss otherwise), with ci95 = 1.96·std/√tasks.
    """
    _positive_int("tasks", tasks)
    _positive_int("meta_batch", meta_batch)
    device = _module_device(algorithm) if device is None else resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    metric = metric_name(algorithm)
    scores = []
    with tqdm(total=tasks, desc="evaluate", leave=False, disable=not progress) as bar:
        while len(scores) < tasks:
            # Tasks are drawn in blocks of a fixed size, so they do not depend on meta_batch.
            block = family.sample(min(EVAL_BLOCK, tasks - len(scores)), generator=generator)
            for start in range(0, block.tasks, meta_batch):
                batch = block[start:start + meta_batch].to(device)
                pred = algorithm.query_predictions(batch, steps)
                if metric == "accuracy":
                    score = (pred.argmax(-1) == batch.query_y).float().mean(1) * 100
                elif metric == "mse":
                    score = ((pred - batch.query_y) ** 2).flatten(1).mean(1)
                else:
                    score = torch.stack([algorithm.loss_fn(p, y) for p, y in zip(pred, batch.query_y)])
                scores.extend(score.double().cpu().tolist())
                bar.update(len(score))
    values = torch.tensor(scores, dtype=torch.float64)
    ci95 = 1.96 * values.std(unbiased=True).item() / math.sqrt(tasks) if tasks > 1 else float("nan")
    return values.mean().item(), ci95


def fit(algorithm: MAML, family, iterations: int, meta_batch: int = 25, meta_lr: float = 1e-3,
        device: str | torch.device = "auto", seed: int = 0, eval_every: int | None = None, eval_tasks: int = 100,
        eval_steps: int | None = None, eval_family=None, checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 500, minutes: float | None = None, progress: bool = True) -> History:
    """Meta-train ``algorithm`` with Adam on tasks drawn from ``family``.

    Args:
        algorithm: a MAML-family module (moved to ``device``). family: a task family.
        iterations: total outer steps; meta_batch: tasks per step; meta_lr: Adam's learning rate.
        device: "auto" (cuda > mps > cpu), "cpu", "cuda[:N]", "mps". seed: fixes the task stream.
        eval_every: evaluate on ``eval_tasks`` fixed tasks every N iterations (and at the end), drawn from
            ``eval_family`` (e.g. validation classes; default: ``family``) and adapted with ``eval_steps``.
        checkpoint: a file to save to every ``checkpoint_every`` iterations (atomically) and to resume from.
        minutes: stop early once this much training time has passed (resumed time included).
    Returns:
        A :class:`History`. Raises ``FloatingPointError`` on a non-finite meta-loss, ``ValueError`` on bad
        arguments (before any work or file write).
    """
    _positive_int("iterations", iterations)
    _positive_int("meta_batch", meta_batch)
    _positive_int("checkpoint_every", checkpoint_every)
    _positive_int("eval_tasks", eval_tasks)
    if eval_every is not None:
        _positive_int("eval_every", eval_every)
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not minutes > 0 or not math.isfinite(minutes)):
        raise ValueError(f"minutes must be a positive finite number of minutes, got {minutes!r}")
    if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not math.isfinite(meta_lr) or meta_lr <= 0:
        raise ValueError(f"meta_lr must be a positive finite number, got {meta_lr!r}")
    if not isinstance(algorithm, MAML):
        raise ValueError(f"algorithm must be an mlkit algorithm (MAML, MetaSGD, ...), got {type(algorithm).__name__}")
    for name, value in (("family", family), ("eval_family", family if eval_family is None else eval_family)):
        if not callable(getattr(value, "sample", None)):
            raise ValueError(f"{name} must be a task family with a sample(tasks, generator, device) method, got {value!r}")
    device = resolve_device(device)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists() and path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; give a file path such as {str(path / 'run.pt')!r}")

    algorithm.to(device)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=meta_lr)
    generator = torch.Generator().manual_seed(seed)
    history = History(metric=metric_name(algorithm))
    config = {"meta_batch": meta_batch, "meta_lr": meta_lr, "seed": seed}
    start = 0
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != config:
            raise ValueError(f"checkpoint {str(path)!r} was written with {state['config']}, not {config}; "
                             "use the same settings or another checkpoint path")
        algorithm.load_state_dict(state["algorithm"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = History(**state["history"])
        start = state["iteration"]

    def run_eval(iteration: int) -> None:
        mean, ci95 = evaluate(algorithm, family if eval_family is None else eval_family, tasks=eval_tasks,
                              steps=eval_steps, device=device, seed=seed + 1)
        history.eval_iteration.append(iteration)
        history.eval_mean.append(mean)
        history.eval_ci95.append(ci95)

    if minutes is not None and history.seconds >= minutes * 60:
        return history  # a resumed run whose time budget is already spent
    began = time.perf_counter() - history.seconds
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=type(algorithm).__name__,
               disable=not progress)
    for i in bar:
        batch = family.sample(meta_batch, generator=generator, device=device)
        loss = algorithm.meta_loss(batch)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"meta-loss is {value} at iteration {i}: lower meta_lr or inner_lr "
                                     "(nothing was written for this iteration)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = i + 1
        history.iteration.append(done)
        history.loss.append(value)
        postfix = {"loss": f"{value:.4f}"}
        if eval_every is not None and (done % eval_every == 0 or done == iterations):
            run_eval(done)
            postfix[history.metric] = f"{history.eval_mean[-1]:.3f}"
        bar.set_postfix(postfix, refresh=False)
        history.seconds = time.perf_counter() - began
        out_of_time = minutes is not None and history.seconds >= minutes * 60
        if out_of_time and eval_every is not None and history.eval_iteration[-1:] != [done]:
            run_eval(done)
        if path is not None and (done % checkpoint_every == 0 or done == iterations or out_of_time):
            save_atomic({"iteration": done, "algorithm": algorithm.state_dict(), "optimizer": optimizer.state_dict(),
                         "generator": generator.get_state(), "history": asdict(history), "config": config}, path)
        if out_of_time:
            break
    bar.close()
    return history


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

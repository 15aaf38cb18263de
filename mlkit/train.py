"""The shared meta-training loop, evaluation with confidence intervals, and atomic checkpoints."""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Union

import torch
from tqdm.auto import tqdm

from . import checks
from .distributed import World, current as current_world, setup as join_world
from .algorithms.base import MetaLearner, describe_callable

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}
OptimizerSpec = Union[str, Callable[..., torch.optim.Optimizer], torch.optim.Optimizer]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


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
    eval_seconds: list[float] = field(default_factory=list)  # training time when each evaluation was made
    metric: str = ""
    seconds: float = 0.0  # training time (``fit``'s clock), evaluations and checkpoints not counted


@dataclass
class Step:
    """What ``on_step`` receives after every outer step."""

    iteration: int
    loss: float
    lr: float
    seconds: float
    algorithm: MetaLearner


@dataclass
class Evaluation:
    """What ``on_eval`` receives after every periodic evaluation."""

    iteration: int
    mean: float
    ci95: float
    metric: str


def metric_name(algorithm: MetaLearner, metric=None) -> str:
    """The name of what ``evaluate`` reports: ``"accuracy"`` (percent) for any cross-entropy loss, ``"mse"`` for
    the ``"mse"`` loss, ``"loss"`` otherwise; or the given metric's name."""
    if metric is not None:
        return metric if isinstance(metric, str) else getattr(metric, "__name__", type(metric).__name__)
    if algorithm.classification:
        return "accuracy"
    return "mse" if algorithm.loss == "mse" else "loss"


def _scores(algorithm: MetaLearner, metric, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One score per task: pred ``[tasks, n, *out]``, target ``[tasks, n, *out]`` → ``[tasks]``."""
    if metric == "accuracy":
        return (pred.argmax(-1) == target).double().mean(1) * 100
    if metric == "mse":
        return ((pred - target) ** 2).flatten(1).double().mean(1)
    score = algorithm.loss_fn if metric == "loss" else metric
    return torch.stack([torch.as_tensor(score(p, t)).double() for p, t in zip(pred, target)])


EVAL_BLOCK = 100


@torch.no_grad()
def evaluate(algorithm: MetaLearner, family, tasks: int = 600, steps: int | None = None, meta_batch: int = 100,
             seed: int = 1234, device: str | torch.device | None = None, progress: bool = False,
             inner_lr: float | None = None, metric: str | Callable | None = None) -> tuple[float, float]:
    """Adapt to ``tasks`` fresh tasks and score each on its query set, in eval mode (dropout off).

    Args:
        algorithm: an mlkit algorithm. family: a :class:`mlkit.tasks.TaskFamily`.
        tasks: number of test tasks; steps: inner steps at test (default: the algorithm's).
        meta_batch: tasks adapted at once; seed: fixes the test tasks; device: default the algorithm's.
        inner_lr: the inner step size at test (default: the algorithm's).
        metric: ``"accuracy"`` (percent), ``"loss"`` (the algorithm's loss), ``"mse"``, or a callable
            ``(pred [n, *out], target [n, *out]) -> scalar``; default accuracy for any cross-entropy loss, MSE
            for ``"mse"``, the loss otherwise.
    Returns:
        ``(mean, ci95)`` over tasks, with ci95 = 1.96·std/√tasks. The modules' train/eval modes are restored.
        Under ``torchrun`` the tasks are split over the ranks and every rank returns the same figures.
    """
    checks.positive_int("tasks", tasks)
    checks.positive_int("meta_batch", meta_batch)
    checks.check_seed(seed)
    checks.check_family(family)
    if not isinstance(algorithm, MetaLearner):
        raise ValueError(f"algorithm must be an mlkit algorithm (MAML, ProtoNet, ...), got {type(algorithm).__name__}")
    if metric is not None and not callable(metric) and metric not in ("accuracy", "loss", "mse"):
        raise ValueError(f"metric must be 'accuracy', 'loss', 'mse' or a callable (pred, target) -> scalar, got {metric!r}")
    if metric == "accuracy" and not algorithm.classification:
        raise ValueError("metric='accuracy' needs a classification algorithm (a cross-entropy loss)")
    metric = metric_name(algorithm, metric) if metric is None or isinstance(metric, str) else metric
    device = algorithm.device if device is None else resolve_device(device)
    world = current_world()
    generator = torch.Generator().manual_seed(seed)
    scores: list[float] = []
    with algorithm.evaluating(), tqdm(total=tasks, desc="evaluate", leave=False, disable=not progress) as bar:
        drawn = 0
        while drawn < tasks:
            # Tasks are drawn in blocks of a fixed size, so they depend neither on meta_batch nor on the ranks.
            block = family.sample(min(EVAL_BLOCK, tasks - drawn), generator=generator)
            drawn += block.tasks
            mine = block if world is None else block[_share(block.tasks, world)]
            block_scores = []
            for start in range(0, mine.tasks, meta_batch):
                batch = mine[start:start + meta_batch].to(device)
                pred = algorithm.query_predictions(batch, steps, inner_lr)
                block_scores.extend(_scores(algorithm, metric, pred, batch.query_y).cpu().tolist())
            scores.extend(block_scores if world is None else world.gather(block_scores))
            bar.update(block.tasks)
    values = torch.tensor(scores, dtype=torch.float64)
    ci95 = 1.96 * values.std(unbiased=True).item() / math.sqrt(tasks) if tasks > 1 else float("nan")
    return values.mean().item(), ci95


def _share(tasks: int, world: World) -> slice:
    """This rank's contiguous part of ``tasks`` tasks (sizes differ by at most one)."""
    base, extra = divmod(tasks, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def fit(algorithm: MetaLearner, family, iterations: int, meta_batch: int = 25, meta_lr: float | None = None,
        device: str | torch.device = "auto", seed: int = 0, optimizer: OptimizerSpec = "adam",
        scheduler: Callable | None = None, clip_grad_norm: float | None = None,
        on_step: Callable[[Step], None] | None = None, on_eval: Callable[[Evaluation], None] | None = None,
        eval_every: int | None = None, eval_tasks: int = 100, eval_steps: int | None = None, eval_family=None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 500, minutes: float | None = None,
        clock: str = "wall", progress: bool = True, distributed: bool | None = None) -> History:
    """Meta-train ``algorithm`` on tasks drawn from ``family``.

    Args:
        algorithm: an mlkit algorithm (moved to ``device``), trained in its modules' current modes.
        family: a :class:`mlkit.tasks.TaskFamily`.
        iterations: total outer steps; meta_batch: tasks per step.
        meta_lr: the outer learning rate of a named optimizer (default 1e-3).
        device: "auto" (cuda > mps > cpu), "cpu", "cuda[:N]", "mps".
        seed: an integer that fixes the stream of training tasks (and the evaluation tasks). The model's initialisation is
            whatever it was built with: call ``torch.manual_seed`` before building the model to fix it too.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, a factory
            ``params -> torch.optim.Optimizer`` (an optimizer class such as ``mlkit.optim.LearnedOptimizer``, or
            ``lambda ps: torch.optim.SGD(ps, lr=0.1)``), or an optimizer instance built on
            ``algorithm.parameters()`` (its state carries over between calls). Give the learning rate inside a
            factory or instance, not as ``meta_lr``.
        scheduler: a factory ``optimizer -> torch.optim.lr_scheduler.LRScheduler``, stepped after every outer step
            (e.g. Reptile's linear annealing: ``lambda opt: LinearLR(opt, 1.0, 0.0, iterations)``). A checkpoint
            tells a lambda or nested function apart from another by its code, constants and closure values.
        clip_grad_norm: clip the meta-gradient to this total norm before each step.
        on_step, on_eval: callbacks receiving a :class:`Step` after every outer step and an :class:`Evaluation`
            after every evaluation (e.g. to log to TensorBoard); under torchrun, on rank 0 only.
        eval_every: evaluate on ``eval_tasks`` fixed tasks every N iterations (and at the end), drawn from
            ``eval_family`` (e.g. validation classes; default: ``family``) and adapted with ``eval_steps``.
        checkpoint: a file to save to every ``checkpoint_every`` iterations (atomically) and to resume from;
            it records the algorithm's settings and refuses to resume a run with other ones.
        minutes: stop early once this much training time has passed (resumed time included; the time of
            evaluations and checkpoints is not counted).
        clock: what ``minutes`` and ``History.seconds`` count: ``"wall"`` time, or ``"cpu"`` time of this process
            (all its threads); other jobs inflate it less than wall time, but not to nothing: report iterations too.
        distributed: ``None`` (default) detects a torchrun launch and then splits every meta-batch over the
            ranks (:mod:`mlkit.distributed`); ``False`` trains alone.
    Returns:
        A :class:`History`. Raises ``FloatingPointError`` on a non-finite meta-loss, ``ValueError`` on bad
        arguments (before any work or file write).
    """
    checks.positive_int("iterations", iterations)
    checks.positive_int("meta_batch", meta_batch)
    checks.check_seed(seed)
    checks.positive_int("checkpoint_every", checkpoint_every)
    checks.positive_int("eval_tasks", eval_tasks)
    if eval_every is not None:
        checks.positive_int("eval_every", eval_every)
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not minutes > 0 or not math.isfinite(minutes)):
        raise ValueError(f"minutes must be a positive finite number of minutes, got {minutes!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if meta_lr is not None and (isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float))
                                or not math.isfinite(meta_lr) or meta_lr <= 0):
        raise ValueError(f"meta_lr must be a positive finite number, got {meta_lr!r}")
    if clip_grad_norm is not None and (isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, (int, float))
                                       or not clip_grad_norm > 0):
        raise ValueError(f"clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: use one of {sorted(OPTIMIZERS)} or a factory params -> Optimizer")
    elif callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer):
        if meta_lr is not None:
            raise ValueError("meta_lr applies to a named optimizer; give the learning rate inside the optimizer "
                             "factory or instance")
    else:
        raise ValueError(f"optimizer must be a name in {sorted(OPTIMIZERS)}, a factory params -> Optimizer or an "
                         f"Optimizer instance, got {optimizer!r}")
    for name, value in (("scheduler", scheduler), ("on_step", on_step), ("on_eval", on_eval)):
        if value is not None and not callable(value):
            raise ValueError(f"{name} must be a callable, got {value!r}")
    if not isinstance(algorithm, MetaLearner):
        raise ValueError(f"algorithm must be an mlkit algorithm (MAML, MetaSGD, ...), got {type(algorithm).__name__}")
    if isinstance(optimizer, torch.optim.Optimizer):
        mine = {id(p) for p in algorithm.parameters()}
        foreign = sum(id(p) not in mine for group in optimizer.param_groups for p in group["params"])
        if foreign:
            raise ValueError(f"the optimizer instance holds {foreign} tensors that are not parameters of the "
                             "algorithm; build it on algorithm.parameters() (after building the algorithm)")
    checks.check_family(family)
    checks.check_family(family if eval_family is None else eval_family, "eval_family")
    device = resolve_device(device)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists() and path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; give a file path such as {str(path / 'run.pt')!r}")

    world = join_world(distributed, device)
    if world is not None and meta_batch % world.size:
        raise ValueError(f"meta_batch={meta_batch} cannot be split evenly over {world.size} ranks; use a multiple "
                         f"of {world.size}")
    if world is not None and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return _train(algorithm, family, iterations, meta_batch, meta_lr, device, seed, optimizer, scheduler,
                  clip_grad_norm, on_step, on_eval, eval_every, eval_tasks, eval_steps, eval_family, path,
                  checkpoint_every, minutes, CLOCKS[clock], progress, world)



def _train(algorithm, family, iterations, meta_batch, meta_lr, device, seed, optimizer_spec, scheduler_spec,
           clip_grad_norm, on_step, on_eval, eval_every, eval_tasks, eval_steps, eval_family, path,
           checkpoint_every, minutes, now, progress, world) -> History:
    algorithm.to(device)
    if world is not None:
        world.sync_parameters(algorithm)
    params = [p for p in algorithm.parameters() if p.requires_grad]
    if isinstance(optimizer_spec, str):
        optimizer = OPTIMIZERS[optimizer_spec](params, lr=1e-3 if meta_lr is None else meta_lr)
    elif isinstance(optimizer_spec, torch.optim.Optimizer):
        optimizer = optimizer_spec
    else:
        optimizer = optimizer_spec(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"the optimizer factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    scheduler = None if scheduler_spec is None else scheduler_spec(optimizer)
    generator = torch.Generator().manual_seed(seed)
    history = History(metric=metric_name(algorithm))
    config = {"meta_batch": meta_batch, "meta_lr": meta_lr, "seed": seed, "optimizer": _describe(optimizer_spec),
              "scheduler": None if scheduler_spec is None else _describe(scheduler_spec), "clip_grad_norm": clip_grad_norm,
              "clock": "cpu" if now is time.process_time else "wall"}
    start = 0
    leader = world is None or world.leader
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True) if leader and path.exists() else None
        state = state if world is None else world.broadcast(state)
        if state is not None:
            if state["config"] != config:
                differ = ", ".join(f"{k}={state['config'].get(k)!r}, not {v!r}" for k, v in config.items()
                                   if state["config"].get(k) != v)
                raise ValueError(f"checkpoint {str(path)!r} was written with other settings: {differ}; use the same "
                                 "settings or another checkpoint path")
            algorithm.load_state_dict(state["algorithm"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            history = History(**state["history"])
            start = state["iteration"]

    def run_eval(iteration: int) -> None:
        mean, ci95 = evaluate(algorithm, family if eval_family is None else eval_family, tasks=eval_tasks,
                              steps=eval_steps, device=device, seed=seed + 1)
        history.eval_iteration.append(iteration)
        history.eval_mean.append(mean)
        history.eval_ci95.append(ci95)
        history.eval_seconds.append(history.seconds)
        if on_eval is not None and leader:
            on_eval(Evaluation(iteration, mean, ci95, history.metric))

    if minutes is not None and history.seconds >= minutes * 60:
        return history  # a resumed run whose time budget is already spent
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=type(algorithm).__name__,
               disable=not progress or not leader)
    for i in bar:
        began = now()
        batch = family.sample(meta_batch, generator=generator)
        batch = (batch if world is None else world.shard(batch)).to(device)
        loss = algorithm.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out_of_time = minutes is not None and history.seconds + now() - began >= minutes * 60
        value = loss.item()
        if world is not None:  # every rank has gradients for the same parameters
            value, stop = world.reduce([p.grad for p in params if p.grad is not None], value, float(out_of_time),
                                       device=device)
            out_of_time = stop > 0
        if not math.isfinite(value):
            raise FloatingPointError(f"meta-loss is {value} at iteration {i}: lower meta_lr or inner_lr "
                                     "(nothing was written for this iteration)")
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        lr = optimizer.param_groups[0].get("lr", float("nan"))
        if scheduler is not None:
            scheduler.step()
        history.seconds += now() - began
        done = i + 1
        history.iteration.append(done)
        history.loss.append(value)
        postfix = {"loss": f"{value:.4f}"}
        if eval_every is not None and (done % eval_every == 0 or done == iterations):
            run_eval(done)
            postfix[history.metric] = f"{history.eval_mean[-1]:.3f}"
        bar.set_postfix(postfix, refresh=False)
        if on_step is not None and leader:
            on_step(Step(done, value, lr, history.seconds, algorithm))
        if out_of_time and eval_every is not None and history.eval_iteration[-1:] != [done]:
            run_eval(done)
        if path is not None and leader and (done % checkpoint_every == 0 or done == iterations or out_of_time):
            save_atomic({"iteration": done, "algorithm": algorithm.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": None if scheduler is None else scheduler.state_dict(),
                         "generator": generator.get_state(), "rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                         "history": asdict(history), "config": config}, path)
        if out_of_time:
            break
    bar.close()
    return history


def _describe(spec) -> str:
    """A stable name for an optimizer or scheduler given by name, factory or instance (checked when resuming)."""
    if isinstance(spec, torch.optim.Optimizer):
        options = {k: v for k, v in spec.defaults.items() if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        return f"{type(spec).__module__}.{type(spec).__qualname__}({sorted(options.items())})"
    return spec if isinstance(spec, str) else describe_callable(spec)


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

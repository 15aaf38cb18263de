"""Time one MAML meta-training iteration: mlkit beside learn2learn, higher, TorchOpt and a plain torch.func loop.

    benchmarks/setup_peers.sh                                  # once: benchmarks/.peers-venv (torch 2.14.1 + peers)
    benchmarks/.peers-venv/bin/python benchmarks/peers.py      # every configuration, on the CPU
    benchmarks/.peers-venv/bin/python benchmarks/peers.py --quick --configs b8-s1 --impls mlkit,higher
    benchmarks/.peers-venv/bin/python benchmarks/peers.py --wait-quiet 300   # on a shared machine

One iteration is the meta-loss (mean over the meta-batch of each task's query loss after ``steps`` SGD steps
at α on its support set), its backward pass and an Adam step. Every implementation starts from the same
weights (mlkit's model, copied into its plain torch.nn twin) and sees the same seeded synthetic batch. Before
it is timed, its first meta-loss and meta-gradient are compared with mlkit's in float64 (one process per
configuration); a mismatch is reported, not timed. Each timing runs in a fresh process (float32): failures stay
isolated and the peak RSS is its own.

Configurations (``--configs`` keeps those whose name has every '-'-separated part of a filter, e.g. ``b8``,
``s5-fo``): a = sinusoid MLP 1-40-40-1, 10 shots, 10 queries, meta-batch 25, α 0.01, MSE; b32 / b8 = Omniglot-
shaped Conv4 5-way 1-shot, 15 queries per class, meta-batch 32 / 8, α 0.4; c = 20-way 5-shot, 5 queries per
class, meta-batch 4, α 0.1; each with 1 and 5 inner steps (s1, s5), second and first order (so, fo).

Writes benchmarks/results/peers-<device>.json, .md and .png (a --quick run only prints).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
from common import RESULTS, machine, markdown_table, save_figure, write_atomic, write_json  # noqa: E402
from mlkit.tasks import TaskBatch  # noqa: E402

SEED, TOLERANCE, META_LR, WARMUP = 0, 1e-4, 1e-3, 2
CONTENDED = 0.25  # cores used by other processes while a row was timed, above which it is marked CONTENDED
LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


class Config(NamedTuple):
    name: str
    model: str  # "mlp" or "conv4"
    ways: int
    shots: int
    queries: int  # per class (sinusoid: points)
    meta_batch: int
    inner_lr: float
    loss: str
    steps: int
    first_order: bool


FAMILIES = {  # model, ways, shots, queries, meta-batch, α, loss
    "a": ("mlp", 1, 10, 10, 25, 0.01, "mse"),
    "b32": ("conv4", 5, 1, 15, 32, 0.4, "cross_entropy"),
    "b8": ("conv4", 5, 1, 15, 8, 0.4, "cross_entropy"),
    "c": ("conv4", 20, 5, 5, 4, 0.1, "cross_entropy"),
}
CONFIGS = {c.name: c for c in (Config(f"{family}-s{steps}-{'fo' if fo else 'so'}", *spec, steps, fo)
                               for family, spec in FAMILIES.items() for steps in (1, 5) for fo in (False, True))}


# Models and data ---------------------------------------------------------------------------------------------
def mlkit_model(cfg: Config, device: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(SEED)
    if cfg.model == "mlp":
        model = mlkit.models.MLP(1, [40, 40], 1)
    else:
        model = mlkit.models.Conv4(1, cfg.ways, 64, "strided", 28)
    return model.to(device, dtype)


def torch_model(cfg: Config, source: nn.Module) -> nn.Module:
    """The plain torch.nn twin of mlkit's model (nn.BatchNorm2d on batch statistics), with its weights."""
    if cfg.model == "mlp":
        net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    else:
        blocks: list[nn.Module] = []
        for channels in (1, 64, 64, 64):
            blocks += [nn.Conv2d(channels, 64, 3, stride=2, padding=1),
                       nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]
        net = nn.Sequential(OrderedDict(features=nn.Sequential(*blocks), pool=nn.AdaptiveAvgPool2d(1),
                                        flatten=nn.Flatten(), head=nn.Linear(64, cfg.ways)))
    first = next(source.parameters())
    net.to(first.device, first.dtype).load_state_dict(source.state_dict())  # strict: same names, same shapes
    return net


def make_batch(cfg: Config, device: str, dtype: torch.dtype) -> TaskBatch:
    g = torch.Generator().manual_seed(SEED)
    if cfg.model == "mlp":
        b = mlkit.tasks.Sinusoid(shots=cfg.shots, queries=cfg.queries).sample(cfg.meta_batch, generator=g)
    else:
        def images(per_class):
            return torch.rand(cfg.meta_batch, cfg.ways * per_class, 1, 28, 28, generator=g)

        def labels(per_class):
            return torch.arange(cfg.ways).repeat_interleave(per_class).expand(cfg.meta_batch, -1).contiguous()

        b = TaskBatch(images(cfg.shots), labels(cfg.shots), images(cfg.queries), labels(cfg.queries))
    return TaskBatch(*(t.to(device, dtype) if t.is_floating_point() else t.to(device)
                       for t in (b.support_x, b.support_y, b.query_x, b.query_y)))


def tasks(batch: TaskBatch):
    return zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)


# The implementations: make(net, cfg) -> state; step(state, batch, inner_lr, steps, first_order) -> meta-loss,
# leaving the meta-gradient in net's .grad. The harness zeroes the gradients before and steps Adam after.
class State(NamedTuple):
    net: nn.Module  # the parameters θ that the outer Adam trains
    loss_fn: Callable
    own: object = None  # the implementation's object: mlkit.MAML, l2l's MAML, an inner optimiser


def make_mlkit(net, cfg):
    return State(net, LOSSES[cfg.loss], mlkit.MAML(net, loss=cfg.loss, inner_lr=cfg.inner_lr,
                                                   inner_steps=cfg.steps, first_order=cfg.first_order))


def step_mlkit(s, batch, inner_lr, steps, first_order):
    loss = s.own.meta_loss(batch, steps=steps)  # all tasks at once
    loss.backward()
    return loss


def step_torchfunc(s, batch, inner_lr, steps, first_order):
    """What a user writes with torch.func: a loop over tasks, functional_call + grad, per-task backward."""
    theta = dict(s.net.named_parameters())

    def support_loss(params, x, y):
        return s.loss_fn(functional_call(s.net, params, (x,)), y)

    total = 0.0
    for sx, sy, qx, qy in tasks(batch):
        params = theta
        for _ in range(steps):
            grads = torch.func.grad(support_loss)(params, sx, sy)
            params = {k: p - inner_lr * (grads[k].detach() if first_order else grads[k]) for k, p in params.items()}
        loss = s.loss_fn(functional_call(s.net, params, (qx,)), qy) / batch.tasks
        loss.backward()
        total = total + loss.detach()
    return total


def make_learn2learn(net, cfg):
    import learn2learn as l2l
    return State(net, LOSSES[cfg.loss], l2l.algorithms.MAML(net, lr=cfg.inner_lr, first_order=cfg.first_order))


def step_learn2learn(s, batch, inner_lr, steps, first_order):
    """learn2learn's documented pattern: clone(), adapt() per step, per-task backward of loss / meta-batch."""
    total = 0.0
    for sx, sy, qx, qy in tasks(batch):
        learner = s.own.clone()
        for _ in range(steps):
            learner.adapt(s.loss_fn(learner(sx), sy))
        loss = s.loss_fn(learner(qx), qy) / batch.tasks
        loss.backward()
        total = total + loss.detach()
    return total


def make_higher(net, cfg):
    return State(net, LOSSES[cfg.loss], torch.optim.SGD(net.parameters(), lr=cfg.inner_lr))


def step_higher(s, batch, inner_lr, steps, first_order):
    """higher's MAML example; first order detaches the inner gradients: θ' = θ - α·stopgrad(g)."""
    import higher
    callback = (lambda grads: [g.detach() for g in grads]) if first_order else None
    total = 0.0
    for sx, sy, qx, qy in tasks(batch):
        with higher.innerloop_ctx(s.net, s.own, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(steps):
                diffopt.step(s.loss_fn(fnet(sx), sy), grad_callback=callback)
            loss = s.loss_fn(fnet(qx), qy) / batch.tasks
            loss.backward()
        total = total + loss.detach()
    return total


def make_torchopt(net, cfg):
    import torchopt
    inner = torchopt.sgd(lr=cfg.inner_lr) if cfg.first_order else torchopt.MetaSGD(net, lr=cfg.inner_lr)
    return State(net, LOSSES[cfg.loss], inner)


def step_torchopt(s, batch, inner_lr, steps, first_order):
    """Second order: TorchOpt's MAML example (MetaSGD, extract/recover_state_dict per task, one backward).
    MetaSGD always differentiates through its step, so first order uses TorchOpt's functional API with the
    inner gradients taken without create_graph (a stop-gradient step)."""
    import torchopt
    losses = []
    if first_order:
        names, theta = zip(*s.net.named_parameters())
        for sx, sy, qx, qy in tasks(batch):
            params, opt_state = theta, s.own.init(theta)
            for _ in range(steps):
                loss = s.loss_fn(functional_call(s.net, dict(zip(names, params)), (sx,)), sy)
                grads = torch.autograd.grad(loss, params)
                updates, opt_state = s.own.update(grads, opt_state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            losses.append(s.loss_fn(functional_call(s.net, dict(zip(names, params)), (qx,)), qy))
    else:
        net_state = torchopt.extract_state_dict(s.net, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(s.own, by="reference")
        for sx, sy, qx, qy in tasks(batch):
            for _ in range(steps):
                s.own.step(s.loss_fn(s.net(sx), sy))
            losses.append(s.loss_fn(s.net(qx), qy))
            torchopt.recover_state_dict(s.net, net_state)
            torchopt.recover_state_dict(s.own, opt_state)
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss


def make_plain(net, cfg):
    return State(net, LOSSES[cfg.loss])


IMPLS = {  # name: (make, step, distribution to import or None)
    "mlkit": (make_mlkit, step_mlkit, None),
    "torch.func loop": (make_plain, step_torchfunc, None),
    "learn2learn": (make_learn2learn, step_learn2learn, "learn2learn"),
    "higher": (make_higher, step_higher, "higher"),
    "torchopt": (make_torchopt, step_torchopt, "torchopt"),
}


def note(impl: str, cfg: Config) -> str:
    fo = cfg.first_order
    return {"mlkit": "all tasks at once: vmapped forward, one autograd.grad for every task's inner step"
                     + ("" if cfg.model == "mlp" else "; on the CPU, task by task above 16 images per task"),
            "torch.func loop": "per-task loop, functional_call + torch.func.grad, per-task backward",
            "learn2learn": "MAML.clone()/adapt(), per-task backward",
            "higher": "innerloop_ctx per task, per-task backward" + (
                "; FO: grad_callback detach (inner grads still taken with create_graph)" if fo else ""),
            "torchopt": ("functional torchopt.sgd, inner grads without create_graph" if fo
                         else "MetaSGD + extract/recover_state_dict, one backward")}[impl]


# The worker: one (implementation, configuration) in its own process -----------------------------------------
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by every process on the machine, by this one), to see whether others ran meanwhile."""
    try:
        ticks = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        machine_total = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    except (OSError, ValueError, IndexError):
        machine_total = float("nan")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return machine_total, own.ru_utime + own.ru_stime


def wait_quiet(max_seconds: float) -> float:
    """Wait (at most ``max_seconds``) until other processes use under a quarter of a core; return their last use."""
    deadline = time.perf_counter() + max_seconds
    while True:
        (machine0, own0), start = cpu_seconds(), time.perf_counter()
        time.sleep(3)
        (machine1, own1) = cpu_seconds()
        busy = ((machine1 - machine0) - (own1 - own0)) / (time.perf_counter() - start)
        if not busy > CONTENDED or time.perf_counter() > deadline:  # nan (no /proc/stat) counts as quiet
            return busy


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def count_flops(fn) -> tuple[float, float, bool]:
    """FLOPs of ``fn()`` by FlopCounterMode: (with a groups-aware convolution backward, stock, conv backward seen?).

    The stock convolution_backward formula multiplies a grouped convolution's weight-gradient FLOPs by the
    number of groups, and vmap turns per-task weights into one convolution grouped by task; this one does not.
    """
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count
    overcount = [0]

    def conv_backward(grad_out, x, w, _bias, _stride, _padding, _dilation, transposed, _out_pad, groups, mask,
                      out_shape=None):
        if transposed:
            raise NotImplementedError("transposed convolution")
        grad_weight = conv_flop_count(x, w, grad_out) if mask[1] else 0  # as many as the forward convolution
        overcount[0] += (groups - 1) * grad_weight
        return (conv_flop_count(grad_out, w, x, transposed=True) if mask[0] else 0) + grad_weight

    aten = torch.ops.aten
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward}) as counter:
        fn()
    total = counter.get_total_flops()
    return total, total + overcount[0], aten.convolution_backward in counter.get_flop_counts()["Global"]


def first_step(impl: str, cfg: Config, device: str, dtype: torch.dtype) -> tuple[float, Tensor]:
    """The meta-loss and the flattened meta-gradient of one step at θ0, in ``dtype``."""
    make, step = IMPLS[impl][:2]
    source = mlkit_model(cfg, device, dtype)
    net = source if impl == "mlkit" else torch_model(cfg, source)
    loss = step(make(net, cfg), make_batch(cfg, device, dtype), cfg.inner_lr, cfg.steps, cfg.first_order)
    return float(loss.detach()), flat_grad(net)


def flat_grad(net: nn.Module) -> Tensor:
    """All of ``net``'s gradients, flattened in parameter order, as float64 on the CPU."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in net.parameters()]).double().cpu()


def deviation(loss: float, grad: Tensor, ref: dict) -> float:
    """max(relative meta-loss error, max |meta-gradient error| / max |reference meta-gradient|)."""
    return max(abs(loss - ref["loss"]) / abs(ref["loss"]),
               float((grad - ref["grad"]).abs().max() / ref["grad"].abs().max()))


def check(cfg: Config, impls: list[str], device: str, ref_path: Path) -> dict:
    """Each implementation's deviation from mlkit, all in float64; mlkit's result is saved to ``ref_path``."""
    loss, grad = first_step("mlkit", cfg, device, torch.float64)
    ref = {"loss": loss, "grad": grad}
    torch.save(ref, ref_path)
    out = {}
    for impl in impls:
        try:
            out[impl] = {"max_deviation": 0.0 if impl == "mlkit" else
                         deviation(*first_step(impl, cfg, device, torch.float64), ref)}
        except Exception as e:  # noqa: BLE001 - one peer's failure is its own row
            out[impl] = {"status": "error", "error": first_line(e)}
    return out


def worker(impl: str, cfg: Config, device: str, repeats: int, ref_path: Path) -> dict:
    """Time ``repeats`` iterations after WARMUP ones, in float32; peak memory; the first iteration's error from
    the float64 reference; mlkit's FLOPs."""
    make, step = IMPLS[impl][:2]
    source = mlkit_model(cfg, device, torch.float32)
    net = source if impl == "mlkit" else torch_model(cfg, source)
    batch = make_batch(cfg, device, torch.float32)
    state = make(net, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=META_LR)
    out = {"baseline_rss_mb": rss_mb()}

    def iteration():
        opt.zero_grad(set_to_none=True)
        loss = step(state, batch, cfg.inner_lr, cfg.steps, cfg.first_order)
        opt.step()
        return loss

    loss = float(iteration().detach())  # the first warm-up, at θ0: Adam leaves its gradients in .grad
    out["fp32_error"] = deviation(loss, flat_grad(net), torch.load(ref_path))
    for _ in range(WARMUP - 1):
        iteration()
    times, (machine0, own0), wall0 = [], cpu_seconds(), time.perf_counter()
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        iteration()
        sync(device)
        times.append(time.perf_counter() - start)
    (machine1, own1), wall = cpu_seconds(), time.perf_counter() - wall0
    out.update(status="ok", ms=1000 * statistics.median(times), ms_all=[1000 * t for t in times],
               peak_rss_mb=rss_mb(), other_load=((machine1 - machine0) - (own1 - own0)) / wall)
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if impl == "mlkit":  # FLOPs of one meta-step, vmapped (as timed) and looped over tasks (the check)
        out["flops"], out["flops_stock"], out["conv_backward_counted"] = count_flops(iteration)
        out["flops_loop"] = count_flops(lambda: state.own.meta_loss(batch, batched=False).backward())[0]
    return out


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


# The harness ------------------------------------------------------------------------------------------------
def availability(impl: str) -> str | None:
    """None when the implementation imports, else why not (setup_peers.sh's recorded reason first)."""
    dist = IMPLS[impl][2]
    if dist is None:
        return None
    try:
        importlib.import_module(dist)
        return None
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is unusable
        status = Path(sys.prefix) / "install-status" / f"{dist}.txt"
        reason = status.read_text().strip() if status.exists() else ""
        return reason or first_line(e)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, mlkit say
        return getattr(importlib.import_module(dist), "__version__", "?")


def torchopt_extension() -> str:
    try:
        from torchopt._C import adam_op  # noqa: F401
        return "torchopt._C loaded"
    except Exception as e:  # noqa: BLE001
        why = str(e).split(": ", 1)[-1][:70]  # "undefined symbol: ..." without the library's path
        return (f"torchopt._C does not load ({type(e).__name__}: {why}...): TorchOpt falls back to Python "
                "quietly; only its accelerated Adam ops use _C, not MetaSGD or the functional sgd timed here")


def subprocess_result(mode: str, impls: list[str], cfg: Config, args, ref: Path) -> dict:
    """Run ``--worker check`` (all of ``impls``) or ``--worker time`` (one) on ``cfg`` in a fresh process."""
    cmd = [sys.executable, __file__, "--worker", mode, "--impls", ",".join(impls), "--configs", cfg.name,
           "--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats), "--ref", str(ref)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {args.timeout} s"}
    results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if results:
        return json.loads(results[-1])
    lines = proc.stderr.strip().splitlines() or [""]
    return {"status": "error", "error": f"exit code {proc.returncode}: {lines[-1][:200]}"}


def timed_row(impl: str, cfg: Config, args, ref: Path) -> dict:
    """The timing subprocess; with --wait-quiet, on a quiet machine, and again when others ran meanwhile."""
    attempts = 1 + (args.retries if args.wait_quiet else 0)
    for attempt in range(attempts):
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        timed = {**subprocess_result("time", [impl], cfg, args, ref), "attempts": attempt + 1}
        if not timed.get("other_load", 0) > CONTENDED or attempt == attempts - 1:
            return timed
        print(f"{cfg.name:10s} {impl:16s} contended ({timed['other_load']:.1f} cores): again", file=sys.stderr)


def sgemm_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for i in range(repeats + 3):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    configs = list(dict.fromkeys(r["config"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(configs) + 2), 4.5))
    for i, impl in enumerate(impls):
        ms = {r["config"]: r["ms"] for r in rows if r["impl"] == impl and r.get("ms")}
        xs = [j + (i - (len(impls) - 1) / 2) * width for j, c in enumerate(configs) if c in ms]
        ax.bar(xs, [ms[c] for c in configs if c in ms], width, label=impl)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.set_xticks(range(len(configs)), configs, rotation=45, ha="right")
    ax.set_ylabel("ms per meta-iteration (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=len(impls))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def fmt(r: dict) -> list:
    if r["status"] == "ok":
        status = f"{r['ms']:.1f}"
    elif r["status"] == "MISMATCH":
        status = "MISMATCH"
    else:
        status = f"{r['status']}: {r.get('error', '')}"
    rss = f"{r['peak_rss_mb']:.0f} (base {r['baseline_rss_mb']:.0f})" if "peak_rss_mb" in r else "—"
    return [r["config"], r["impl"], status, f"{r['ratio']:.2f}" if r["ratio"] else "—", rss,
            f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else "—",
            f"{r['max_deviation']:.1e}" if "max_deviation" in r else "—", r["notes"]]


def report(rows: list[dict], meta: dict, args, partial: bool) -> str:
    """The markdown table and its caption."""
    table = markdown_table(["config", "impl", "ms/iter (median)", "ratio to mlkit", "peak RSS MB",
                            "CUDA peak MB", "max deviation", "notes"], [fmt(r) for r in rows])
    flop_check = "; ".join(f"{r['config']} {r['flops'] / 1e9:.2f} (loop {r['flops_loop'] / 1e9:.2f}, stock "
                           f"{r['flops_stock'] / 1e9:.2f}{'' if r['conv_backward_counted'] else ', NO conv backward'})"
                           for r in rows if r.get("flops") and CONFIGS[r["config"]].model == "conv4")
    caption = (
        f"One MAML meta-training iteration (meta-loss over the meta-batch, backward, Adam step), median of "
        f"{meta['repeats']} after {WARMUP} warm-up iterations, {meta['device']}, {meta['threads']} threads; each "
        "(implementation, configuration) in a fresh process. Configurations: a = sinusoid MLP 1-40-40-1, 10 shots, "
        "10 queries, meta-batch 25, α 0.01; b32 / b8 = Conv4 (64 strided filters, batch statistics) 5-way 1-shot, "
        "15 queries per class, 28×28, meta-batch 32 / 8, α 0.4; c = 20-way 5-shot, 5 queries per class, meta-batch 4, "
        "α 0.1; s1 / s5 inner steps, so / fo second / first order. Synthetic inputs (seed 0), identical for all; "
        "peers run the plain torch.nn twin of mlkit's model with its weights. Max deviation: of the first step's "
        "meta-loss and flattened meta-gradient from mlkit's, both in float64, relative to mlkit's (loss; max |grad|); "
        f"above {TOLERANCE:g} the row is MISMATCH and not timed. The check runs in float64 because in float32 every "
        "implementation, mlkit included, is off the exact value by more than that on the Conv4 configurations "
        "(batch norm over few images, large α, random inputs): 'fp32 error' is the first float32 iteration's "
        "deviation from the float64 value, the timed runs' precision. Peak RSS: the "
        "process's peak (base: after imports, model and batch). CONTENDED: other processes used more than a quarter "
        "of a core (by /proc/stat) while the row was timed"
        + (f" (each timing waited up to {meta['wait_quiet_s']:g} s for a quiet machine and was repeated up to "
           f"{meta['retries']} times when others ran meanwhile)" if meta.get("wait_quiet_s") else "")
        + ". sgemm (2048×2048 torch.mm): "
        f"{meta['sgemm_gflops']:.1f} GFLOP/s. mlkit's FLOPs per iteration, by torch.utils.flop_counter."
        "FlopCounterMode (matmuls and convolutions, forward and backward) on the batched step as timed, with a "
        "convolution_backward formula "
        "that counts groups (the stock one counts a grouped convolution's weight gradient once per group, and vmap "
        "makes the per-task weights one convolution grouped by task), against the same step looped over tasks and "
        f"the stock count, GFLOP: {flop_check or 'n/a'}. "
        + (f"{meta['torchopt_extension']}. " if meta["torchopt_extension"] else "")
        + "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f". Machine: {meta['machine']}." + (" QUICK RUN." if args.quick else "")
        + (" PARTIAL: the run has not finished (or was interrupted)." if partial else ""))
    return f"{table}\n\n{caption}\n"


def save(rows: list[dict], meta: dict, text: str, partial: bool) -> None:
    stem = RESULTS / f"peers-{meta['device']}"
    write_json(stem.with_suffix(".json"), {**meta, "partial": partial, "rows": rows})
    write_atomic(stem.with_suffix(".md"), text)
    plot(rows, stem.with_suffix(".png"), f"MAML meta-iteration, {meta['device']}: {meta['machine']}")


def selected(names, wanted: str | None) -> list[str]:
    if not wanted:
        return list(names)
    filters = [set(w.split("-")) for w in wanted.split(",")]
    return [n for n in names if any(f <= set(n.split("-")) for f in filters)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--configs", help="comma-separated filters, e.g. b8 or a,s5-fo (default: all)")
    parser.add_argument("--impls", help=f"comma-separated, from {', '.join(IMPLS)} (mlkit always runs)")
    parser.add_argument("--repeats", type=int, help="timed iterations after 2 warm-up ones (default 10; 5 quick)")
    parser.add_argument("--quick", action="store_true", help="5 timed iterations, print only")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (all cores)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per (implementation, configuration)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="on a shared machine: before each timing, wait up to SECONDS for other processes to "
                             "go idle, and time a row again (--retries times) if they ran meanwhile")
    parser.add_argument("--retries", type=int, default=2, help="with --wait-quiet (default 2)")
    parser.add_argument("--worker", choices=["check", "time"], help=argparse.SUPPRESS)
    parser.add_argument("--ref", type=Path, help=argparse.SUPPRESS)  # the float64 reference, for the workers
    args = parser.parse_args()
    args.repeats = args.repeats or (5 if args.quick else 10)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)

    if args.worker:  # a subprocess of the harness; its result is the line starting with RESULT
        cfg, impls = CONFIGS[args.configs], args.impls.split(",")
        try:
            if args.worker == "check":
                result = check(cfg, impls, args.device, args.ref)
            else:
                result = worker(impls[0], cfg, args.device, args.repeats, args.ref)
        except Exception as e:  # noqa: BLE001 - report the failure, keep the benchmark going
            result = {"status": "error", "error": first_line(e)}
        print("RESULT " + json.dumps(result), flush=True)
        return

    configs = selected(CONFIGS, args.configs)
    impls = ["mlkit"] + [i for i in (args.impls.split(",") if args.impls else IMPLS) if i != "mlkit"]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or not configs:
        parser.error(f"unknown --impls {unknown}" if unknown else f"--configs {args.configs!r} matches none")
    missing = {impl: availability(impl) for impl in impls}
    versions = {d: version(d) for d in ["torch", "mlkit"] + [IMPLS[i][2] for i in impls] if d and not missing.get(d)}
    ext_note = torchopt_extension() if "torchopt" in impls and not missing["torchopt"] else ""
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    sgemm = sgemm_gflops(args.device)
    print(f"sgemm 2048x2048: {sgemm:.1f} GFLOP/s ({args.threads} threads, {args.device})", file=sys.stderr)
    meta = {"machine": machine(), "device": args.device, "threads": args.threads, "repeats": args.repeats,
            "sgemm_gflops": sgemm, "versions": versions, "torchopt_extension": ext_note,
            "wait_quiet_s": args.wait_quiet, "retries": args.retries if args.wait_quiet else 0}

    rows, tmp = [], tempfile.TemporaryDirectory()
    for name in configs:
        cfg, mlkit_ms, ref = CONFIGS[name], None, Path(tmp.name) / f"{name}.pt"
        installed = [impl for impl in impls if not missing[impl]]
        checked = subprocess_result("check", installed, cfg, args, ref)
        for impl in impls:
            if missing[impl]:
                r = {"status": "not installed", "error": missing[impl]}
            else:
                r = dict(checked.get(impl, checked))  # a failure of the whole check process applies to all
                if r.get("status") is None and r["max_deviation"] > TOLERANCE:
                    r["status"] = "MISMATCH"
                if r.get("status") is None:
                    r.update(timed_row(impl, cfg, args, ref))
            mlkit_ms = r.get("ms") if impl == "mlkit" else mlkit_ms
            r.update(config=name, impl=impl, ratio=r["ms"] / mlkit_ms if r.get("ms") and mlkit_ms else None)
            notes = [note(impl, cfg)]
            if "fp32_error" in r:
                notes.append(f"fp32 error {r['fp32_error']:.0e}")
            if r.get("other_load", 0) > CONTENDED:
                notes.append(f"CONTENDED: other processes used {r['other_load']:.1f} cores while it was timed")
            if r.get("flops"):
                r["gflops_per_s"] = r["flops"] / r["ms"] / 1e6
                notes.append(f"{r['flops'] / 1e9:.2f} GFLOP/iter, {r['gflops_per_s']:.1f} GFLOP/s "
                             f"({100 * r['gflops_per_s'] / sgemm:.0f}% of sgemm)")
            r["notes"] = "; ".join(n for n in notes if n)
            rows.append(r)
            shown = f"{r['ms']:.1f} ms" if r.get("ms") else f"{r['status']} {r.get('error', '')}"
            print(f"{name:10s} {impl:16s} {shown}", file=sys.stderr, flush=True)
        if not args.quick:  # after every configuration, so that an interrupted run leaves what it measured
            partial = len(rows) < len(configs) * len(impls)
            save(rows, meta, report(rows, meta, args, partial), partial)
    tmp.cleanup()
    print(report(rows, meta, args, partial=False))


if __name__ == "__main__":
    main()

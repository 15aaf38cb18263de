"""Scaling out with torchrun: meta-iterations per second and scaling efficiency for 1, 2, ... processes.

    python benchmarks/scaling.py                          # 1 and 2 processes, 1 thread each (this CPU)
    python benchmarks/scaling.py --procs 1,2,4,8 --device cuda --threads 4   # a GPU machine: one GPU per rank

Strong scaling keeps the total meta-batch fixed (32 tasks split over the ranks); weak scaling keeps the
meta-batch per rank fixed (so N ranks train on N times as many tasks per step). Efficiency is
speed-up / N: ``time(1) / time(N) / N`` for strong scaling, ``time(1) / time(N)`` for weak scaling.

Every configuration runs ``mlkit.fit`` itself, launched by ``torchrun --standalone`` for N > 1. Each step's time
is split into compute (sampling, forward and backward), waiting for the slowest rank (a barrier added before
the all-reduce, for this measurement only) and the all-reduce of the meta-gradients. Every distinct run is
repeated ``--repeats`` times in alternation and the median one is reported; run it on an otherwise idle machine,
since any other load slows the ranks unequally.

The ``independent`` rows run the strong-scaling split with no torch.distributed at all: N single processes of
32/N tasks each, started together. Their efficiency is the ceiling that the hardware sets (shared caches,
memory bandwidth, virtual CPUs that are not independent cores) for any implementation whose communication and
waiting were free; the strong-scaling efficiency is to be read against it.

Configurations: Omniglot Conv4 5-way 1-shot MAML (second order, 1 inner step at 0.4, the MAML paper's) and the
sinusoid MLP 1-40-40-1 MAML. Writes benchmarks/results/scaling-<device>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import mlkit  # noqa: E402
from common import RESULTS, machine, markdown_table, save_figure, write_atomic, write_json  # noqa: E402

CONFIGS = ("omniglot", "sine")
TOTAL_META_BATCH = 32


def build(config: str):
    """(algorithm, task family) of a configuration."""
    torch.manual_seed(0)
    if config == "omniglot":
        train, _, _ = mlkit.data.Omniglot(progress=False).split("maml")
        model = mlkit.models.Conv4(1, ways=5, filters=64)
        return mlkit.MAML(model, "cross_entropy", inner_lr=0.4, inner_steps=1), mlkit.tasks.FewShot(train, 5, 1, 1)
    return mlkit.MAML(mlkit.models.MLP(1, [40, 40], 1), "mse", inner_lr=0.01), mlkit.tasks.Sinusoid(10, 10)


def worker(args) -> None:
    """One rank: train, timing every step's parts; rank 0 writes the figures to ``args.out``."""
    torch.set_num_threads(args.threads)
    algorithm, family = build(args.config)
    waits, reductions = [], []
    reduce = mlkit.distributed.World.reduce

    def timed_reduce(self, *a, **kw):
        start = time.perf_counter()
        torch.distributed.barrier()
        middle = time.perf_counter()
        out = reduce(self, *a, **kw)
        waits.append(middle - start)
        reductions.append(time.perf_counter() - middle)
        return out

    mlkit.distributed.World.reduce = timed_reduce
    stamps: list[float] = []
    mlkit.fit(algorithm, family, iterations=args.warmup + args.iterations, meta_batch=args.meta_batch,
              device=args.device, seed=0, progress=False, on_step=lambda step: stamps.append(time.perf_counter()))
    if int(os.environ.get("RANK", 0)) == 0:
        timed = slice(args.warmup, None)
        step = (stamps[-1] - stamps[args.warmup - 1]) / args.iterations
        wait = sum(waits[timed]) / args.iterations if waits else 0.0
        all_reduce = sum(reductions[timed]) / args.iterations if reductions else 0.0
        Path(args.out).write_text(json.dumps({"seconds_per_step": step, "wait": wait, "all_reduce": all_reduce,
                                              "compute": step - wait - all_reduce}))


def launch(config: str, procs: int, meta_batch: int, args, independent: bool = False) -> dict:
    """Run one configuration in ``procs`` processes (torchrun for more than one) and read rank 0's figures.
    ``independent``: instead, ``procs`` single processes of ``meta_batch / procs`` tasks each at once, with no
    communication; their mean figures."""
    with tempfile.TemporaryDirectory() as folder:
        copies = procs if independent else 1
        outs = [Path(folder) / f"figures{i}.json" for i in range(copies)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["OMP_NUM_THREADS"] = str(args.threads)
        launcher = [] if procs == 1 or independent else ["-m", "torch.distributed.run", "--standalone",
                                                          f"--nproc-per-node={procs}"]
        running = [subprocess.Popen([sys.executable, *launcher, str(Path(__file__).resolve()), "--worker",
                                     "--config", config, "--meta-batch", str(meta_batch // copies),
                                     "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                                     "--threads", str(args.threads), "--device", args.device, "--out", str(out)],
                                    env=env) for out in outs]
        if any(process.wait() for process in running):
            raise RuntimeError(f"a {config} run with {procs} process(es) failed; see its output above")
        figures = [json.loads(out.read_text()) for out in outs]
        return {key: sum(f[key] for f in figures) / copies for key in figures[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--iterations", type=int, default=30, help="timed meta-iterations per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of every configuration, in alternation; the median one is reported")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--meta-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    procs = [int(p) for p in args.procs.split(",")]
    configs = args.configs.split(",")
    if any(c not in CONFIGS for c in configs) or procs[0] != 1 or any(TOTAL_META_BATCH % p for p in procs):
        parser.error(f"--configs from {CONFIGS}; --procs must start with 1 and divide {TOTAL_META_BATCH}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    # "independent": the strong-scaling split without torch.distributed, N single processes of 32/N tasks at
    # once; their efficiency is what the hardware allows when communication and waiting cost nothing.
    plan = [(config, mode, n, TOTAL_META_BATCH if mode != "weak" else TOTAL_META_BATCH // procs[-1] * n)
            for config in configs for mode in ("strong", "weak", "independent") for n in procs
            if mode != "independent" or n > 1]
    # Distinct runs (strong and weak scaling share the run at the largest process count), repeated in
    # alternation so that a change in the machine's load falls on every configuration alike.
    runs = {key: [] for key in dict.fromkeys((config, n, meta_batch, mode == "independent")
                                             for config, mode, n, meta_batch in plan)}
    for repeat in range(args.repeats):
        for key, figures in runs.items():
            figures.append(launch(*key[:3], args, independent=key[3]))
            print(repeat, key, f"{1000 * figures[-1]['seconds_per_step']:.1f} ms/step", flush=True)
    # Each run's median repeat (by time per step) stands for it, with its own split into compute and waiting.
    median = {key: sorted(figures, key=lambda f: f["seconds_per_step"])[(len(figures) - 1) // 2]
              for key, figures in runs.items()}
    rows = []
    for config, mode, n, meta_batch in plan:
        key = (config, n, meta_batch, mode == "independent")
        figures = median[key]
        base = median[config, 1, meta_batch if mode != "weak" else TOTAL_META_BATCH // procs[-1], False]
        speedup = base["seconds_per_step"] / figures["seconds_per_step"]
        rows.append({"config": config, "mode": mode, "processes": n, "meta_batch": meta_batch, **figures,
                     "steps_per_second": 1 / figures["seconds_per_step"],
                     "efficiency": speedup if mode == "weak" else speedup / n,
                     "repeats_seconds_per_step": [f["seconds_per_step"] for f in runs[key]]})
    device = mlkit.resolve_device(args.device).type
    stem = RESULTS / f"scaling-{device}"
    write_json(stem.with_suffix(".json"), {"machine": machine(), "threads_per_process": args.threads,
                                           "iterations": args.iterations, "repeats": args.repeats, "rows": rows})
    write_atomic(stem.with_suffix(".md"), report(rows, args))
    plot(rows, stem.with_suffix(".png"))
    print(report(rows, args))


def report(rows, args) -> str:
    table = markdown_table(
        ["configuration", "scaling", "processes", "meta-batch", "steps/s", "efficiency", "compute ms", "wait ms",
         "all-reduce ms"],
        [[r["config"], r["mode"], r["processes"], r["meta_batch"], f"{r['steps_per_second']:.2f}",
          f"{100 * r['efficiency']:.0f}%", f"{1000 * r['compute']:.1f}", f"{1000 * r['wait']:.2f}",
          f"{1000 * r['all_reduce']:.2f}"] for r in rows])
    return (f"{table}\n\nMAML meta-training under torchrun ({args.threads} thread(s) per process, {args.iterations} timed "
            f"steps after {args.warmup} warm-up steps, the median of {args.repeats} runs made in alternation; "
            f"'independent': the strong-scaling split run as single processes with no communication, the ceiling "
            f"that the hardware sets; strong scaling at a total meta-batch of {TOTAL_META_BATCH}). "
            f"Machine: {machine()}.\n")


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, mode in zip(axes, ("strong", "weak")):
        for i, config in enumerate(dict.fromkeys(r["config"] for r in rows)):
            mine = [r for r in rows if r["config"] == config and r["mode"] == mode]
            ax.plot([r["processes"] for r in mine], [100 * r["efficiency"] for r in mine], marker="o", label=config,
                    color=f"C{i}")
            ceiling = [r for r in rows if r["config"] == config and r["mode"] == "independent"]
            if mode == "strong" and ceiling:
                ax.plot([r["processes"] for r in ceiling], [100 * r["efficiency"] for r in ceiling], marker="x",
                        ls="--", color=f"C{i}", label=f"{config}, no communication")
        ax.axhline(85, color="gray", ls=":", label="85% target")
        ax.set(xlabel="processes", ylabel="efficiency %", title=f"{mode} scaling", ylim=(0, 110))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()

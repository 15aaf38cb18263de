"""Scaling out with torchrun: meta-iterations per second and scaling efficiency for 1, 2, ... processes.

    python benchmarks/scaling.py                          # 1 and 2 processes, 1 thread each (this CPU)
    python benchmarks/scaling.py --procs 1,2,4,8 --device cuda --threads 4   # a GPU machine: one GPU per rank

Strong scaling keeps the total meta-batch fixed (32 tasks split over the ranks); weak scaling keeps the
meta-batch per rank fixed (so N ranks train on N times as many tasks per step). Efficiency is
speed-up / N: ``time(1) / time(N) / N`` for strong scaling, ``time(1) / time(N)`` for weak scaling.

Every configuration runs ``mlkit.fit`` itself, launched by ``torchrun --standalone`` for N > 1. Each step's time
is split into compute (sampling, forward and backward), waiting for the slowest rank (a barrier added before
the all-reduce, for this measurement only) and the all-reduce of the meta-gradients.

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
from common import RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402

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


def launch(config: str, procs: int, meta_batch: int, args) -> dict:
    """Run one configuration in ``procs`` processes (torchrun for more than one) and read rank 0's figures."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "figures.json"
        script = [str(Path(__file__).resolve()), "--worker", "--config", config, "--meta-batch", str(meta_batch),
                  "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--threads", str(args.threads),
                  "--device", args.device, "--out", str(out)]
        launcher = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["OMP_NUM_THREADS"] = str(args.threads)
        subprocess.run([sys.executable, *launcher, *script], check=True, env=env)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--iterations", type=int, default=30, help="timed meta-iterations per run")
    parser.add_argument("--warmup", type=int, default=5)
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
    rows = []
    for config in configs:
        for mode in ("strong", "weak"):
            base = None
            for n in procs:
                meta_batch = TOTAL_META_BATCH if mode == "strong" else TOTAL_META_BATCH // procs[-1] * n
                figures = launch(config, n, meta_batch, args)
                base = base or figures["seconds_per_step"]
                speedup = base / figures["seconds_per_step"]
                rows.append({"config": config, "mode": mode, "processes": n, "meta_batch": meta_batch,
                             **figures, "steps_per_second": 1 / figures["seconds_per_step"],
                             "efficiency": speedup / n if mode == "strong" else speedup})
                print(rows[-1], flush=True)
    device = mlkit.resolve_device(args.device).type
    stem = RESULTS / f"scaling-{device}"
    write_json(stem.with_suffix(".json"), {"machine": machine(), "threads_per_process": args.threads,
                                           "iterations": args.iterations, "rows": rows})
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
            f"steps after {args.warmup} warm-up steps; strong scaling at a total meta-batch of {TOTAL_META_BATCH}). "
            f"Machine: {machine()}.\n")


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, mode in zip(axes, ("strong", "weak")):
        for config in dict.fromkeys(r["config"] for r in rows):
            mine = [r for r in rows if r["config"] == config and r["mode"] == mode]
            ax.plot([r["processes"] for r in mine], [100 * r["efficiency"] for r in mine], marker="o", label=config)
        ax.axhline(85, color="gray", ls=":", label="85% target")
        ax.set(xlabel="processes", ylabel="efficiency %", title=f"{mode} scaling", ylim=(0, 110))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()

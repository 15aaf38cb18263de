"""Train the navigation policies shipped in mlkit/rl/pretrained/: MAML and the jointly trained baseline.

    python benchmarks/train_navigation.py            # both, in parallel, one CPU thread each (~10 min on 2 idle cores)
    python benchmarks/train_navigation.py --quick    # a smoke run (3 iterations), written to benchmarks/checkpoints

MAML (``MAMLTRPO``, one policy-gradient inner step at α = 0.1 on 20 trajectories, TRPO outer step on 20 fresh
trajectories per task, meta-batch 20, max KL 0.01, 10 CG iterations with the Fisher estimated on 5 of the 20
tasks) and the joint baseline (the same TRPO step on the same number of tasks and
trajectories, without adaptation) each run a fixed number of iterations from a fixed seed, so the policies do
not depend on the machine's load. Interrupted runs resume from benchmarks/checkpoints/navigation/.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from mlkit import rl  # noqa: E402
from mlkit.train import save_atomic  # noqa: E402
from common import CHECKPOINTS, machine  # noqa: E402

ITERATIONS = 200
META_BATCH = 20
FISHER_TASKS = 5  # the CG's Fisher on 5 of the 20 tasks: a quarter of the cost of the step's dominant part
SEEDS = {"maml": 0, "joint": 1}
# actions in units of 0.1, as the reference code's rllab ``normalize`` wrapper (see GaussianMLPPolicy)
POLICY = {"obs_dim": 2, "action_dim": 2, "hidden": (100, 100), "init_std": 1.0, "activation": "relu",
          "action_scale": 0.1}
PRETRAINED = ROOT / "mlkit" / "rl" / "pretrained"


def build(name: str) -> rl.MAMLTRPO:
    """The policy (seeded initialisation) and its algorithm: MAML, or joint training (no inner step)."""
    torch.manual_seed(SEEDS[name])
    policy = rl.GaussianMLPPolicy(**POLICY)
    return rl.MAMLTRPO(policy, inner_lr=0.1, inner_steps=1 if name == "maml" else 0, trajectories=20, gamma=0.99,
                       trpo=rl.TRPOSettings(fisher_tasks=FISHER_TASKS))


def train(name: str, iterations: int, out: Path, checkpoints: Path) -> tuple[str, float]:
    torch.set_num_threads(1)
    algorithm = build(name)
    checkpoint = checkpoints / f"{name}.pt"
    history = rl.train(algorithm, iterations, meta_batch=META_BATCH, seed=SEEDS[name], checkpoint=checkpoint,
                       checkpoint_every=5)
    info = {"name": name, "policy": POLICY, "algorithm": algorithm.settings(), "iterations": iterations,
            "meta_batch": META_BATCH, "seed": SEEDS[name], "history": asdict(history),
            "train_minutes": history.seconds / 60, "train_cpu_minutes": history.cpu_seconds / 60,
            "machine": machine(),
            "script": "benchmarks/train_navigation.py"}
    save_atomic({"policy": algorithm.policy.state_dict(), "info": info}, out / f"navigation-{name}.pt")
    return name, history.seconds / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="TRPO steps per policy")
    parser.add_argument("--only", choices=["maml", "joint"], help="train one of the two policies")
    parser.add_argument("--jobs", type=int, default=2, help="policies trained in parallel, one thread each")
    parser.add_argument("--quick", action="store_true", help="3 iterations, written under benchmarks/checkpoints")
    args = parser.parse_args()
    if args.iterations < 1 or args.jobs < 1:
        parser.error("--iterations and --jobs must be positive")
    iterations = 3 if args.quick else args.iterations
    checkpoints = CHECKPOINTS / "navigation" / ("quick" if args.quick else "full")
    out = checkpoints if args.quick else PRETRAINED
    names = [args.only] if args.only else ["maml", "joint"]
    began = time.time()
    with ProcessPoolExecutor(min(args.jobs, len(names))) as pool:
        runs = pool.map(train, names, [iterations] * len(names), [out] * len(names), [checkpoints] * len(names))
        for name, minutes in runs:
            print(f"{name}: {iterations} iterations in {minutes:.1f} min -> {out / f'navigation-{name}.pt'}")
    print(f"total {(time.time() - began) / 60:.1f} min on {machine()}")


if __name__ == "__main__":
    main()

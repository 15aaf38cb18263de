"""Few-shot Omniglot with MAML (second and first order) and Meta-SGD, beside the published accuracies.

    python benchmarks/omniglot.py --protocol paper                     # 60,000 iterations: meant for a GPU
    python benchmarks/omniglot.py --protocol budget --budget-minutes 20 --algorithms maml --shots 1

Protocols (Finn et al., 2017, Sec. 5.2 and App. A.1; Li et al., 2017): the MAML split (1,200 characters for
meta-training, of which 100 validate, 423 for meta-test, each rotated by multiples of 90° into new classes),
Conv4 with 64 strided filters and batch statistics, Adam at 1e-3, K query images per class in training.
5-way: meta-batch 32, one inner step at α = 0.4 in training and three at test. 20-way: meta-batch 16, five
steps at α = 0.1. Meta-SGD adapts in one step with α learned from U[0.005, 0.1]. ``budget`` uses the same
settings but stops when the time budget is spent. Test: 600 tasks of the 423 test characters.

Writes benchmarks/results/omniglot.json and omniglot.md (rows are replaced by configuration), resuming
from checkpoints under benchmarks/checkpoints/omniglot/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
import mlkit.data  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402

PUBLISHED = {  # accuracy in percent: MAML (Finn et al., 2017, Table 1), Meta-SGD (Li et al., 2017, Table 2)
    ("maml", 5, 1): 98.7, ("maml", 5, 5): 99.9, ("maml", 20, 1): 95.8, ("maml", 20, 5): 98.9,
    ("maml-fo", 5, 1): 98.3, ("maml-fo", 5, 5): 99.2, ("meta-sgd", 5, 1): 99.53, ("meta-sgd", 5, 5): 99.93,
    ("meta-sgd", 20, 1): 95.93, ("meta-sgd", 20, 5): 98.97,
}
ALGORITHMS = ("maml", "maml-fo", "meta-sgd")
TEST_TASKS, TEST_QUERIES, SEED = 600, 15, 0


def settings(ways: int) -> dict:
    if ways == 5:
        return {"meta_batch": 32, "inner_lr": 0.4, "train_steps": 1, "test_steps": 3}
    return {"meta_batch": 16, "inner_lr": 0.1, "train_steps": 5, "test_steps": 5}


def build(algorithm: str, ways: int):
    s = settings(ways)
    torch.manual_seed(SEED)
    model = mlkit.models.Conv4(1, ways, filters=64, variant="strided", image_size=28)
    if algorithm == "meta-sgd":
        return mlkit.MetaSGD(model, loss="cross_entropy", inner_steps=1, init_range=(0.005, 0.1))
    return mlkit.MAML(model, loss="cross_entropy", inner_lr=s["inner_lr"], inner_steps=s["train_steps"],
                      first_order=algorithm == "maml-fo")


def run(algorithm, ways, shots, protocol, minutes, iterations, splits, device):
    train, val, test = splits
    algo = build(algorithm, ways)
    s = settings(ways)
    test_steps = 1 if algorithm == "meta-sgd" else s["test_steps"]
    tag = f"{algorithm}-{ways}w{shots}s-{protocol}" + (f"-{minutes:g}min" if protocol == "budget" else "")
    history = mlkit.fit(algo, mlkit.tasks.FewShot(train, ways, shots, queries=shots), iterations=iterations,
                        meta_batch=s["meta_batch"], meta_lr=1e-3, device=device, seed=SEED,
                        eval_every=500, eval_tasks=100, eval_steps=test_steps,
                        eval_family=mlkit.tasks.FewShot(val, ways, shots, queries=TEST_QUERIES),
                        checkpoint=CHECKPOINTS / "omniglot" / f"{tag}.pt", checkpoint_every=250,
                        minutes=minutes if protocol == "budget" else None)
    accuracy, ci95 = mlkit.evaluate(algo, mlkit.tasks.FewShot(test, ways, shots, queries=TEST_QUERIES),
                                    tasks=TEST_TASKS, steps=test_steps, meta_batch=50, seed=SEED + 1, progress=True)
    return {"algorithm": algorithm, "ways": ways, "shots": shots, "accuracy": accuracy, "ci95": ci95,
            "published": PUBLISHED.get((algorithm, ways, shots)), "protocol": protocol,
            "iterations": history.iteration[-1], "minutes": history.seconds / 60,
            "device": str(mlkit.resolve_device(device)), "curve_split": "val", "curve_iteration": history.eval_iteration,
            "curve_accuracy": history.eval_mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("paper", "budget"), default="budget")
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="training time per run (budget protocol)")
    parser.add_argument("--algorithms", default="maml", help=f"comma-separated, from {','.join(ALGORITHMS)}")
    parser.add_argument("--ways", type=int, default=5, choices=(5, 20))
    parser.add_argument("--shots", default="1", help="comma-separated, e.g. 1,5")
    parser.add_argument("--iterations", type=int, default=60_000, help="iteration cap (the paper's 60,000)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    algorithms = args.algorithms.split(",")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithms {unknown}; choose from {list(ALGORITHMS)}")
    try:
        shots = [int(k) for k in args.shots.split(",")]
    except ValueError:
        parser.error(f"--shots must be comma-separated integers, got {args.shots!r}")
    if any(k <= 0 for k in shots) or args.budget_minutes <= 0 or args.iterations <= 0:
        parser.error("--shots, --budget-minutes and --iterations must be positive")
    mlkit.resolve_device(args.device)  # fails early on an unknown or absent device

    splits = mlkit.data.Omniglot().split("maml")
    path = RESULTS / "omniglot.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for algorithm in algorithms:
        for k in shots:
            row = run(algorithm, args.ways, k, args.protocol, args.budget_minutes, args.iterations, splits, args.device)
            def key(r):
                return r["algorithm"], r["ways"], r["shots"], r["protocol"], r["device"].split(":")[0]
            rows = [r for r in rows if key(r) != key(row)] + [row]
            rows.sort(key=lambda r: (r["protocol"], r["ways"], r["shots"], r["algorithm"]))
            write_json(path, rows)
            write_atomic(RESULTS / "omniglot.md", report(rows))
    print(report(rows))


def report(rows) -> str:
    table = markdown_table(
        ["algorithm", "ways", "shots", "accuracy % (ours)", "published", "protocol", "iterations", "minutes", "device"],
        [[r["algorithm"], r["ways"], r["shots"], f"{r['accuracy']:.2f} ± {r['ci95']:.2f}",
          "—" if r["published"] is None else f"{r['published']:.2f}", r["protocol"], r["iterations"],
          f"{r['minutes']:.1f}", r["device"]] for r in rows])
    caption = (f"Omniglot, the MAML split, accuracy on {TEST_TASKS} test tasks ({TEST_QUERIES} queries per class), "
               "mean ± 95% CI; training as in the module docstring of benchmarks/omniglot.py. 'budget' rows stop "
               f"training at the time budget, so they are not the published protocol. Machine: {machine()}.")
    return f"{table}\n\n{caption}\n"


if __name__ == "__main__":
    main()

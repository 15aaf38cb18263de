"""Few-shot Omniglot with the gradient-based family (MAML, first-order MAML, Meta-SGD, Reptile, ANIL) side by side.

    python benchmarks/omniglot.py --protocol budget --budget-minutes 10 --jobs 2      # every algorithm and configuration
    python benchmarks/omniglot.py --protocol budget --algorithms maml,anil --configs 20w1s
    python benchmarks/omniglot.py --protocol paper --device cuda                      # the published iteration counts
    python benchmarks/omniglot.py --speed                                             # ANIL's saving, per meta-iteration

Data: the MAML split of Omniglot (1,100 / 100 / 423 characters for meta-train / validation / meta-test, each
also rotated by 90°, 180° and 270° as new classes), 28x28, Conv4 with 64 strided filters and batch statistics
(transductive batch norm: each task's support set and query set are normalised as batches, as in the MAML code).
Test: 600 tasks of the meta-test characters with 15 queries per class, mean ± 95% CI.

Settings (``SETTINGS``), each algorithm's paper where our implementation allows it:
- MAML, first-order MAML and ANIL (Finn et al., 2017, App. A.1): 5-way: meta-batch 32, 1 inner step at α = 0.4
  in training, 3 at test; 20-way: meta-batch 16, 5 steps at α = 0.1. Adam at 1e-3.
- Meta-SGD (Li et al., 2017): 1 inner step, α drawn from U[0.005, 0.1] and learned, meta-batch as MAML.
- Reptile (Nichol et al., 2018): 5 inner steps (10 for 20-way) in training and 50 at test, meta-batch 5, 10
  training shots per class in meta-training (the paper's ``--train-shots``), the outer step ε annealed linearly
  from 1 to 0 over the run. Our inner loop is plain SGD on the whole support set (the paper: Adam with β1 = 0 on
  mini-batches); its step size was chosen on the validation characters in 2-minute runs (``REPTILE_INNER_LR``:
  0.05, 0.1, 0.2, 0.3 and 0.5 gave the same validation accuracy within ±1 point).

``budget``: every cell trains for the same CPU time, ``--budget-minutes`` of one core (``torch.set_num_threads(1)``,
``mlkit.fit(clock="cpu")``), so an algorithm's cost per iteration is part of its result; evaluations are not
counted. CPU time is not wall time, but it is not fixed either: the same ANIL 20-way 5-shot iteration took 2.55
CPU-seconds in the committed run and 0.58 in benchmarks/omniglot_anil_study.py's, on the same kind of 2-core
machine at another time. Compare cells trained side by side; each row records its iterations.
ANIL keeps MAML's step sizes as its paper does; on 20-way tasks with a budget of minutes they make it learn slowly
per iteration (omniglot_anil_study.py measures why, and how a larger step size changes that). ``paper``: the published 60,000 iterations.
Every row records the validation accuracy against training time for the book's time plot.

Writes benchmarks/results/omniglot.json, omniglot.md and omniglot.png (validation accuracy against training time,
one panel per configuration); rows are replaced by configuration, and runs resume from checkpoints under
benchmarks/checkpoints/omniglot/. ``--report`` rewrites the table and the figure from the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, save_figure, update_json, write_atomic  # noqa: E402

CONFIGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
ALGORITHMS = ("maml", "maml-fo", "meta-sgd", "reptile", "anil")
# Published accuracy (%) and where it comes from, per (algorithm, ways, shots).
PUBLISHED = {
    **{("maml", *CONFIGS[c]): (v, "Finn et al. 2017, Table 1") for c, v in zip(CONFIGS, (98.7, 99.9, 95.8, 98.9))},
    **{("meta-sgd", *CONFIGS[c]): (v, "Li et al. 2017, Table 2") for c, v in zip(CONFIGS, (99.53, 99.93, 95.93, 98.97))},
    **{("reptile", *CONFIGS[c]): (v, "Nichol et al. 2018, non-transductive") for c, v in zip(CONFIGS, (95.39, 98.90, 88.14, 96.65))},
    ("anil", 20, 1): (96.2, "Raghu et al. 2020, Table 2"), ("anil", 20, 5): (98.0, "Raghu et al. 2020, Table 2"),
}
# Further published rows for the table: not the algorithm's own paper, or another protocol.
REFERENCES = [
    ("Reptile, transductive", "Nichol et al. 2018", (97.68, 99.48, 89.43, 97.12)),
    ("first-order MAML, transductive", "Nichol et al. 2018, Table 2", (98.3, 99.2, 89.4, 97.9)),
    ("MAML, rerun by the ANIL authors", "Raghu et al. 2020, Table 2", (None, None, 93.7, 96.4)),
]
REPTILE_INNER_LR = 0.1
REPTILE_TRAIN_SHOTS = 10   # the paper's --train-shots: more inner-loop data per class in meta-training
TEST_TASKS, TEST_QUERIES, VAL_TASKS, SEED = 600, 15, 50, 0


def settings(algorithm: str, ways: int) -> dict:
    """Meta-batch, inner step size, inner steps in training and at test."""
    if algorithm == "reptile":
        return {"meta_batch": 5, "inner_lr": REPTILE_INNER_LR, "train_steps": 5 if ways == 5 else 10, "test_steps": 50,
                "train_shots": REPTILE_TRAIN_SHOTS}
    maml = {"meta_batch": 32, "inner_lr": 0.4, "train_steps": 1, "test_steps": 3} if ways == 5 else \
        {"meta_batch": 16, "inner_lr": 0.1, "train_steps": 5, "test_steps": 5}
    if algorithm == "meta-sgd":
        return {**maml, "inner_lr": None, "train_steps": 1, "test_steps": 1}
    return maml


def build(algorithm: str, ways: int):
    s = settings(algorithm, ways)
    torch.manual_seed(SEED)
    model = mlkit.models.Conv4(1, ways, filters=64, variant="strided", image_size=28)
    if algorithm == "meta-sgd":
        return mlkit.MetaSGD(model, "cross_entropy", inner_steps=1, init_range=(0.005, 0.1))
    if algorithm == "reptile":
        return mlkit.Reptile(model, "cross_entropy", inner_lr=s["inner_lr"], inner_steps=s["train_steps"])
    if algorithm == "anil":
        return mlkit.ANIL(model, "cross_entropy", inner_lr=s["inner_lr"], inner_steps=s["train_steps"], head="head")
    return mlkit.MAML(model, "cross_entropy", inner_lr=s["inner_lr"], inner_steps=s["train_steps"],
                      first_order=algorithm == "maml-fo")


def run(algorithm: str, config: str, protocol: str, minutes: float, iterations: int, device: str,
        test_tasks: int = TEST_TASKS) -> dict:
    """Train and test one cell; returns its row."""
    torch.set_num_threads(1 if protocol == "budget" else torch.get_num_threads())
    ways, shots = CONFIGS[config]
    train, val, test = mlkit.data.Omniglot(progress=False).split("maml")
    algo, s = build(algorithm, ways), settings(algorithm, ways)
    (CHECKPOINTS / "omniglot").mkdir(parents=True, exist_ok=True)
    tag = f"{algorithm}-{config}-{protocol}" + (f"-{minutes:g}min" if protocol == "budget" else "")
    budget = minutes * 60 if protocol == "budget" else None
    options = {}
    if algorithm == "reptile":  # plain SGD on the Reptile direction, ε annealed linearly from 1 to 0
        progress = (lambda it: min(1.0, started[0] / budget)) if budget else (lambda it: it / iterations)
        options = {"optimizer": "sgd", "meta_lr": 1.0,
                   "scheduler": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1 - progress(it)))}
    else:
        options = {"meta_lr": 1e-3}
    validation = mlkit.tasks.FewShot(val, ways, shots, queries=5)
    curve_path = CHECKPOINTS / "omniglot" / f"{tag}.curve.json"   # resumed with the checkpoint
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    started = [curve[-1][0] if curve else 0.0]

    def on_step(step: mlkit.Step) -> None:
        """Evaluate on the validation characters five times per run and at its start (not counted in the budget)."""
        started[0] = step.seconds
        total, position = (budget, step.seconds) if budget else (iterations, step.iteration)
        last = (curve[-1][0] if budget else curve[-1][2]) if curve else -total
        if position - last >= total / 5 or step.iteration == iterations:
            accuracy, _ = mlkit.evaluate(algo, validation, tasks=VAL_TASKS, steps=s["test_steps"], seed=SEED + 7)
            curve.append((step.seconds, accuracy, step.iteration))
            write_atomic(curve_path, json.dumps(curve))

    train_shots = s.get("train_shots", shots)
    history = mlkit.fit(algo, mlkit.tasks.FewShot(train, ways, train_shots, queries=shots), iterations=iterations,
                        meta_batch=s["meta_batch"], device=device, seed=SEED, on_step=on_step,
                        checkpoint=CHECKPOINTS / "omniglot" / f"{tag}.pt", checkpoint_every=100,
                        minutes=minutes if protocol == "budget" else None, clock="cpu" if budget else "wall",
                        progress=False, **options)
    accuracy, ci95 = mlkit.evaluate(algo, mlkit.tasks.FewShot(test, ways, shots, queries=TEST_QUERIES),
                                    tasks=test_tasks, steps=s["test_steps"], meta_batch=20, seed=SEED + 1)
    published, source = PUBLISHED.get((algorithm, ways, shots), (None, None))
    return {"algorithm": algorithm, "ways": ways, "shots": shots, "accuracy": accuracy, "ci95": ci95,
            "published": published, "source": source, "protocol": protocol, "iterations": history.iteration[-1],
            "test_tasks": test_tasks,
            "cpu_minutes" if budget else "minutes": history.seconds / 60, "settings": s,
            "device": str(mlkit.resolve_device(device)), "machine": machine(),
            "curve_seconds": [c[0] for c in curve], "curve_accuracy": [c[1] for c in curve]}


def speed(device: str, repeats: int = 5) -> list[dict]:
    """Seconds per meta-iteration (forward and backward) of ANIL with and without feature reuse, beside MAML,
    on the same 5-way 1-shot and 20-way 5-shot batches; the equivalence is checked before timing."""
    torch.set_num_threads(1)
    train, _, _ = mlkit.data.Omniglot(progress=False).split("maml")
    rows = []
    for config in ("5w1s", "20w5s"):
        ways, shots = CONFIGS[config]
        s = settings("anil", ways)
        batch = mlkit.tasks.FewShot(train, ways, shots, queries=shots).sample(
            s["meta_batch"], generator=torch.Generator().manual_seed(0), device=device)
        variants = {"ANIL, body once per task": build("anil", ways).to(device), "MAML": build("maml", ways).to(device)}
        whole = build("anil", ways).to(device)
        whole.reuse_features = False
        variants["ANIL, body at every inner step"] = whole
        losses = {name: algo.meta_loss(batch).item() for name, algo in variants.items()}
        assert abs(losses["ANIL, body once per task"] - losses["ANIL, body at every inner step"]) < 1e-4, losses
        for name, algo in variants.items():
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                algo.meta_loss(batch).backward()
                times.append(time.perf_counter() - start)
            rows.append({"config": config, "variant": name, "inner_steps": s["train_steps"],
                         "seconds": min(times[1:]), "device": device})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("paper", "budget"), default="budget")
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="CPU minutes of training per cell (budget)")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--iterations", type=int, default=60_000, help="iteration cap (the paper's 60,000)")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once, one CPU thread each (budget)")
    parser.add_argument("--test-tasks", type=int, default=TEST_TASKS,
                        help="test tasks per cell, a multiple of 100 (the first of the same 600; recorded in the row)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--speed", action="store_true", help="only time ANIL's feature reuse")
    parser.add_argument("--report", action="store_true", help="only rewrite omniglot.md and omniglot.png from the JSON")
    args = parser.parse_args()
    algorithms, configs = args.algorithms.split(","), args.configs.split(",")
    if any(a not in ALGORITHMS for a in algorithms) or any(c not in CONFIGS for c in configs):
        parser.error(f"--algorithms from {ALGORITHMS}, --configs from {tuple(CONFIGS)}")
    if args.budget_minutes <= 0 or args.iterations <= 0 or args.jobs <= 0:
        parser.error("--budget-minutes, --iterations and --jobs must be positive")
    block = mlkit.train.EVAL_BLOCK  # evaluate draws its tasks in blocks of this size
    if not 0 < args.test_tasks <= TEST_TASKS or args.test_tasks % block:
        parser.error(f"--test-tasks must be a multiple of {block} up to {TEST_TASKS}, so that its tasks are the first of the {TEST_TASKS}")
    device = str(mlkit.resolve_device(args.device))
    if args.report:
        results = update(lambda results: results)
    elif args.speed:
        results = update(lambda results: {**results, "speed": speed(device)})
    else:
        cells = [(a, c) for c in configs for a in algorithms]
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run, a, c, args.protocol, args.budget_minutes, args.iterations, device, args.test_tasks)
                       for a, c in cells]
            for future in futures:
                row = future.result()
                results = update(lambda results: {**results, "rows": replace_row(results["rows"], row)})
                print(f"{row['algorithm']} {row['ways']}w{row['shots']}s: {row['accuracy']:.2f} ± {row['ci95']:.2f}", flush=True)
    print(report(results))


def replace_row(rows: list[dict], row: dict) -> list[dict]:
    def key(r):
        return r["algorithm"], r["ways"], r["shots"], r["protocol"], r["device"].split(":")[0]
    return sorted([r for r in rows if key(r) != key(row)] + [row],
                  key=lambda r: (r["protocol"], r["ways"], r["shots"], ALGORITHMS.index(r["algorithm"])))


def update(change) -> dict:
    """Read, change and write the results under a lock, so that several runs of this script can share the file."""
    def change_and_report(results):
        results = change(results)
        write_atomic(RESULTS / "omniglot.md", report(results))
        plot(results, RESULTS / "omniglot.png")
        return results
    return update_json(RESULTS / "omniglot.json", change_and_report, {"rows": [], "speed": []})


def by_cell(rows: list[dict]) -> dict:
    """Rows of one protocol keyed by (algorithm, configuration name such as "5w1s")."""
    return {(r["algorithm"], f"{r['ways']}w{r['shots']}s"): r for r in rows}


def report(results: dict) -> str:
    rows = results["rows"]
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        cells = by_cell(mine)
        table = [[a, *(f"{cells[a, c]['accuracy']:.2f} ± {cells[a, c]['ci95']:.2f}" if (a, c) in cells else "—" for c in CONFIGS),
                  *("—" if (a, c) not in cells or cells[a, c]["published"] is None else f"{cells[a, c]['published']:.2f}"
                    for c in CONFIGS)]
                 for a in ALGORITHMS if any((a, c) in cells for c in CONFIGS)]
        lines.append(markdown_table(["algorithm", *(f"{c} ours" for c in CONFIGS), *(f"{c} published" for c in CONFIGS)], table))
        budget = {r.get("cpu_minutes") and round(r["cpu_minutes"]) for r in mine}
        lines.append(f"\nProtocol '{protocol}'" + (f", {sorted(budget)} CPU-minutes of training per cell on one core"
                                                     if protocol == "budget" else ""))
        lines.append(markdown_table(["algorithm", *(f"{c} iterations" for c in CONFIGS)],
                                    [[a, *(cells[a, c]["iterations"] if (a, c) in cells else "—" for c in CONFIGS)]
                                     for a in ALGORITHMS if any((a, c) in cells for c in CONFIGS)]))
    lines.append("\nOther published rows: " + "; ".join(
        f"{name} ({source}): " + " / ".join("—" if v is None else f"{v}" for v in values) for name, source, values in REFERENCES))
    if results.get("speed"):
        lines.append("\n" + markdown_table(["configuration", "variant", "inner steps", "ms per meta-iteration"],
                                           [[r["config"], r["variant"], r["inner_steps"], f"{1000 * r['seconds']:.1f}"]
                                            for r in results["speed"]]))
    fewer = {}  # configuration -> the test-task counts below TEST_TASKS
    for r in rows:
        if r.get("test_tasks", TEST_TASKS) != TEST_TASKS:
            fewer.setdefault(f"{r['ways']}w{r['shots']}s", set()).add(r["test_tasks"])
    lines.append(f"\nOmniglot, the MAML split, accuracy (%) on {TEST_TASKS} test tasks"
                 + (" (" + "; ".join(f"{config}: the first {' or '.join(map(str, sorted(counts)))} of them"
                                     for config, counts in fewer.items()) + ")" if fewer else "")
                 + f" ({TEST_QUERIES} queries per class), "
                 "mean ± 95% CI; transductive batch norm (published MAML and Meta-SGD figures are transductive too; "
                 "Reptile's paper gives both). Settings in the docstring of benchmarks/omniglot.py. "
                 f"Machine: {rows[0]['machine'] if rows else machine()}.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Validation accuracy against training time for each algorithm, one panel per configuration (budget rows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = by_cell([r for r in results["rows"] if r["protocol"] == "budget"])
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, config in zip(axes.flat, CONFIGS):
        ways, shots = CONFIGS[config]
        for i, algorithm in enumerate(ALGORITHMS):
            row = cells.get((algorithm, config))
            if row is not None:
                ax.plot([s / 60 for s in row["curve_seconds"]], row["curve_accuracy"], marker=".", color=f"C{i}",
                        label=algorithm)
        ax.axhline(100 / ways, color="gray", ls=":", lw=1)
        ax.set(title=f"{ways}-way {shots}-shot", ylabel="validation accuracy (%)")
    for ax in axes[1]:
        ax.set_xlabel("training time (CPU minutes, one core)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

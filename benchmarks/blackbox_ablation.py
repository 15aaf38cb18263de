"""Why the first black-box LSTM lost to random search, and what each part of a recipe is worth.

    python benchmarks/blackbox_ablation.py              # every row: about 60 CPU-minutes
    python benchmarks/blackbox_ablation.py --quick      # 3 rows, 40 iterations, 8 runs of 50 evaluations: a smoke test

Each trained row trains the optimiser with the model-free recipe (``MODEL_FREE``: the network reads the
queries and values only, as in Chen et al. 2017; it was the shipped recipe before the surrogate input) except
for ONE change, for the same short budget (``ITERATIONS`` meta-iterations with the same early stopping on
validation draws), then runs it beside random search on the same runs of the nine problems of benchmarks/blackbox.py:
Branin, Goldstein-Price, Hartmann 3-D and 6-D, the unseen six-hump camel, Rosenbrock 4-D, Ackley 3-D and
Levy 5-D (regret against the known minimum), and held-out GP draws (run r optimises draw r; regret against
the best of multi-start gradient descent and every query). Rows without training: the untrained network
(``start="local"``), the shipped weights (``mlkit.blackbox.pretrain.DEFAULT``: the network that reads the GP
surrogate's suggestion, ``start="model"``, not meta-trained), and the shipped weights with the exploration noise
scaled at evaluation (``sigmoid(mu + scale * sigma * eps)``; ``minimize`` uses scale 1, as in training). One
more trained row meta-trains the shipped network (300 iterations, ``pretrain --iterations 300``).

Reported per row: the cells (problem x {50, 100, 200} evaluations) where the median regret is below random
search's, of 27; the geometric mean over problems of the ratio of median regrets at 100 evaluations (below 1:
better than random search); and the GP draws' median regret at 100. Every trained row is checkpointed under
benchmarks/checkpoints/blackbox/ablation/ (resumable); results go to results/blackbox_ablation.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from blackbox import FUNCTIONS, PROBLEMS, gp_minima  # noqa: E402  (the benchmark's problems and GP reference minima)
from mlkit.blackbox import gp, load_pretrained, pretrain, rnn  # noqa: E402

ITERATIONS = 400
MARKS = (50, 100, 200)
MODEL_FREE = rnn.TrainConfig(iterations=3000, batch=64, horizon=100, loss="best", lr=3e-3, hidden=128, max_dim=6,
                             features=256, lengthscale_range=(0.1, 1.0), clip=1.0, seed=0, start="local", warp=2.5,
                             validate_every=250, inputs=rnn.BASE_INPUTS)
NO_RANK = tuple(g for g in rnn.BASE_INPUTS if g != "rank")
NO_BEST = tuple(g for g in rnn.BASE_INPUTS if g not in ("x_best", "best_value"))
RANK_ONLY = tuple(g for g in rnn.BASE_INPUTS if g not in ("value", "best_value"))
# (row, what it changes, training changes); None: no training (evaluated as it is)
ROWS = [
    ("recipe", "the model-free recipe, trained as briefly as every other row", {}),
    ("old recipe", "uniform start, EI loss, no warp: how the first shipped optimiser was trained",
     {"start": "uniform", "loss": "ei", "warp": 0.0}),
    ("uniform start", "untrained head samples the whole box (sigma 1.5), not around the best point", {"start": "uniform"}),
    ("EI loss", "meta-loss: expected improvement under the GP posterior", {"loss": "ei"}),
    ("OI loss", "meta-loss: observed improvement (telescopes to best minus first)", {"loss": "oi"}),
    ("sum loss", "meta-loss: mean of all observed values", {"loss": "sum"}),
    ("no warp", "the network reads the GP values as drawn (no heavy-tailed warp)", {"warp": 0.0}),
    ("raw values", "values read as they are (clipped), not standardised by running mean and std", {"standardise": False}),
    ("no rank", "without r, the fraction of earlier values beaten", {"inputs": NO_RANK}),
    ("no best point", "without x_best and z_best", {"inputs": NO_BEST}),
    ("rank only", "without the standardised values z and z_best", {"inputs": RANK_ONLY}),
    ("horizon 50", "trajectories of 50 queries in training (the recipe: 100)", {"horizon": 50}),
    ("horizon 200", "trajectories of 200 queries in training (the recipe: 100)", {"horizon": 200}),
    ("100 iterations", "a quarter of the training", {"iterations": 100}),
    ("1200 iterations", "three times the training", {"iterations": 1200}),
    ("length scales 0.05-0.5", "rougher training functions", {"lengthscale_range": (0.05, 0.5)}),
    ("length scales 0.2-2", "smoother training functions", {"lengthscale_range": (0.2, 2.0)}),
    ("trained on 1-3-D", "training draws of dimension 1-3 only; tested on 2-6", {"dims": (1, 3)}),
    ("model-free, 3000 iterations", "the recipe at full length: the optimiser mlkit shipped before the surrogate input",
     {"iterations": 3000, "validate_every": 250}),
    ("untrained", "the untrained network (local start)", None),
    ("surrogate, 300 iterations", "that network meta-trained for 300 iterations of 32 draws (pretrain --iterations 300)",
     {"start": "model", "inputs": rnn.INPUTS, "iterations": 300, "batch": 32, "lr": 1e-3}),
    ("shipped", "the packaged weights (mlkit/blackbox/pretrained/lstm.pt): the surrogate's reader, untrained", None),
    ("shipped, noise x0.5", "packaged weights, exploration noise halved at evaluation", None),
    ("shipped, noise x0", "packaged weights, no exploration noise at evaluation", None),
]
QUICK_ROWS = ("recipe", "old recipe", "untrained", "shipped")


def row_config(changes: dict, quick: bool) -> rnn.TrainConfig:
    config = replace(MODEL_FREE, iterations=ITERATIONS, validate_every=100)
    config = replace(config, **changes)
    if quick:
        config = replace(config, iterations=40, validate_every=20, batch=16)
    return config


def train_row(name: str, changes: dict, quick: bool) -> str:
    """Train one row (resumable) and save its weights; returns the path."""
    torch.set_num_threads(1)
    folder = CHECKPOINTS / "blackbox" / ("ablation-quick" if quick else "ablation")
    slug = name.replace(" ", "_").replace(",", "")
    out = folder / f"{slug}-weights.pt"
    config = row_config(changes, quick)
    if out.exists():
        saved = torch.load(out, weights_only=False)
        if saved["config"] == asdict(config):
            return str(out)
    params, history = rnn.meta_train(config, progress=False, checkpoint=folder / f"{slug}.pt")
    rnn._save_atomic({"config": asdict(config), "params": params, "minutes": history["seconds"] / 60,
                      "kept_iteration": history.get("kept_iteration")}, out)
    return str(out)


def problem(name: str, runs: int):
    """``(objective x [B, 6] in the unit box -> y [B], mask [B, 6], minima [B] or None)``."""
    if name == "GP":
        sample = gp.select(gp.heldout_functions(), slice(0, runs))
        return (lambda x: gp.gp_values(sample, x)), sample.mask, None
    f = FUNCTIONS[name]
    low, high = (torch.tensor(np.array(f.bounds)[:, i], dtype=torch.float64) for i in (0, 1))
    mask = torch.zeros(runs, rnn.MAX_DIM, dtype=torch.float64)
    mask[:, :f.dim] = 1
    return (lambda x: f(low + (high - low) * x[:, :f.dim])), mask, torch.full((runs,), f.minimum, dtype=torch.float64)


def evaluate(params, runs: int, budget: int, scale: float, inputs, standardise, references: dict) -> dict:
    """Median best-so-far regret after each mark on every problem, and random search's on the same runs."""
    params = {k: v.detach().double() for k, v in params.items()}
    cells = {}
    for name in PROBLEMS:
        objective, mask, minima = problem(name, runs)
        generator = torch.Generator().manual_seed(0)
        uniform = torch.rand(runs, rnn.MAX_DIM, generator=generator, dtype=torch.float64)
        noise = torch.randn(runs, budget, rnn.MAX_DIM, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            _, ys = rnn.rollout(params, objective, mask, budget, generator, uniform=uniform, noise=scale * noise,
                                inputs=inputs, standardise=standardise)  # the generator: the surrogate's candidates
        learned = torch.cummin(torch.where(torch.isfinite(ys), ys, torch.full_like(ys, math.inf)), 1).values
        random, reference_minima = references[name]
        minima = reference_minima if minima is None else minima
        minima = torch.minimum(minima, learned[:, -1])  # GP draws: a query may beat the gradient-descent estimate
        cells[name] = {f"@{m}": {"lstm": (learned[:, m - 1] - minima).median().item(),
                                 "random": (random[:, m - 1] - minima).median().item()} for m in MARKS if m <= budget}
    return cells


def random_references(runs: int, budget: int) -> dict:
    """Random search's best-so-far on every problem (its own seed), and the GP draws' reference minima."""
    references = {}
    for name in PROBLEMS:
        objective, mask, minima = problem(name, runs)
        xs = torch.rand(runs, budget, rnn.MAX_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ys = torch.stack([objective(xs[:, t] * mask) for t in range(budget)], 1)
        best = torch.cummin(ys, 1).values
        if minima is None:
            minima = torch.minimum(torch.from_numpy(gp_minima(runs, [])), best[:, -1])
        references[name] = (best, minima)
    return references


def summarise(cells: dict, mark: int) -> dict:
    """Cells below random search, geometric-mean regret ratio to random search and GP regret, at ``mark``."""
    wins = sum(c["lstm"] < c["random"] for p in cells.values() for c in p.values())
    total = sum(len(p) for p in cells.values())
    ratios = [max(p[f"@{mark}"]["lstm"], 1e-12) / max(p[f"@{mark}"]["random"], 1e-12) for p in cells.values()]
    return {"wins": wins, "of": total, "geomean_ratio": float(np.exp(np.mean(np.log(ratios)))),
            "gp": cells["GP"][f"@{mark}"]["lstm"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rows, tiny training, 8 runs of 50 evaluations")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained in parallel, one thread each")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be positive")
    torch.set_num_threads(1)
    runs, budget = (8, 50) if args.quick else (50, 200)
    mark = 50 if args.quick else 100
    rows = [r for r in ROWS if not args.quick or r[0] in QUICK_ROWS]
    began = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(train_row, name, changes, args.quick) for name, _, changes in rows
                   if changes is not None}
        weights = {name: f.result() for name, f in tqdm(futures.items(), desc="training rows")}
    references = random_references(runs, budget)
    shipped = load_pretrained()
    results = []
    for name, change, changes in tqdm(rows, desc="evaluating rows"):
        scale, record = 1.0, {}
        if changes is None:
            if name == "untrained":
                config = row_config({}, args.quick)
                params = rnn.init_params(config.hidden, config.max_dim, torch.Generator().manual_seed(config.seed))
                inputs, standardise = rnn.BASE_INPUTS, True
            else:
                params, inputs, standardise = shipped.params(), shipped.inputs, shipped.standardise
                scale = {"shipped": 1.0, "shipped, noise x0.5": 0.5, "shipped, noise x0": 0.0}[name]
        else:
            saved = torch.load(weights[name], weights_only=False)
            params, config = saved["params"], rnn.TrainConfig(**saved["config"])
            inputs, standardise = config.inputs, config.standardise
            record = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in saved["config"].items()},
                      "minutes": saved["minutes"], "kept_iteration": saved["kept_iteration"]}
        cells = evaluate(params, runs, budget, scale, inputs, standardise, references)
        results.append({"row": name, "change": change, **record, "cells": cells, **summarise(cells, mark)})
    summary = {"settings": {"runs": runs, "budget": budget, "iterations": ITERATIONS, "problems": PROBLEMS, "mark": mark,
                            "recipe": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in asdict(row_config({}, args.quick)).items()}},
               "rows": results, "machine": machine(), "minutes": round((time.time() - began) / 60, 1)}
    name = "blackbox_ablation-quick" if args.quick else "blackbox_ablation"
    write_json(RESULTS / f"{name}.json", summary)
    table = [[r["row"], r["change"], f"{r['wins']}/{r['of']}", f"{r['geomean_ratio']:.2f}", f"{r['gp']:.3f}"]
             for r in results]
    detail = []
    for r in results:
        detail.append([r["row"]] + [f"{r['cells'][p][f'@{mark}']['lstm']:.3g}" for p in PROBLEMS])
    detail.append(["random search"] + [f"{results[0]['cells'][p][f'@{mark}']['random']:.3g}" for p in PROBLEMS])
    text = ("# Black-box LSTM ablation: one change at a time\n\n"
            + markdown_table(["row", "change", "cells below random search",
                              f"regret ratio to random @{mark} (geo. mean)", f"GP draws: median regret @{mark}"], table)
            + f"\n\n## Median regret after {mark} evaluations\n\n" + markdown_table(["row"] + PROBLEMS, detail)
            + f"\n\nEach trained row: {ITERATIONS} meta-iterations of the recipe with one change (unless the row changes "
            f"the length), weights kept by early stopping on validation GP draws. {runs} runs of {budget} evaluations "
            f"per problem; a cell counts when the median regret is below random search's on the same problem after 50, "
            f"100 or 200 evaluations. See the docstring of benchmarks/blackbox_ablation.py. {summary['minutes']} "
            f"minutes. Machine: {summary['machine']}.\n")
    write_atomic(RESULTS / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()

"""Why the shipped black-box LSTM loses to random search: ablations, each against random search on the same runs.

    python benchmarks/blackbox_ablation.py            # 50 runs per problem, 200 evaluations: a few CPU-minutes
    python benchmarks/blackbox_ablation.py --quick    # 8 runs, 50 evaluations

First ablation: the exploration noise at evaluation. The LSTM proposes a Gaussian in logit space and the next
query is ``sigmoid(mu + scale * sigma * eps)``; ``mlkit.blackbox.minimize`` samples with ``scale = 1``, as in
training. Here the same weights, first queries and noise draws run with ``scale`` in {0, 0.25, 0.5, 1}.

Problems: Branin, Goldstein-Price, Hartmann 3-D and 6-D on their standard boxes (regret against the known
minimum), and the 256 held-out GP draws of ``gp.heldout_functions`` (run r optimises draw r; with no known
minimum, the figure is the paired difference of best values, LSTM minus random search, negative when the LSTM
is better). Random search uses the same generator for every scale. Medians over runs after 50, 100 and 200
evaluations (the LSTM was trained for 100).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from mlkit.blackbox import functions, gp, load_pretrained, rnn  # noqa: E402

SCALES = (0.0, 0.25, 0.5, 1.0)
MARKS = (50, 100, 200)


def problem(name: str, runs: int):
    """``(objective x [B, 6] in the unit box -> y [B], mask [B, 6], minimum or None)``."""
    if name == "GP":
        sample = gp.select(gp.heldout_functions(), slice(0, runs))
        return (lambda x: gp.gp_values(sample, x)), sample.mask, None
    f = functions.ALL[name]
    low, high = (torch.tensor(np.array(f.bounds)[:, i], dtype=torch.float64) for i in (0, 1))
    mask = torch.zeros(runs, rnn.MAX_DIM, dtype=torch.float64)
    mask[:, :f.dim] = 1

    def objective(x):
        return torch.as_tensor(np.asarray(f((low + (high - low) * x[:, :f.dim]).numpy())), dtype=torch.float64)

    return objective, mask, f.minimum


def best_so_far(objective, mask, xs):
    """``[B, T]`` running minimum of ``objective`` over queries ``xs [B, T, 6]``."""
    ys = torch.stack([objective(xs[:, t] * mask) for t in range(xs.shape[1])], 1)
    return torch.cummin(ys, 1).values


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 runs, 50 evaluations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs, budget = (8, 50) if args.quick else (50, 200)
    marks = [m for m in MARKS if m <= budget]
    params = {k: v.detach().double() for k, v in load_pretrained().weights.items()}
    began, rows = time.process_time(), []
    for name in tqdm(["Branin", "Goldstein-Price", "Hartmann3", "Hartmann6", "GP"], desc="problems"):
        objective, mask, minimum = problem(name, runs)
        generator = torch.Generator().manual_seed(0)
        uniform = torch.rand(runs, rnn.MAX_DIM, generator=generator, dtype=torch.float64)
        noise = torch.randn(runs, budget, rnn.MAX_DIM, generator=generator, dtype=torch.float64)
        random = best_so_far(objective, mask, torch.rand(runs, budget, rnn.MAX_DIM, generator=generator,
                                                         dtype=torch.float64))
        for scale in SCALES:
            with torch.no_grad():
                _, ys = rnn.rollout(params, objective, mask, budget, uniform=uniform, noise=scale * noise)
            learned = torch.cummin(ys, 1).values
            row = {"problem": name, "scale": scale, "runs": runs}
            for m in marks:
                if minimum is None:  # paired: LSTM minus random on the same draw
                    difference = learned[:, m - 1] - random[:, m - 1]
                    row[f"@{m}"] = {"median_difference": difference.median().item(),
                                    "lstm_better": (difference < 0).double().mean().item()}
                else:
                    row[f"@{m}"] = {"lstm": (learned[:, m - 1] - minimum).median().item(),
                                    "random": (random[:, m - 1] - minimum).median().item()}
            rows.append(row)
    summary = {"settings": {"runs": runs, "budget": budget, "scales": list(SCALES), "trained_horizon": 100},
               "rows": rows, "machine": machine(), "cpu_seconds": round(time.process_time() - began, 1)}
    name = "blackbox_ablation-quick" if args.quick else "blackbox_ablation"
    write_json(RESULTS / f"{name}.json", summary)
    table = []
    for r in rows:
        cells = []
        for m in marks:
            c = r[f"@{m}"]
            cells.append(f"{c['median_difference']:+.3g} ({100 * c['lstm_better']:.0f}% better)" if "lstm_better" in c
                         else f"{c['lstm']:.3g} vs {c['random']:.3g}")
        table.append([r["problem"], f"{r['scale']:g}"] + cells)
    text = ("# Black-box LSTM ablation: exploration noise at evaluation\n\n"
            + markdown_table(["problem", "noise scale"] + [f"median regret @{m}: LSTM vs random" for m in marks], table)
            + f"\n\nMedian over {runs} runs (same first queries and noise draws for every scale; random search on the "
            "same generator). GP rows: median of the paired difference of best values, LSTM minus random search, "
            "and the share of draws where the LSTM is better. Scale 1 is what `minimize` does. See the docstring of "
            f"benchmarks/blackbox_ablation.py. {summary['cpu_seconds']} CPU-seconds. Machine: {summary['machine']}.\n")
    write_atomic(RESULTS / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()

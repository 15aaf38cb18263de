"""Which meta-loss trains the best optimiser? Sum, observed improvement (OI) and expected improvement (EI).

    python benchmarks/blackbox_losses.py            # three short runs of the shipped settings (about 6 minutes)

Each loss trains the shipped architecture with the shipped settings except the number of iterations, from
the same seed, and is scored on the held-out GP draws by the mean best value after 10, 30 and 100 queries (the
functions are common to all losses, so this ranks them as mean regret would). The best loss is the
default of ``python -m mlkit.blackbox.pretrain``. Writes benchmarks/results/blackbox-losses.{json,md};
each loss's result is cached under benchmarks/checkpoints/blackbox_losses/, so reruns resume.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from mlkit.blackbox import gp, pretrain, rnn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be positive")
    torch.set_num_threads(1)
    cache = CHECKPOINTS / "blackbox_losses"
    functions = gp.heldout_functions()
    rows = []
    for loss in rnn.LOSSES:
        done = cache / f"{loss}-{args.iterations}.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        config = rnn.TrainConfig(**{**asdict(pretrain.DEFAULT), "iterations": args.iterations, "loss": loss})
        params, history = rnn.meta_train(config, checkpoint=cache / f"{loss}-{args.iterations}.pt")
        best = rnn.best_so_far(params, functions, 100, seed=1)
        row = {"loss": loss, "iterations": args.iterations, "minutes": history["seconds"] / 60,
               "best_10": best[:, 9].mean().item(), "best_30": best[:, 29].mean().item(),
               "best_100": best[:, 99].mean().item()}
        write_atomic(done, json.dumps(row))
        rows.append(row)
    winner = min(rows, key=lambda r: r["best_100"])["loss"]
    table = markdown_table(["loss", "iterations", "mean best @10", "@30", "@100", "train min"],
                           [[r["loss"], r["iterations"], f"{r['best_10']:.3f}", f"{r['best_30']:.3f}",
                             f"{r['best_100']:.3f}", f"{r['minutes']:.1f}"] for r in rows])
    caption = (f"Meta-losses compared at equal training ({args.iterations} iterations of the shipped settings, seed 0), "
               f"scored on {functions.dims.shape[0]} held-out GP draws (dimensions 1-6; lower is better). "
               f"Best: {winner}. Machine: {machine()} (shared with other jobs: minutes are indicative).")
    text = f"{table}\n\n{caption}\n"
    print(text)
    write_json(RESULTS / "blackbox-losses.json", {"rows": rows, "winner": winner, "machine": machine()})
    write_atomic(RESULTS / "blackbox-losses.md", text)


if __name__ == "__main__":
    main()

"""Make the shipped optimiser: ``python -m mlkit.blackbox.pretrain`` (a minute on one CPU thread).

Writes ``mlkit/blackbox/pretrained/lstm.pt`` (or ``--out``) with the weights, every setting, the seed, the
training time and a check on held-out GP draws against random search. Interrupted runs resume from
``--checkpoint``. The defaults are the settings of the shipped file.

The shipped network reads the GP surrogate's suggestion (``start="model"``) and is NOT meta-trained
(``iterations=0``): ``--iterations 300`` trains it with the other defaults (about 10 minutes), which improves it
on GP draws but makes it lose to random search on Ackley 3-D and Levy 5-D (benchmarks/blackbox_ablation.py,
rows "shipped" and "surrogate, 300 iterations"), so the untrained weights ship.
"""
from __future__ import annotations

import argparse
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from . import gp, rnn

DEFAULT = rnn.TrainConfig(iterations=0, batch=32, horizon=100, loss="best", lr=1e-3, hidden=128, max_dim=6,
                          features=256, lengthscale_range=(0.1, 1.0), clip=1.0, seed=0, start="model", warp=2.5,
                          validate_every=100, inputs=rnn.INPUTS)
PACKAGED = Path(__file__).resolve().parent / "pretrained" / "lstm.pt"


@torch.no_grad()
def heldout_check(params: rnn.Params, steps: int = 100, seed: int = 1, inputs=rnn.INPUTS) -> dict:
    """Mean best value after 10, 30 and ``steps`` queries on the held-out GP set, optimiser and random search."""
    functions = gp.heldout_functions()
    learned = rnn.best_so_far(params, functions, steps, seed, inputs=inputs)
    generator = torch.Generator().manual_seed(seed)
    xs = torch.rand(functions.dims.shape[0], steps, functions.mask.shape[1], generator=generator, dtype=torch.float64)
    random = torch.cummin(gp.gp_values(functions, xs * functions.mask[:, None, :]), 1).values
    marks = [10, 30, steps]
    return {"functions": int(functions.dims.shape[0]), "steps": marks,
            "learned": [learned[:, t - 1].mean().item() for t in marks],
            "random": [random[:, t - 1].mean().item() for t in marks]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=DEFAULT.iterations)
    parser.add_argument("--loss", choices=rnn.LOSSES, default=DEFAULT.loss)
    parser.add_argument("--seed", type=int, default=DEFAULT.seed)
    parser.add_argument("--out", type=Path, default=PACKAGED)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="resume file (default: ~/.cache/mlkit/blackbox/pretrain-<loss>-seed<seed>.pt)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = rnn.TrainConfig(**{**asdict(DEFAULT), "iterations": args.iterations, "loss": args.loss, "seed": args.seed})
    config.check()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("MLKIT_CACHE", Path.home() / ".cache" / "mlkit"))
    checkpoint = args.checkpoint or cache / "blackbox" / f"pretrain-{config.loss}-seed{config.seed}-{config.iterations}.pt"

    params, history = rnn.meta_train(config, progress=not args.no_progress, checkpoint=checkpoint)
    optimizer = rnn.LSTMOptimizer(config.hidden, config.max_dim, start=config.start, inputs=config.inputs,
                                  standardise=config.standardise)
    with torch.no_grad():
        for name, p in optimizer.weights.items():
            p.copy_(params[name])
    tail = history["loss"][-100:]
    optimizer.record = {"paper": "Chen et al. 2017, Learning to Learn without Gradient Descent by Gradient Descent",
                        "command": "python -m mlkit.blackbox.pretrain" + (f" {' '.join(argv)}" if argv else ""),
                        "config": {**asdict(config), "lengthscale_range": list(config.lengthscale_range)},
                        "final_loss": sum(tail) / len(tail) if tail else None, "minutes": history["seconds"] / 60,
                        "validation": history["validation"], "kept_iteration": history.get("kept_iteration"),
                        "torch": str(torch.__version__), "threads": args.threads, "machine": platform.machine(),
                        "heldout": heldout_check(params, inputs=config.inputs)}
    optimizer.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) after {history['seconds'] / 60:.1f} min")
    print(optimizer.record["heldout"])


if __name__ == "__main__":
    main()

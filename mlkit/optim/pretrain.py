"""Meta-train the shipped learned optimisers: ``python -m mlkit.optim.pretrain [--family mlp|quadratic]``.

Writes ``mlkit/optim/pretrained/<family>.pt`` (or ``--out``): the LSTM weights, every setting, the seed,
the training time and a held-out check against plain SGD. The defaults below are the settings of the
shipped files; with one thread, ``quadratic`` takes a few minutes and ``mlp`` about a quarter of an hour.
"""
from __future__ import annotations

import argparse
import platform
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import lstm, optimizees, train

DEFAULTS = {
    "mlp": train.TrainConfig(family="mlp", iterations=120, population=4, horizon=100, unroll=20, lr=3e-3, seed=0),
    "quadratic": train.TrainConfig(family="quadratic", iterations=200, population=128, horizon=100, unroll=20,
                                   lr=3e-3, seed=0),
}
SGD_LR = {"mlp": 1.0, "quadratic": 0.01}
PACKAGED = Path(__file__).resolve().parent / "pretrained"


@torch.no_grad()
def heldout_check(params: lstm.Params, family_name: str, tasks: int = 32, steps: int = 100, seed: int = 12345) -> dict:
    """Mean loss over ``steps`` steps on ``tasks`` fresh problems: the learned rule and SGD at ``SGD_LR``."""
    family = optimizees.family(family_name)
    problems = family.sample(tasks, torch.Generator().manual_seed(seed))
    learned = train.rollout(params, family, problems.theta, problems.data, steps,
                            generator=torch.Generator().manual_seed(seed + 1)).losses
    sgd = train.rollout({"log_lr": torch.tensor(SGD_LR[family_name]).log()}, family, problems.theta, problems.data,
                        steps, (), torch.Generator().manual_seed(seed + 1), rule=train.lr_rule).losses
    return {"tasks": tasks, "steps": steps, "sgd_lr": SGD_LR[family_name],
            "learned_mean_loss": learned.mean().item(), "sgd_mean_loss": sgd.mean().item(),
            "learned_final_loss": learned[:, -1].mean().item(), "sgd_final_loss": sgd[:, -1].mean().item()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(DEFAULTS), default="mlp")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    config = DEFAULTS[args.family]
    if args.iterations is not None:
        config = replace(config, iterations=args.iterations)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    config.check()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    out = args.out or PACKAGED / f"{args.family}.pt"

    params, history = train.meta_train(config, progress=args.progress)
    tail = history["loss"][-25:]
    record = {"paper": "Andrychowicz et al. 2016, Learning to learn by gradient descent by gradient descent",
              "command": "python -m mlkit.optim.pretrain" + (f" {' '.join(argv)}" if argv else ""),
              "config": asdict(config), "final_unroll_loss": sum(tail) / max(len(tail), 1),
              "skipped_unrolls": history["skipped"], "minutes": history["seconds"] / 60,
              "torch": str(torch.__version__), "threads": args.threads, "machine": platform.machine(),
              "loss_curve": history["loss"][::5], "heldout": heldout_check(params, config.family)}
    from .optimizer import save_params

    save_params(params, record, out)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) after {history['seconds'] / 60:.1f} min")
    print(record["heldout"])


if __name__ == "__main__":
    main()

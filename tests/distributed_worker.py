"""A training script that knows nothing of distribution: the tests run it alone and under torchrun."""
import argparse
import os
import sys

import torch

import mlkit

ALGORITHMS = {
    "maml": lambda model: mlkit.MAML(model, inner_lr=0.05, inner_steps=2),
    "meta-sgd": lambda model: mlkit.MetaSGD(model, inner_lr=0.05),
    "reptile": lambda model: mlkit.Reptile(model, inner_lr=0.05, inner_steps=3),
}


class FailingFamily(mlkit.tasks.Sinusoid):
    """Raises on one rank at one iteration, to test that the others do not hang."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def sample(self, tasks, generator=None, device=None):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls > self.fail_at:
            raise RuntimeError("injected failure on rank 1")
        return super().sample(tasks, generator, device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algorithms", default="maml,meta-sgd,reptile")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--out", required=True, help="folder for <algorithm>.pt, written by rank 0")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--fail-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.algorithms.split(","):
        torch.manual_seed(0)
        algorithm = ALGORITHMS[name](mlkit.models.MLP(1, [32, 32], 1))
        family = mlkit.tasks.Sinusoid() if args.fail_at is None else FailingFamily(args.fail_at)
        checkpoint = None if args.checkpoint is None else f"{args.checkpoint}-{name}.pt"
        mlkit.fit(algorithm, family, iterations=args.iterations, meta_batch=args.meta_batch, device="cpu", seed=3,
                  checkpoint=checkpoint, checkpoint_every=5, progress=False)
        if os.environ.get("RANK", "0") == "0":
            mlkit.train.save_atomic({k: v for k, v in algorithm.state_dict().items() if isinstance(v, torch.Tensor)},
                                    os.path.join(args.out, f"{name}.pt"))
    print(f"rank {os.environ.get('RANK', '0')} done", file=sys.stderr)


if __name__ == "__main__":
    main()

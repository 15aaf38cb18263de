"""The learned optimiser (mlkit.optim) against tuned SGD, Nesterov SGD, RMSprop and Adam.

    PYTHONPATH=. python benchmarks/learned_optimizer.py            # everything (about 15 CPU-minutes)
    PYTHONPATH=. python benchmarks/learned_optimizer.py --quick    # 8 problems, 20 steps: a smoke test

Rows: the two training distributions (random 10-D quadratics, and the 64-20-10 sigmoid MLP on digits) and,
for the optimiser meta-trained on the MLP, the generalisation probes of Andrychowicz et al. (2016) (40
hidden units, two hidden layers, ReLU) and transfer targets in the spirit of Li & Malik (2017) (a wider
MLP, a small conv net, and the same MLP on Omniglot characters: another dataset).

Protocol. Every baseline's learning rate is tuned per row on ``--heldout`` held-out problems over the grid
``LR_GRID`` by the mean loss along 100 steps (the meta-objective, the training horizon). Then every
optimiser runs ``--problems`` fresh problems (other seeds) for ``2 * 100`` steps; all optimisers see the
same starting points and the same minibatches. Reported: the mean loss along the trajectory up to step
100 and up to step 200, and the loss at step 100 and 200 (networks: on the whole training set), each as a
mean over problems with a 95% normal confidence interval. Speed: the wall time of one ``optimizer.step()``
of ``LearnedOptimizer`` and of ``torch.optim.Adam`` on the same single network (median of 200 steps).

Each row is cached under benchmarks/checkpoints/learned_optimizer/, so rows can run in parallel processes
(``--rows wide --rows-only``) and a final run without ``--rows-only`` writes the report.

Outputs: benchmarks/results/learned_optimizer.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHECKPOINTS, RESULTS, machine, markdown_table, save_figure, write_atomic, write_json  # noqa: E402
from mlkit.optim import LearnedOptimizer, load_params, optimizees, train  # noqa: E402

HORIZON = 100
ROWS = {  # row -> (family, shipped weights, kind)
    "quadratic": ("quadratic", "quadratic", "training distribution"),
    "mlp": ("mlp", "mlp", "training distribution"),
    "mlp40": ("mlp40", "mlp", "probe: 40 hidden units"),
    "mlp2x20": ("mlp2x20", "mlp", "probe: two hidden layers"),
    "relu": ("relu", "mlp", "probe: ReLU"),
    "wide": ("wide", "mlp", "transfer: wider MLP (100 units)"),
    "conv": ("conv", "mlp", "transfer: conv net"),
    "omniglot": ("omniglot", "mlp", "transfer: Omniglot (other dataset)"),
}
BASELINES = {"sgd": "SGD", "nesterov": "SGD + Nesterov (0.9)", "rmsprop": "RMSprop", "adam": "Adam"}
LABELS = {"learned": "learned (LSTM)", **BASELINES}
LR_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]


def make_optimizer(name: str, theta: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD([theta], lr=lr)
    if name == "nesterov":
        return torch.optim.SGD([theta], lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop([theta], lr=lr)
    if name == "adam":
        return torch.optim.Adam([theta], lr=lr)
    raise ValueError(name)


def run_baseline(name: str, lr: float, family, problems, steps: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Losses ``[B, steps]`` (before each update) and the final parameters of a hand-designed optimiser.

    The population is one leaf tensor; every baseline acts elementwise, so this is B independent runs."""
    theta = problems.theta.clone().requires_grad_()
    optimizer = make_optimizer(name, theta, lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = family.loss(theta, problems.data, generator)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses, 1).numpy(), theta.detach()


def run_learned(weights, family, problems, steps: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    run = train.rollout(weights, family, problems.theta, problems.data, steps, generator=torch.Generator().manual_seed(seed))
    return run.losses.numpy(), run.theta


def clean(losses: np.ndarray) -> np.ndarray:
    """Diverged runs (NaN/inf) count as the largest finite loss seen, so that means stay finite and honest."""
    finite = np.isfinite(losses)
    cap = losses[finite].max() if finite.any() else 1e30
    return np.where(finite, losses, cap)


def ci(values: np.ndarray) -> list[float]:
    """Mean and 95% normal confidence half-width over problems."""
    return [float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))]


def tune(family, name: str, problems, seed: int) -> dict:
    scores = {}
    for lr in LR_GRID:
        losses, _ = run_baseline(name, lr, family, problems, HORIZON, seed)
        score = float(np.mean(losses)) if np.isfinite(losses).all() else math.inf
        scores[lr] = score
    best = min(scores, key=lambda lr: scores[lr])
    return {"lr": best, "scores": {str(k): v for k, v in scores.items()}}


@torch.no_grad()
def final_losses(family, theta: torch.Tensor, data: dict) -> np.ndarray:
    return family.full_loss(theta, data).numpy()


def evaluate_row(row: str, problems_n: int, heldout_n: int, steps: int, log) -> dict:
    family_name, weights_name, kind = ROWS[row]
    family = optimizees.family(family_name)
    weights, _ = load_params(weights_name)
    heldout = family.sample(heldout_n, torch.Generator().manual_seed(1000))
    tuned = {name: tune(family, name, heldout, seed=1001) for name in BASELINES}
    log(f"{row}: tuned " + ", ".join(f"{n} {t['lr']:g}" for n, t in tuned.items()))
    fresh = family.sample(problems_n, torch.Generator().manual_seed(2000))
    out = {"family": family_name, "kind": kind, "weights": weights_name, "dim": family.dim,
           "tuned_lr": {n: t["lr"] for n, t in tuned.items()}, "tuning": tuned, "methods": {}}
    marks = [m for m in (HORIZON, 2 * HORIZON) if m <= steps]
    for method in ["learned", *BASELINES]:
        start = time.perf_counter()
        if method == "learned":
            losses, theta = run_learned(weights, family, fresh, steps, seed=2001)
        else:
            losses, theta = run_baseline(method, tuned[method]["lr"], family, fresh, steps, seed=2001)
        diverged = int((~np.isfinite(losses)).any(1).sum())
        losses = clean(losses.astype(np.float64))
        # the loss at step m is f(theta_m): the recorded loss before update m+1, or the final one at the end
        at = {}
        for m in marks:
            if m < steps:
                at[m] = losses[:, m]
            else:
                end = final_losses(family, theta, fresh.data) if family_name != "quadratic" else \
                    family.loss(theta, fresh.data).numpy()
                at[m] = clean(end.astype(np.float64))
        out["methods"][method] = {
            "trajectory_mean": {str(m): ci(losses[:, :m].mean(1)) for m in marks},
            "loss_at": {str(m): ci(at[m]) for m in marks},
            "curve": losses.mean(0).tolist(), "diverged": diverged, "seconds": time.perf_counter() - start}
        log(f"{row}: {method} done ({time.perf_counter() - start:.0f} s)")
    return out


def step_time(family_name: str, weights_name: str, repeats: int) -> dict:
    """Median wall time of ``optimizer.step()`` on one network, learned vs Adam, same gradients."""
    family = optimizees.family(family_name)
    times = {}
    for method in ("learned", "adam"):
        model = family.model
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.uniform_(p, -0.1, 0.1)
        optimizer = (LearnedOptimizer(model.parameters(), weights=weights_name) if method == "learned"
                     else torch.optim.Adam(model.parameters(), lr=1e-2))
        generator = torch.Generator().manual_seed(0)
        spent = []
        for _ in range(repeats):
            index = torch.randint(0, family.x.shape[0], (family.batch,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(family.x[index]), family.y[index])
            optimizer.zero_grad()
            loss.backward()
            start = time.perf_counter()
            optimizer.step()
            spent.append(time.perf_counter() - start)
        times[method] = float(np.median(spent[repeats // 10:]))
    return {"family": family_name, "parameters": family.dim, "learned_s": times["learned"], "adam_s": times["adam"],
            "ratio": times["learned"] / times["adam"]}


def fmt(pair: list[float]) -> str:
    return f"{pair[0]:.3g} ± {pair[1]:.2g}"


def table(summary: dict) -> str:
    rows = []
    for row, result in summary["rows"].items():
        for method, m in result["methods"].items():
            lr = "—" if method == "learned" else f"{result['tuned_lr'][method]:g}"
            cells = [fmt(m["trajectory_mean"][k]) if k in m["trajectory_mean"] else "—" for k in ("100", "200")]
            cells += [fmt(m["loss_at"][k]) if k in m["loss_at"] else "—" for k in ("100", "200")]
            rows.append([row, result["kind"], LABELS[method], lr, *cells, m["diverged"]])
    return markdown_table(["row", "what", "optimiser", "tuned lr", "mean loss 1-100", "mean loss 1-200", "loss @100",
                           "loss @200", "diverged"], rows)


def verdicts(summary: dict) -> dict:
    """Per row: does the learned optimiser beat the best tuned baseline (non-overlapping 95% CIs)?"""
    out = {}
    for row, result in summary["rows"].items():
        verdict = {}
        for k in ("100", "200"):
            learned = result["methods"]["learned"]["trajectory_mean"].get(k)
            if learned is None:
                continue
            best = min(BASELINES, key=lambda b: result["methods"][b]["trajectory_mean"][k][0])
            other = result["methods"][best]["trajectory_mean"][k]
            if learned[0] + learned[1] < other[0] - other[1]:
                word = "better"
            elif learned[0] - learned[1] > other[0] + other[1]:
                word = "worse"
            else:
                word = "tie"
            verdict[k] = {"best_baseline": best, "learned_vs_best": word, "ratio": learned[0] / other[0]}
        out[row] = verdict
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary["rows"])
    fig, axes = plt.subplots(2, math.ceil(len(rows) / 2), figsize=(4 * math.ceil(len(rows) / 2), 6.4))
    for ax, row in zip(axes.flat, rows):
        for method, m in summary["rows"][row]["methods"].items():
            ax.plot(np.arange(len(m["curve"])), m["curve"], label=LABELS[method], lw=2 if method == "learned" else 1)
        ax.axvline(HORIZON, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{row} ({summary['rows'][row]['kind']})", fontsize=8)
        ax.set_xlabel("step")
    axes.flat[0].set_ylabel("mean loss")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=100, help="fresh problems per row")
    parser.add_argument("--heldout", type=int, default=16, help="held-out problems for tuning the baselines")
    parser.add_argument("--steps", type=int, default=2 * HORIZON)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--timing-repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="8 problems, 20 steps; writes nothing to results/")
    parser.add_argument("--rows-only", action="store_true", help="compute and cache --rows, write no report")
    parser.add_argument("--report-only", action="store_true", help="use cached rows only, compute none")
    parser.add_argument("--allow-missing", action="store_true", help="write the report without rows not yet cached")
    args = parser.parse_args()
    if min(args.problems, args.heldout, args.steps, args.timing_repeats) < 2:
        parser.error("--problems, --heldout, --steps and --timing-repeats must be at least 2")
    torch.set_num_threads(1)
    if args.quick:
        args.problems, args.heldout, args.steps, args.timing_repeats = 8, 4, 20, 20
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {text}", flush=True)

    summary = {"rows": {}, "labels": LABELS, "horizon": HORIZON, "lr_grid": LR_GRID,
               "settings": {"problems": args.problems, "heldout": args.heldout, "steps": args.steps,
                            "tuning_steps": HORIZON, "batch": 128, "seeds": {"heldout": 1000, "fresh": 2000}}}
    folder = CHECKPOINTS / "learned_optimizer" / ("quick" if args.quick else "full")
    for row in args.rows:  # each row is cached, so rows can run in separate processes and a run resumes
        path = folder / f"{row}-{args.problems}x{args.steps}-heldout{args.heldout}.json"
        if path.exists():
            summary["rows"][row] = json.loads(path.read_text())
            continue
        if args.report_only:
            continue
        summary["rows"][row] = evaluate_row(row, args.problems, args.heldout, args.steps, log)
        write_json(path, summary["rows"][row])
    if args.rows_only:
        return
    missing = [row for row in ROWS if row not in summary["rows"]]
    if missing and not args.allow_missing:
        raise SystemExit(f"rows not computed yet: {missing} (or pass --allow-missing)")
    summary["missing"] = missing
    summary["speed"] = [step_time(name, "mlp", args.timing_repeats) for name in ("mlp", "wide")]
    summary["verdicts"] = verdicts(summary)
    summary.update(machine=machine(), shared_machine=True, minutes=(time.perf_counter() - began) / 60,
                   records={name: load_params(name)[1]["heldout"] for name in ("mlp", "quadratic")})
    speed = "; ".join(f"{s['family']} ({s['parameters']} parameters): learned {s['learned_s'] * 1e3:.2f} ms, Adam "
                      f"{s['adam_s'] * 1e3:.3f} ms per step, ratio {s['ratio']:.0f}×" for s in summary["speed"])
    verdict = "; ".join(f"{row}: {v['100']['learned_vs_best']} {'with' if v['100']['learned_vs_best'] == 'tie' else 'than'} "
                        f"{LABELS[v['100']['best_baseline']]} at 100, "
                        f"{v['200']['learned_vs_best'] if '200' in v else '—'} at 200"
                        for row, v in summary["verdicts"].items() if "100" in v)
    text = (table(summary) + f"\n\nMean over {args.problems} fresh problems per row, ± 95% CI. Mean loss along the "
            f"trajectory (minibatch losses for networks) and the loss at step 100 and 200 (networks: whole training "
            f"set). Baselines' learning rates tuned per row over {LR_GRID} on {args.heldout} held-out problems by the "
            f"mean loss over {HORIZON} steps. The learned optimiser was meta-trained for {HORIZON} steps.\n\n"
            f"Versus the best tuned baseline (non-overlapping CIs of the trajectory mean): {verdict}.\n\n"
            f"Speed of `optimizer.step()`: {speed}.\n\nMachine: {machine()}; shared with other jobs, so timings "
            f"are indicative. Rows were computed in separate processes (cached); this run took {summary['minutes']:.1f} min."
            + (f" Not run (time): {', '.join(missing)}." if missing else "") + "\n")
    print(text)
    if args.quick:
        return
    write_json(RESULTS / "learned_optimizer.json", summary)
    write_atomic(RESULTS / "learned_optimizer.md", text)
    plot(summary, RESULTS / "learned_optimizer.png")


if __name__ == "__main__":
    main()

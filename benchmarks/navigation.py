"""2-D navigation: return after 0-3 policy-gradient steps for MAML, joint pretraining and a random init;
the time of one MAML meta-iteration, batched over tasks against a per-task loop.

    python benchmarks/navigation.py            # about 5 minutes on 2 CPU cores (the shipped policies)
    python benchmarks/navigation.py --quick    # a smoke run on 10 goals; writes nothing under results/

The policies are the ones shipped in mlkit/rl/pretrained/ (made by benchmarks/train_navigation.py, whose
settings and training time each artefact records). Evaluation follows MAML's protocol (Finn et al., 2017,
Sec. 5.3 and App. A.2): each step samples 40 fresh trajectories from the current policy, fits the linear
baseline and takes one REINFORCE step, α = 0.1 then 0.05. Returns are averaged over the trajectories of each
goal; the ± is a 95% CI over goals. Writes benchmarks/results/navigation.json and navigation.md; finished
parts are kept in benchmarks/checkpoints/navigation-benchmark.json and skipped when rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlkit import rl  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402

TEST_GOALS, VALIDATION_GOALS, TRAJECTORIES, STEPS = 100, 20, 40, 3
LRS = (0.1, 0.05)
GOAL_SEED, VALIDATION_SEED, NOISE_SEED, RANDOM_INIT_SEED = 1234, 4321, 99, 2
LR_GRID = (0.05, 0.1, 0.2, 0.5, 1.0)
TIMING_REPEATS = 3
FISHER_TASKS = 5  # as benchmarks/train_navigation.py
# MAML, Appendix C.2, Table 4 ("2D Pointmass, average return"), the MAML row (Finn et al., 2017).
PUBLISHED_MAML = (-40.41, -11.68, -3.33, -3.23)


def fresh_policy() -> rl.GaussianMLPPolicy:
    """An untrained policy of the shipped ones' architecture and action scale, seeded."""
    torch.manual_seed(RANDOM_INIT_SEED)
    return rl.GaussianMLPPolicy(**rl.load_pretrained("maml")[1]["policy"])


def policies() -> dict[str, rl.GaussianMLPPolicy]:
    maml, _ = rl.load_pretrained("maml")
    joint, _ = rl.load_pretrained("joint")
    return {"maml": maml, "joint": joint, "random": fresh_policy()}


def evaluate(policy: rl.GaussianMLPPolicy, goals: torch.Tensor, lrs) -> list[list[float]]:
    """Each goal's average return after 0..STEPS steps: ``[goals][STEPS + 1]``."""
    result = rl.fine_tune(policy, goals, steps=STEPS, trajectories=TRAJECTORIES, lrs=lrs,
                          generator=torch.Generator().manual_seed(NOISE_SEED))
    return result.mean_returns().tolist()


def summarise(per_goal: list[list[float]]) -> list[tuple[float, float]]:
    """(mean, 95% CI) over goals after each number of steps."""
    columns = list(zip(*per_goal))
    return [(statistics.fmean(c), 1.96 * statistics.stdev(c) / math.sqrt(len(c))) for c in columns]


def tune_rate(policy: rl.GaussianMLPPolicy, goals: torch.Tensor) -> float:
    """The constant step size of the grid with the best return after STEPS steps on validation goals."""
    scores = {lr: statistics.fmean(r[-1] for r in evaluate(policy, goals, (lr,))) for lr in LR_GRID}
    return max(scores, key=scores.get)


def time_meta_iterations() -> dict:
    """Check that the batched and per-task-loop meta-iterations agree, then time each (seconds per iteration)."""
    def algorithm(batched: bool) -> rl.MAMLTRPO:
        return rl.MAMLTRPO(fresh_policy(), batched=batched, trpo=rl.TRPOSettings(fisher_tasks=FISHER_TASKS))

    def sample(algo: rl.MAMLTRPO, seed: int) -> rl.MetaBatch:
        generator = torch.Generator().manual_seed(seed)
        return algo.sample(algo.env.sample_goals(20, generator), generator)

    batched, loop = algorithm(True), algorithm(False)
    b, l = sample(batched, 0), sample(loop, 0)
    # equivalence first: the same trajectories, advantages and meta-gradient (float32 rounding apart)
    torch.testing.assert_close(b.outer.observations, l.outer.observations, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.outer_adv, l.outer_adv, rtol=1e-3, atol=1e-3)
    grads = []
    for algo, batch in ((batched, b), (loop, l)):
        leaves = {k: p.detach().clone().requires_grad_() for k, p in algo.policy.params().items()}
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(algo.meta_surrogate(leaves, batch),
                                                                         list(leaves.values()))]))
    gradient_error = ((grads[0] - grads[1]).norm() / grads[0].norm()).item()
    assert gradient_error < 1e-3, f"batched and per-task meta-gradients differ by {gradient_error:.2e}"

    timings = {}
    load_before = os.getloadavg()[0]
    for name, algo in (("batched", batched), ("per-task loop", loop)):
        wall, cpu = [], []
        for repeat in range(TIMING_REPEATS):
            w0, c0 = time.perf_counter(), time.process_time()
            algo.step(sample(algo, 100 + repeat))
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        timings[name] = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}
    return {"timings": timings, "relative_gradient_difference": gradient_error,
            "load_average": [load_before, os.getloadavg()[0]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 goals, no step-size tuning, no timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = rl.Navigation2D()
    test_goals = env.sample_goals(10 if args.quick else TEST_GOALS, torch.Generator().manual_seed(GOAL_SEED))
    validation_goals = env.sample_goals(VALIDATION_GOALS, torch.Generator().manual_seed(VALIDATION_SEED))
    state_path = CHECKPOINTS / ("navigation-benchmark-quick.json" if args.quick else "navigation-benchmark.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}

    def done(key: str, compute):
        if key not in state:
            state[key] = compute()
            write_atomic(state_path, json.dumps(state))
        return state[key]

    models = policies()
    rows = []
    for name, policy in models.items():
        per_goal = done(f"returns/{name}", lambda: evaluate(policy, test_goals, LRS))
        rows.append({"policy": name, "step_sizes": list(LRS), "per_goal": per_goal, "returns": summarise(per_goal)})
    if not args.quick:
        for name in ("joint", "random"):
            lr = done(f"tuned-lr/{name}", lambda: tune_rate(models[name], validation_goals))
            per_goal = done(f"returns-tuned/{name}", lambda: evaluate(models[name], test_goals, (lr,)))
            rows.append({"policy": f"{name}, tuned α", "step_sizes": [lr], "per_goal": per_goal,
                         "returns": summarise(per_goal)})
    timing = None if args.quick else done("timing", time_meta_iterations)

    training = {name: {k: v for k, v in rl.load_pretrained(name)[1].items() if k != "history"}
                for name in ("maml", "joint")}
    header = ["initialisation", "α per step", *[f"{k} steps" for k in range(STEPS + 1)]]
    table_rows = [[r["policy"], " / ".join(f"{lr:g}" for lr in r["step_sizes"]),
                   *[f"{m:.2f} ± {c:.2f}" for m, c in r["returns"]]] for r in rows]
    table_rows.append(["MAML, published (Finn et al., 2017, App. C.2, Table 4)", "0.1 / 0.05",
                       *[f"{v:.2f}" for v in PUBLISHED_MAML]])
    maml_info = training["maml"]
    caption = (
        f"Average return on {len(test_goals)} held-out goals (uniform in [-0.5, 0.5]², seed {GOAL_SEED}) after "
        f"0-{STEPS} policy-gradient steps, each on {TRAJECTORIES} fresh trajectories with the linear feature "
        "baseline; mean ± 95% CI over goals. Reward −‖position − goal‖ per step, horizon 100, start at the "
        "origin, actions clipped to [−0.1, 0.1] (policies act in units of 0.1, as the reference code's action "
        "normalisation), episodes end within 0.01 of the goal. MAML and the jointly "
        f"pretrained policy: {maml_info['iterations']} TRPO iterations of meta-batch {maml_info['meta_batch']}, "
        "20 trajectories per task (MAML: one inner step at α = 0.1, DiCE inner estimator), max KL 0.01, "
        "10 CG iterations (Fisher on 5 of the 20 tasks), damping 1e-5; the random initialisation is untrained. "
        f"'tuned α': one constant step size from {list(LR_GRID)}, chosen by the return after {STEPS} steps on "
        f"{VALIDATION_GOALS} validation "
        "goals (the paper tuned its baselines' step sizes by hand). The published row uses the same reward "
        "(negative distance, as in all released code; the paper's text says squared distance), goals and "
        f"horizon, with up to 500 meta-iterations and the best checkpoint kept. Training: MAML "
        f"{maml_info['train_minutes']:.1f} min wall, {maml_info['train_cpu_minutes']:.1f} CPU-min; joint "
        f"{training['joint']['train_minutes']:.1f} min wall, {training['joint']['train_cpu_minutes']:.1f} CPU-min "
        f"(one thread each, in parallel). Machine: {machine()}.")
    text = f"{markdown_table(header, table_rows)}\n\n{caption}\n"
    if timing is not None:
        t = timing["timings"]
        ratio = t["per-task loop"]["wall_s"] / t["batched"]["wall_s"]
        timing_table = markdown_table(
            ["meta-iteration (20 tasks × 20 trajectories, sample + TRPO step)", "wall s", "CPU s", "vs batched"],
            [[name, f"{v['wall_s']:.2f}", f"{v['cpu_s']:.2f}", f"{v['wall_s'] / t['batched']['wall_s']:.2f}×"]
             for name, v in t.items()])
        text += (f"\n{timing_table}\n\nMedian of {TIMING_REPEATS} meta-iterations with the training settings (Fisher on "
                 f"{FISHER_TASKS} tasks), one thread; the per-task loop runs sampling, baselines, the inner step "
                 "(mlkit.core.adapt) and the outer forward task by task. Checked first: "
                 "same trajectories and a meta-gradient within "
                 f"{timing['relative_gradient_difference']:.1e} (relative). The machine was shared: load average "
                 f"{timing['load_average'][0]:.1f} before and {timing['load_average'][1]:.1f} after on 2 cores, so "
                 f"wall times are inflated; the batched path is {ratio:.1f}× faster.\n")
    print(text)
    if args.quick:
        return
    write_json(RESULTS / "navigation.json", {"rows": rows, "published_maml": list(PUBLISHED_MAML),
                                              "timing": timing, "training": training, "machine": machine(),
                                              "protocol": {"test_goals": TEST_GOALS, "goal_seed": GOAL_SEED,
                                                           "trajectories": TRAJECTORIES, "steps": STEPS,
                                                           "step_sizes": list(LRS), "lr_grid": list(LR_GRID)}})
    write_atomic(RESULTS / "navigation.md", text)


if __name__ == "__main__":
    main()

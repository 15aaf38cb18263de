"""ANIL on 20-way Omniglot: a bug, its settings, or its training budget?

In the 10-CPU-minute table (benchmarks/omniglot.py) ANIL reaches 37.6% on 20-way 5-shot after 235 meta-iterations,
MAML 65.6% after 25. This study separates three explanations, each with a cheap measurement on one CPU thread:

    python benchmarks/omniglot_anil_study.py --jobs 2            # everything (about 20 CPU-minutes), resumable
    python benchmarks/omniglot_anil_study.py --parts check       # only the correctness checks (about a minute)
    python benchmarks/omniglot_anil_study.py --report            # rewrite the .md from the .json

- ``check`` (a bug?): on four 20-way 5-shot meta-training tasks and the benchmark's Conv4, ANIL's meta-loss and
  meta-gradient equal (i) MAML with inner step size 0 on the body and the benchmark's α on the head and (ii) a
  hand-written per-task reference (``torch.func.functional_call`` and ``torch.autograd.grad`` on the head alone,
  support and query sets each normalised as their own batch); ANIL's test-time predictions (``steps=5``, no
  graph) equal the same reference's, ``adapt`` changes no body tensor, ``mlkit.evaluate`` gives the same accuracy
  as head-only MAML and another one than MAML; and the query logits differ from those of a forward pass that
  normalised support and query together (so the check can see transductive batch norm go wrong).
- ``initial`` and the runs' ``start``/``end`` diagnostics (the step size): on 16 validation tasks, the support
  loss before and after the inner loop (5 steps), how far the head moves (‖φ_head − θ_head‖ / ‖θ_head‖), the body's
  feature norm, and the query accuracy after adaptation, for ANIL with α = 0.1, 0.4 and 1.0 and for MAML.
- ``runs`` (step size against budget): 20-way 5-shot from the benchmark's initialisation and task stream (seed 0),
  ``--minutes`` CPU-minutes each (default 3) for ANIL with α = 0.1 (the benchmark's), 0.4 and 1.0 and for MAML
  (α = 0.1); ANIL 20-way 1-shot with α = 0.1 and 1.0 for 235 iterations, the count the 10-minute 20-way 5-shot run
  reached. Validation accuracy (100 tasks of the validation characters, 5 queries per class) every 15 iterations
  and at the end; ANIL runs also on the benchmark's test tasks (the first 200 for 5-shot, 600 for 1-shot).
- ``curves`` in the report: the 10-minute runs' validation curves with iteration counts interpolated linearly in
  CPU time (the cost per iteration is constant), to compare ANIL 1-shot and 5-shot at about equal iterations.

Otherwise the benchmark's settings (``omniglot.settings``): meta-batch 16, 5 inner steps in training and at test,
Adam at 1e-3. Writes benchmarks/results/omniglot_anil_study.json and .md (atomically, under a lock; each part and
run is saved when done and skipped when present); runs resume from checkpoints under
benchmarks/checkpoints/omniglot_anil_study/.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
import omniglot  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, update_json, write_atomic  # noqa: E402

PATH = RESULTS / "omniglot_anil_study.json"
WAYS, SEED = 20, omniglot.SEED
CHECK_TASKS, DIAGNOSE_TASKS, VAL_TASKS, VAL_QUERIES, EVAL_EVERY = 4, 16, 100, 5, 15
EQUAL_ITERATIONS = 235  # iterations of the 10-minute ANIL 20w5s row in benchmarks/results/omniglot.json
INITIAL_LRS = (0.1, 0.4, 1.0)
# name -> (algorithm, configuration, inner step size α, budget: "minutes" or a number of iterations)
RUNS = {
    "anil-20w5s-lr0.1": ("anil", "20w5s", 0.1, "minutes"),
    "anil-20w5s-lr0.4": ("anil", "20w5s", 0.4, "minutes"),
    "anil-20w5s-lr1": ("anil", "20w5s", 1.0, "minutes"),
    "maml-20w5s-lr0.1": ("maml", "20w5s", 0.1, "minutes"),
    "anil-20w1s-lr0.1": ("anil", "20w1s", 0.1, EQUAL_ITERATIONS),
    "anil-20w1s-lr1": ("anil", "20w1s", 1.0, EQUAL_ITERATIONS),
}


def splits():
    return mlkit.data.Omniglot(progress=False).split("maml")


def build(algorithm: str, lr: float):
    """The benchmark's 20-way learner (same initialisation), with inner step size ``lr``."""
    algo = omniglot.build(algorithm, WAYS)
    algo.inner_lr = lr
    return algo


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def head_only_reference(model, batch, lr: float, steps: int, create_graph: bool, joint: bool = False):
    """Per task: ``steps`` gradient steps on the head alone, then the query loss and logits. Support and query are
    each normalised as their own batch; ``joint`` instead computes the query logits in one pass with the support."""
    theta = dict(model.named_parameters())
    if not create_graph:
        theta = {n: p.detach().requires_grad_() for n, p in theta.items()}
    losses, logits = [], []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        p = dict(theta)
        for _ in range(steps):
            loss = F.cross_entropy(torch.func.functional_call(model, p, (sx,)), sy)
            gw, gb = torch.autograd.grad(loss, [p["head.weight"], p["head.bias"]], create_graph=create_graph)
            p = {**p, "head.weight": p["head.weight"] - lr * gw, "head.bias": p["head.bias"] - lr * gb}
        out = torch.func.functional_call(model, p, (torch.cat([sx, qx]) if joint else qx,))[-len(qx):]
        losses.append(F.cross_entropy(out, qy))
        logits.append(out.detach())
    return torch.stack(losses).mean(), torch.stack(logits)


def check() -> dict:
    """Is ANIL's meta-gradient and evaluation what it should be, on a 20-way 5-shot batch of the benchmark?"""
    torch.set_num_threads(1)
    train, val, _ = splits()
    s = omniglot.settings("anil", WAYS)
    lr, steps = s["inner_lr"], s["train_steps"]
    anil = omniglot.build("anil", WAYS)
    model = anil.model
    params = list(model.parameters())
    body = [i for i, (n, _) in enumerate(model.named_parameters()) if not n.startswith("head.")]
    head = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith("head.")]
    batch = mlkit.tasks.FewShot(train, WAYS, 5, queries=5).sample(CHECK_TASKS, generator=torch.Generator().manual_seed(0))
    maml_head = mlkit.MAML(model, "cross_entropy", inner_lr={"": 0.0, "head": lr}, inner_steps=steps)

    def loss_and_grad(loss):
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), flat([grads[i] for i in body]), flat([grads[i] for i in head])

    ref_loss, ref_body, ref_head = loss_and_grad(head_only_reference(model, batch, lr, steps, True)[0])
    out = {"tasks": CHECK_TASKS, "ways": WAYS, "shots": 5, "inner_lr": lr, "inner_steps": steps,
           "reference_query_loss": ref_loss.item(), "reference_body_grad_norm": ref_body.norm().item(),
           "reference_head_grad_norm": ref_head.norm().item()}
    for name, algo in (("anil", anil), ("maml_head_only", maml_head)):
        loss, gb, gh = loss_and_grad(algo.meta_loss(batch))
        out[name] = {"query_loss_abs_diff": abs(loss - ref_loss).item(), "body_grad_rel_diff": relative(gb, ref_body),
                     "head_grad_rel_diff": relative(gh, ref_head)}

    # Evaluation: the test-time path (no graph, eval mode), steps=5 as in the benchmark.
    _, ref_logits = head_only_reference(model, batch, lr, steps, False)
    _, joint_logits = head_only_reference(model, batch, lr, steps, False, joint=True)
    with anil.evaluating():
        anil_logits = anil.query_predictions(batch, steps=steps)
    with maml_head.evaluating():
        maml_head_logits = maml_head.query_predictions(batch, steps=steps)
    scale = ref_logits.abs().max()
    out["evaluation"] = {
        "anil_logits_max_diff": ((anil_logits - ref_logits).abs().max() / scale).item(),
        "maml_head_only_logits_max_diff": ((maml_head_logits - ref_logits).abs().max() / scale).item(),
        "joint_batch_norm_logits_max_diff": ((joint_logits - ref_logits).abs().max() / scale).item()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    phi = anil.adapt(batch.support_x[0], batch.support_y[0], steps=steps, differentiable=False)
    out["evaluation"]["adapt_changes_body"] = any(not torch.equal(phi[n], before[n]) for n in before if not n.startswith("head."))
    out["evaluation"]["adapt_changes_head"] = all(not torch.equal(phi[n], before[n]) for n in before if n.startswith("head."))
    family = mlkit.tasks.FewShot(val, WAYS, 5, queries=VAL_QUERIES)
    maml = mlkit.MAML(model, "cross_entropy", inner_lr=lr, inner_steps=steps)
    for name, algo in (("anil", anil), ("maml_head_only", maml_head), ("maml", maml)):
        out["evaluation"][f"{name}_accuracy"] = mlkit.evaluate(algo, family, tasks=20, steps=steps, seed=SEED + 7)[0]
    out["evaluation"]["parameters_unchanged"] = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    return out


def diagnose(algo, family, lr: float, steps: int = 5) -> dict:
    """Inner-loop statistics on ``DIAGNOSE_TASKS`` fixed tasks of ``family``, means over tasks."""
    batch = family.sample(DIAGNOSE_TASKS, generator=torch.Generator().manual_seed(SEED + 3))
    model = algo.model
    theta = {n: p.detach() for n, p in model.named_parameters()}
    names = ["head.weight", "head.bias"]
    rows = []
    with algo.evaluating():
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
            phi = algo.adapt(sx, sy, steps=steps, inner_lr=lr, differentiable=False)
            with torch.no_grad():
                before, after = algo.predict(theta, sx), algo.predict(phi, sx)
                features = model.features(sx).mean((2, 3))
                body = [n for n in theta if n not in names]
                rows.append({
                    "support_loss_before": F.cross_entropy(before, sy).item(),
                    "support_loss_after": F.cross_entropy(after, sy).item(),
                    "support_accuracy_after": 100 * (after.argmax(1) == sy).float().mean().item(),
                    "query_accuracy_after": 100 * (algo.predict(phi, qx).argmax(1) == qy).float().mean().item(),
                    "head_moved": relative(flat(phi[n] for n in names), flat(theta[n] for n in names)),
                    "body_moved": relative(flat(phi[n] for n in body), flat(theta[n] for n in body)),
                    "feature_norm": features.norm(dim=1).mean().item(),
                    "head_weight_norm": theta["head.weight"].norm().item()})
    return {"inner_lr": lr, "steps": steps, "tasks": DIAGNOSE_TASKS,
            **{k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}}


def initial() -> list[dict]:
    """The inner loop at the benchmark's initialisation, 1-shot and 5-shot: ANIL at several α, and MAML."""
    torch.set_num_threads(1)
    _, val, _ = splits()
    out = []
    for shots in (1, 5):
        family = mlkit.tasks.FewShot(val, WAYS, shots, queries=VAL_QUERIES)
        for lr in INITIAL_LRS:
            out.append({"algorithm": "anil", "shots": shots, **diagnose(build("anil", lr), family, lr)})
        out.append({"algorithm": "maml", "shots": shots, **diagnose(build("maml", 0.1), family, 0.1)})
    return out


def run(name: str, minutes: float) -> dict:
    """Train one run of ``RUNS`` (resumable), then diagnose and evaluate it."""
    torch.set_num_threads(1)
    algorithm, config, lr, budget = RUNS[name]
    ways, shots = omniglot.CONFIGS[config]
    s = omniglot.settings(algorithm, ways)
    train, val, test = splits()
    algo = build(algorithm, lr)
    validation = mlkit.tasks.FewShot(val, ways, shots, queries=VAL_QUERIES)
    folder = CHECKPOINTS / "omniglot_anil_study"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{name}-{minutes:g}min" if budget == "minutes" else name
    start_path = folder / f"{tag}.start.json"
    if not start_path.exists():  # before any training: the inner loop and the validation accuracy at θ_0
        start = {"diagnostics": diagnose(algo, validation, lr),
                 "accuracy": mlkit.evaluate(algo, validation, tasks=VAL_TASKS, steps=s["test_steps"], seed=SEED + 1)}
        write_atomic(start_path, json.dumps(start))
    start = json.loads(start_path.read_text())
    history = mlkit.fit(algo, mlkit.tasks.FewShot(train, ways, shots, queries=shots),
                        iterations=60_000 if budget == "minutes" else budget, meta_batch=s["meta_batch"],
                        meta_lr=1e-3, device="cpu", seed=SEED, eval_every=EVAL_EVERY if algorithm == "anil" else 10**6,
                        eval_tasks=VAL_TASKS, eval_steps=s["test_steps"], eval_family=validation,
                        checkpoint=folder / f"{tag}.pt", checkpoint_every=5,
                        minutes=minutes if budget == "minutes" else None, clock="cpu", progress=False)
    if budget != "minutes" and history.eval_iteration[-1:] != [history.iteration[-1]]:
        raise RuntimeError(f"{name}: no evaluation at the last iteration")
    row = {"name": name, "algorithm": algorithm, "ways": ways, "shots": shots, "inner_lr": lr,
           "meta_batch": s["meta_batch"], "inner_steps": s["train_steps"], "test_steps": s["test_steps"],
           "budget": f"{minutes:g} CPU-minutes" if budget == "minutes" else f"{budget} iterations",
           "iterations": history.iteration[-1], "cpu_minutes": history.seconds / 60,
           "seconds_per_iteration": history.seconds / history.iteration[-1],
           "curve_iteration": [0, *history.eval_iteration], "curve_seconds": [0.0, *history.eval_seconds],
           "curve_accuracy": [start["accuracy"][0], *history.eval_mean],
           "curve_ci95": [start["accuracy"][1], *history.eval_ci95],
           "start": start["diagnostics"], "end": diagnose(algo, validation, lr), "machine": machine()}
    if algorithm == "anil":  # the benchmark's test tasks: the first 200 for 5-shot (as its table), 600 for 1-shot
        tasks = 200 if shots == 5 else omniglot.TEST_TASKS
        accuracy, ci95 = mlkit.evaluate(algo, mlkit.tasks.FewShot(test, ways, shots, queries=omniglot.TEST_QUERIES),
                                        tasks=tasks, steps=s["test_steps"], meta_batch=20, seed=SEED + 1)
        row["test"] = {"accuracy": accuracy, "ci95": ci95, "tasks": tasks}
    return row


def curves() -> list[dict]:
    """The 10-minute validation curves of omniglot.json, with iterations interpolated in CPU time."""
    rows = json.loads((RESULTS / "omniglot.json").read_text())["rows"]
    out = []
    for r in rows:
        if r["protocol"] == "budget":
            total = r["cpu_minutes"] * 60
            out.append({"algorithm": r["algorithm"], "ways": r["ways"], "shots": r["shots"], "iterations": r["iterations"],
                        "seconds_per_iteration": total / r["iterations"], "test_accuracy": r["accuracy"],
                        "inner_lr": r["settings"]["inner_lr"],
                        "curve_iteration": [r["iterations"] * t / total for t in r["curve_seconds"]],
                        "curve_accuracy": r["curve_accuracy"]})
    return out


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def equal_iterations(results: dict) -> list[dict]:
    """1-shot against 5-shot at the same iteration: from the 10-minute curves (the 5-shot run's last validation
    point, the 1-shot curve interpolated there; Reptile trains on 10 shots in both) and from this study's ANIL runs
    (their common evaluation points)."""
    out = []
    ten = {(c["algorithm"], c["ways"], c["shots"]): c for c in results.get("curves", [])}
    for algorithm in omniglot.ALGORITHMS:
        for ways in (5, 20):
            five, one = ten.get((algorithm, ways, 5)), ten.get((algorithm, ways, 1))
            if five and one and algorithm != "reptile":
                at = five["curve_iteration"][-1]
                out.append({"source": "10-minute runs", "algorithm": algorithm, "ways": ways,
                            "inner_lr": five["inner_lr"], "iteration": at,
                            "one_shot": interpolate(one["curve_iteration"], one["curve_accuracy"], at),
                            "five_shot": five["curve_accuracy"][-1]})
    runs = results.get("runs", {})
    for lr, (a, b) in {0.1: ("anil-20w1s-lr0.1", "anil-20w5s-lr0.1"), 1.0: ("anil-20w1s-lr1", "anil-20w5s-lr1")}.items():
        if a in runs and b in runs:
            one = dict(zip(runs[a]["curve_iteration"], runs[a]["curve_accuracy"]))
            five = dict(zip(runs[b]["curve_iteration"], runs[b]["curve_accuracy"]))
            common = [it for it in sorted(set(one) & set(five)) if it]
            for it in common[2::3] if len(common) > 3 else common:  # every third common point keeps the table short
                out.append({"source": "this study", "algorithm": "anil", "ways": 20, "inner_lr": lr, "iteration": it,
                            "one_shot": one[it], "five_shot": five[it]})
    return out


def report(results: dict) -> str:
    lines = []
    c = results.get("check")
    if c:
        e = c["evaluation"]
        lines.append(f"Correctness on {c['tasks']} 20-way 5-shot meta-training tasks (benchmark Conv4 at its "
                     f"initialisation, α = {c['inner_lr']}, {c['inner_steps']} steps, float32), against a hand-written "
                     "head-only reference:")
        lines.append(markdown_table(["quantity", "ANIL", "MAML, α = 0 on the body"], [
            ["query loss, absolute difference", f"{c['anil']['query_loss_abs_diff']:.1e}", f"{c['maml_head_only']['query_loss_abs_diff']:.1e}"],
            ["body meta-gradient, relative difference", f"{c['anil']['body_grad_rel_diff']:.1e}", f"{c['maml_head_only']['body_grad_rel_diff']:.1e}"],
            ["head meta-gradient, relative difference", f"{c['anil']['head_grad_rel_diff']:.1e}", f"{c['maml_head_only']['head_grad_rel_diff']:.1e}"],
            ["test-time query logits (steps=5), max difference / max logit", f"{e['anil_logits_max_diff']:.1e}", f"{e['maml_head_only_logits_max_diff']:.1e}"]]))
        lines.append(f"\nReference query loss {c['reference_query_loss']:.4f}. Normalising support and query together "
                     f"would change the logits by {e['joint_batch_norm_logits_max_diff']:.2f} of the largest. `adapt` changes "
                     f"a body tensor: {e['adapt_changes_body']}; the head: {e['adapt_changes_head']}. `mlkit.evaluate` on 20 "
                     f"validation tasks at initialisation: ANIL {e['anil_accuracy']:.2f}%, head-only MAML "
                     f"{e['maml_head_only_accuracy']:.2f}%, MAML {e['maml_accuracy']:.2f}%; parameters unchanged: "
                     f"{e['parameters_unchanged']}.\n")

    def diag_row(label, d):
        return [label, d["inner_lr"], f"{d['support_loss_before']:.3f}", f"{d['support_loss_after']:.3f}",
                f"{d['support_accuracy_after']:.1f}", f"{d['query_accuracy_after']:.1f}", f"{d['head_moved']:.4f}",
                f"{d['body_moved']:.4f}", f"{d['feature_norm']:.2f}"]

    header = ["model", "α", "support loss before", "after 5 steps", "support acc. after (%)", "query acc. after (%)",
              "head moved (relative)", "body moved (relative)", "feature norm"]
    runs = results.get("runs", {})
    table = [diag_row(f"{d['algorithm']}, 20w{d['shots']}s, initialisation", d) for d in results.get("initial", [])]
    for name in RUNS:
        if name in runs:
            r = runs[name]
            table.append(diag_row(f"{r['algorithm']}, 20w{r['shots']}s, after {r['iterations']} iterations", r["end"]))
    if table:
        lines.append(f"The inner loop on {DIAGNOSE_TASKS} validation tasks (means over tasks; relative = ‖φ − θ‖ / ‖θ‖):")
        lines.append(markdown_table(header, table))
    if runs:
        lines.append(f"\nRuns from the benchmark's initialisation and task stream (seed {SEED}), one CPU thread; validation: "
                     f"{VAL_TASKS} tasks of the validation characters, {VAL_QUERIES} queries per class; test: the "
                     "benchmark's test tasks (15 queries per class):")
        lines.append(markdown_table(
            ["run", "α", "budget", "iterations", "CPU-minutes", "s per iteration", "validation at start (%)",
             "validation at end (%)", "test (%)"],
            [[name, r["inner_lr"], r["budget"], r["iterations"], f"{r['cpu_minutes']:.2f}", f"{r['seconds_per_iteration']:.2f}",
              f"{r['curve_accuracy'][0]:.1f}", f"{r['curve_accuracy'][-1]:.1f} ± {r['curve_ci95'][-1]:.1f}",
              f"{r['test']['accuracy']:.2f} ± {r['test']['ci95']:.2f} ({r['test']['tasks']} tasks)" if "test" in r else "—"]
             for name, r in ((n, runs[n]) for n in RUNS if n in runs)]))
    ten = {(c["algorithm"], c["ways"], c["shots"]): c for c in results.get("curves", [])}
    cost = [[name, f"{r['seconds_per_iteration']:.2f}", f"{ten[key]['seconds_per_iteration']:.2f}"]
            for name, r in ((n, runs[n]) for n in RUNS if n in runs)
            if r["inner_lr"] == 0.1 and (key := (r["algorithm"], r["ways"], r["shots"])) in ten]
    if cost:
        lines.append("\nCPU seconds per meta-iteration, this study against the 10-minute table's run of the same cell "
                     "(same settings and code, on the same kind of machine at another time):")
        lines.append(markdown_table(["run", "this study", "10-minute table"], cost))
    equal = equal_iterations(results)
    if equal:
        lines.append("\n1-shot against 5-shot at equal iterations (validation accuracy, %; in the 10-minute runs the "
                     "5-shot run's last validation point, the 1-shot curve interpolated at its iteration, iterations "
                     "interpolated in CPU time):")
        lines.append(markdown_table(["source", "algorithm", "ways", "α", "iteration", "1-shot", "5-shot"],
                                    [[e["source"], e["algorithm"], e["ways"], "learned" if e["inner_lr"] is None else e["inner_lr"],
                                      f"{e['iteration']:.0f}",
                                      "—" if e["one_shot"] is None else f"{e['one_shot']:.1f}", f"{e['five_shot']:.1f}"]
                                     for e in equal]))
    lines.append(f"\nMachine: {results.get('machine', machine())}. Settings otherwise the benchmark's (meta-batch 16, "
                 "5 inner steps in training and at test, Adam at 1e-3); see the docstring of "
                 "benchmarks/omniglot_anil_study.py.")
    return "\n".join(lines) + "\n"


def update(change) -> dict:
    def change_and_report(results):
        results = change(results)
        results["curves"] = curves()
        results["equal_iterations"] = equal_iterations(results)
        results["machine"] = machine()
        write_atomic(RESULTS / "omniglot_anil_study.md", report(results))
        return results
    return update_json(PATH, change_and_report, {"runs": {}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="check,initial,runs", help="comma-separated: check, initial, runs")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which runs, from {', '.join(RUNS)}")
    parser.add_argument("--minutes", type=float, default=3.0, help="CPU-minutes of training for the timed runs")
    parser.add_argument("--jobs", type=int, default=1, help="processes at once, one CPU thread each")
    parser.add_argument("--redo", action="store_true", help="recompute parts and runs already in the JSON")
    parser.add_argument("--report", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args()
    parts, names = args.parts.split(","), args.runs.split(",")
    if any(p not in ("check", "initial", "runs") for p in parts) or any(n not in RUNS for n in names):
        parser.error(f"--parts from check, initial, runs; --runs from {', '.join(RUNS)}")
    if args.minutes <= 0 or args.jobs <= 0:
        parser.error("--minutes and --jobs must be positive")
    if args.report:
        print(report(update(lambda results: results)))
        return
    done = json.loads(PATH.read_text()) if PATH.exists() and not args.redo else {"runs": {}}
    jobs = [(part, None) for part in ("check", "initial") if part in parts and part not in done]
    jobs += [("runs", n) for n in names if "runs" in parts and n not in done.get("runs", {})]
    functions = {"check": check, "initial": initial}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run, n, args.minutes) if part == "runs" else pool.submit(functions[part]): (part, n)
                   for part, n in jobs}
        for future in futures:  # in submission order: the slow runs were submitted first
            part, name = futures[future]
            value = future.result()
            if part == "runs":
                update(lambda results: {**results, "runs": {**results.get("runs", {}), name: value}})
            else:
                update(lambda results: {**results, part: value})
            print(f"{part} {name or ''} done", flush=True)
    print(report(json.loads(PATH.read_text())))


if __name__ == "__main__":
    main()

"""Prototypical Networks on Omniglot, semi-supervised Prototypical Networks, and the cost of one meta-iteration.

    python benchmarks/protonet.py omniglot                 # 5w1s 5w5s 20w1s 20w5s, 10 CPU-minutes per training
    python benchmarks/protonet.py semi                     # 5-way 1-shot, 10% labelled, 5 CPU-minutes per training
    benchmarks/.protonet-venv/bin/python benchmarks/protonet.py speed    # mlkit vs a loop vs learn2learn

Every training runs on one thread (``torch.set_num_threads(1)``) and stops at a budget of CPU time
(``fit(..., minutes=..., clock="cpu")``), so other jobs on a shared machine change the wall time much more than the
figures (they still slow each CPU-second through shared caches and memory bandwidth).
Interrupted runs resume from checkpoints under benchmarks/checkpoints/protonet/; finished rows are kept.

``omniglot`` (Snell et al., 2017, Sec. 3.1): the MAML split of Omniglot (1,100 training characters, 100
validation, 423 test, each rotated by multiples of 90° into new classes), Conv4 with 64 filters and 2x2
max-pooling (64-d embedding), Adam at 1e-3 halved every 2,000 episodes, one 60-way episode per step with 5
queries per class and the test shot count as training shots. The paper's protocol trains the 5-way and 20-way
cells of a shot count identically, so they share one training run. Validation accuracy (50 tasks of 5
queries per class, 5-way and 20-way) is recorded every 100 episodes against CPU seconds. Test: 600 tasks of the
423 test characters with 15 queries per class, mean ± 95% CI.

``semi`` (Ren et al., 2018, Sec. 5.2): each training class's 20 drawings split once into 2 labelled (10%) and 18
unlabelled; training episodes are 5-way 1-shot with 1 query per class (all that 2 labelled drawings allow) and
M = 5 unlabelled images per class, plus M from each of H = 5 distractor classes ("with distractors"). Test
episodes of the 423 test characters: 1 shot, M = 5 unlabelled (Omniglot's 20 drawings cannot give the paper's
M = 20; the authors' code uses 5 for Omniglot too) and the remaining 14 drawings as queries, as in the authors'
code; 1,000 episodes, the same ones for every model. The gain over the supervised baseline is the mean of the
per-episode differences on these shared episodes, with its 95% CI.

``speed``: CPU milliseconds of one meta-iteration (forward, backward) of mlkit's ProtoNet, of a plain per-task
loop, and of learn2learn's ProtoNet helpers (``learn2learn.nn.PrototypicalClassifier``) on the same batch, after
checking that the three give the same loss and gradients.
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
import mlkit.data  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, update_json, write_atomic, write_json  # noqa: E402

SEED = 0
RUNS = CHECKPOINTS / "protonet"
# Snell et al. (2017), Table 1: Omniglot accuracy (%), averaged over 1,000 test episodes, no ± given.
PUBLISHED = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}
SOURCE = "Snell et al. 2017, Table 1"
CELLS = ((5, 1), (5, 5), (20, 1), (20, 5))
TEST_TASKS, TEST_QUERIES, CURVE_EVERY, CURVE_TASKS, CURVE_QUERIES = 600, 15, 100, 50, 5
# Ren et al. (2018), Table 1 (Omniglot 1-shot) of the version whose text we could read, as 100 − error (%):
# (without distractors, with distractors). The camera-ready table may differ slightly.
SEMI_PUBLISHED = {"supervised": (94.84, 94.84), "semi-supervised inference": (97.65, 95.30),
                  "soft_kmeans": (97.44, 95.41), "soft_kmeans_cluster": (97.82, 97.29),
                  "masked_soft_kmeans": (97.54, 97.38)}
REFINEMENTS = ("soft_kmeans", "soft_kmeans_cluster", "masked_soft_kmeans")
SEMI_TEST_EPISODES, SEMI_UNLABELED, SEMI_DISTRACTORS, SEMI_FRACTION = 1000, 5, 5, 0.1


def halved_every_2000(optimizer):
    """Adam's step size halved every 2,000 episodes (Snell et al., 2017, Sec. 3.1)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2000, gamma=0.5)


def encoder() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return mlkit.models.Conv4(1, ways=None, filters=64, variant="pool", image_size=28)


class Curve:
    """Validation accuracy against CPU seconds, evaluated from ``fit``'s ``on_step`` and kept in a JSON file
    beside the checkpoint, so that a resumed run keeps the points it already has."""

    def __init__(self, path: Path, families: dict, every: int, tasks: int):
        self.path, self.families, self.every, self.tasks = path, families, every, tasks
        self.points = json.loads(path.read_text()) if path.exists() else []

    def record(self, iteration: int, seconds: float, algorithm) -> None:
        scores = {name: mlkit.evaluate(algorithm, family, tasks=self.tasks, seed=SEED + 2)[0]
                  for name, family in self.families.items()}
        self.points = [p for p in self.points if p["iteration"] < iteration]
        self.points.append({"iteration": iteration, "seconds": seconds, **scores})
        write_json(self.path, self.points)

    def __call__(self, step: mlkit.Step) -> None:
        if step.iteration % self.every == 0:
            self.record(step.iteration, step.seconds, step.algorithm)


def train(algo, family, tag: str, minutes: float, curve: Curve | None = None):
    """Meta-train ``algo`` on ``family`` for ``minutes`` of CPU time, resuming from ``RUNS/tag.pt``."""
    history = mlkit.fit(algo, family, iterations=1_000_000, meta_batch=1, meta_lr=1e-3, device="cpu", seed=SEED,
                        scheduler=halved_every_2000, checkpoint=RUNS / f"{tag}.pt", checkpoint_every=50,
                        minutes=minutes, clock="cpu", on_step=curve)
    if curve is not None and (not curve.points or curve.points[-1]["iteration"] != history.iteration[-1]):
        curve.points = [p for p in curve.points if p["iteration"] <= history.iteration[-1]]
        curve.record(history.iteration[-1], history.seconds, algo)
    return history


# Omniglot ------------------------------------------------------------------------------------------------------
def omniglot(args) -> None:
    train_split, val, test = mlkit.data.Omniglot().split("maml")
    path = RESULTS / "protonet.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for shots in sorted({k for _, k in args.cells}):
        cells = [(n, k) for n, k in args.cells if k == shots]
        if not args.force and all(_row(rows, n, k, args.cpu_minutes) for n, k in cells):
            continue
        algo = mlkit.ProtoNet(encoder())
        tag = f"omniglot-{shots}shot-{args.cpu_minutes:g}cpumin"
        curve = Curve(RUNS / f"{tag}.curve.json",
                      {f"{ways}-way": mlkit.tasks.FewShot(val, ways, shots, CURVE_QUERIES) for ways in (5, 20)},
                      CURVE_EVERY, CURVE_TASKS)
        history = train(algo, mlkit.tasks.FewShot(train_split, 60, shots, 5), tag, args.cpu_minutes, curve)
        for ways, _ in cells:
            accuracy, ci95 = mlkit.evaluate(algo, mlkit.tasks.FewShot(test, ways, shots, TEST_QUERIES),
                                            tasks=TEST_TASKS, meta_batch=50, seed=SEED + 1, progress=True)
            row = {"algorithm": "protonet", "ways": ways, "shots": shots, "accuracy": accuracy, "ci95": ci95,
                   "published": PUBLISHED[(ways, shots)], "source": SOURCE, "protocol": "budget",
                   "cpu_budget_minutes": args.cpu_minutes, "iterations": history.iteration[-1],
                   "cpu_minutes": history.seconds / 60, "curve_split": "val",
                   "curve_iteration": [p["iteration"] for p in curve.points],
                   "curve_seconds": [p["seconds"] for p in curve.points],
                   "curve_accuracy": [p[f"{ways}-way"] for p in curve.points],
                   "training": "60-way episodes, 5 queries per class, meta-batch 1, Adam 1e-3 halved every 2,000",
                   "device": "cpu"}
            def replace(rows, row=row):  # one row per cell and budget
                rows = [r for r in rows if _key(r) != _key(row)] + [row]
                rows.sort(key=lambda r: (r["cpu_budget_minutes"], r["shots"], r["ways"]))
                write_atomic(RESULTS / "protonet.md", omniglot_report(rows))
                return rows
            rows = update_json(path, replace, [])  # other shot counts may run in parallel processes
    print(omniglot_report(rows))


def _key(row):
    return row["ways"], row["shots"], row["cpu_budget_minutes"]


def _row(rows, ways, shots, budget):
    return next((r for r in rows if _key(r) == (ways, shots, budget)), None)


def omniglot_report(rows) -> str:
    table = markdown_table(
        ["CPU budget (min)", "ways", "shots", "accuracy % (ours)", "published", "episodes", "CPU minutes"],
        [[f"{r['cpu_budget_minutes']:g}", r["ways"], r["shots"], f"{r['accuracy']:.2f} ± {r['ci95']:.2f}",
          f"{r['published']:.1f}", r["iterations"], f"{r['cpu_minutes']:.1f}"] for r in rows])
    caption = (f"Prototypical Networks on Omniglot (MAML split), accuracy on {TEST_TASKS} test tasks "
               f"({TEST_QUERIES} queries per class), mean ± 95% CI, beside Snell et al. (2017), Table 1. Training as "
               "in the paper (60-way episodes, 5 queries, training shots = test shots, Adam 1e-3 halved every 2,000 "
               "episodes) but stopped at the CPU budget shown (one thread); the 5-way and 20-way rows of a shot "
               f"count share one training run. Machine: {machine()}, shared with other jobs (a CPU-time budget is less affected by them than wall time).")
    return f"{table}\n\n{caption}\n"


# Semi-supervised -----------------------------------------------------------------------------------------------
def semi(args) -> None:
    train_split, _, test = mlkit.data.Omniglot().split("maml")
    path = RESULTS / "protonet-semi.json"
    tests = {h: mlkit.tasks.FewShot(test, 5, 1, 20 - 1 - SEMI_UNLABELED, unlabeled=SEMI_UNLABELED, distractors=h)
             for h in (0, SEMI_DISTRACTORS)}
    scores_path = RUNS / f"semi-{args.cpu_minutes:g}cpumin.scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}

    def trained(refinement: str | None, distractors: int):
        m = 0 if refinement is None else SEMI_UNLABELED
        family = mlkit.tasks.FewShot(train_split, 5, 1, 1, unlabeled=m, distractors=distractors if m else 0,
                                     labeled_fraction=SEMI_FRACTION, seed=SEED)
        algo = mlkit.ProtoNet(encoder()) if refinement is None else mlkit.SemiProtoNet(encoder(), refinement)
        name = "supervised" if refinement is None else f"{refinement}-H{distractors}"
        return algo, train(algo, family, f"semi-{name}-{args.cpu_minutes:g}cpumin", args.cpu_minutes)

    def score(key: str, algo, distractors: int) -> list[float]:
        if key not in scores or args.force:
            accuracies = episode_accuracies(algo, tests[distractors])
            # Merged under a lock: runs with different --refinements may score in parallel processes.
            scores.update(update_json(scores_path, lambda done: {**done, key: accuracies}, {}))
        return scores[key]

    supervised, supervised_history = trained(None, 0)
    inference = mlkit.SemiProtoNet(encoder(), "soft_kmeans")
    inference.model.load_state_dict(supervised.model.state_dict())
    # One key for both columns: the supervised model ignores unlabelled images, and test episodes with and without
    # distractors share their support and query sets, so its per-episode accuracies are the same.
    runs = [("supervised", None, supervised, supervised_history, h, score("supervised", supervised, h))
            for h in (0, SEMI_DISTRACTORS)]
    runs += [("semi-supervised inference", "soft_kmeans", inference, supervised_history, h,
              score(f"inference-H{h}", inference, h)) for h in (0, SEMI_DISTRACTORS)]
    for refinement in args.refinements:
        for h in (0, SEMI_DISTRACTORS):
            algo, history = trained(refinement, h)
            runs.append((refinement, refinement, algo, history, h, score(f"{refinement}-H{h}", algo, h)))
    baseline, new = torch.tensor(runs[0][5], dtype=torch.float64), []
    for model, refinement, algo, history, h, accuracies in runs:
        values = torch.tensor(accuracies, dtype=torch.float64)
        gain = values - baseline
        row = {"model": model, "refinement": refinement, "distractors": h, "accuracy": values.mean().item(),
               "ci95": _ci95(values), "gain": gain.mean().item(), "gain_ci95": _ci95(gain),
               "published": SEMI_PUBLISHED[model][h > 0], "iterations": history.iteration[-1],
               "cpu_minutes": history.seconds / 60, "test_episodes": len(accuracies),
               "distractor_radius": math.exp(algo.log_radius.item()) if hasattr(algo, "log_radius") else None}
        new.append(row)
    order = ["supervised", "semi-supervised inference", *REFINEMENTS]

    def replace(rows):
        rows = [r for r in rows if (r["model"], r["distractors"]) not in {(n["model"], n["distractors"]) for n in new}]
        rows = sorted(rows + new, key=lambda r: (r["distractors"], order.index(r["model"])))
        write_atomic(RESULTS / "protonet-semi.md", semi_report(rows))
        return rows
    print(semi_report(update_json(path, replace, [])))


def episode_accuracies(algo, family, episodes: int = SEMI_TEST_EPISODES, block: int = 50) -> list[float]:
    """Query accuracy (%) of every one of ``episodes`` test episodes (fixed by the seed), in eval mode."""
    generator, accuracies = torch.Generator().manual_seed(SEED + 1), []
    with torch.no_grad(), algo.evaluating():
        for start in range(0, episodes, block):
            batch = family.sample(min(block, episodes - start), generator=generator)
            predictions = algo.query_predictions(batch).argmax(-1)
            accuracies += ((predictions == batch.query_y).double().mean(1) * 100).tolist()
    return accuracies


def _ci95(values: torch.Tensor) -> float:
    return 1.96 * values.std().item() / math.sqrt(len(values))


def semi_report(rows) -> str:
    table = markdown_table(
        ["model", "distractors", "accuracy % (ours)", "gain over supervised", "published", "episodes", "CPU minutes"],
        [[r["model"], r["distractors"], f"{r['accuracy']:.2f} ± {r['ci95']:.2f}",
          f"{r['gain']:+.2f} ± {r['gain_ci95']:.2f}", f"{r['published']:.2f}", r["iterations"],
          f"{r['cpu_minutes']:.1f}"] for r in rows])
    caption = ("Semi-supervised Omniglot, 5-way 1-shot, 10% of each training class labelled, M = 5 unlabelled images "
               "per class in training and at test, H = 0 or 5 distractor classes, accuracy on "
               f"{SEMI_TEST_EPISODES} test episodes (the same for every model), mean ± 95% CI; the gain is paired on "
               "those episodes. 'published': Ren et al. (2018), Table 1 of the version we could read (100 − error). "
               "'semi-supervised inference' is the supervised model with one soft k-means step at test. Each model "
               f"trained for the CPU minutes shown (one thread). Machine: {machine()}, shared with other jobs.")
    return f"{table}\n\n{caption}\n"


# Speed ----------------------------------------------------------------------------------------------------------
def learn2learn_prototypical_classifier():
    """(learn2learn's ``PrototypicalClassifier`` or None, a description). learn2learn imports torchvision when it is
    imported, and beside the CPU-only torch wheel no torchvision build loads (PyPI's and the PyTorch CPU index's
    0.28.0 both link libc10_cuda). Its ``nn/protonet.py`` needs only torch, so the class is then taken from that file
    of the installed package alone (likewise when one of its many other imports is missing): the code timed is still
    learn2learn's own."""
    try:
        import learn2learn
        from learn2learn.nn import PrototypicalClassifier
        return PrototypicalClassifier, f"learn2learn {learn2learn.__version__}"
    except (ImportError, RuntimeError) as error:  # not installed, or torchvision's compiled operators do not load
        spec = importlib.util.find_spec("learn2learn")
        if spec is None:
            return None, f"not installed: {error}"
        path = Path(spec.submodule_search_locations[0]) / "nn" / "protonet.py"
        module_spec = importlib.util.spec_from_file_location("learn2learn_protonet", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.PrototypicalClassifier, (f"learn2learn {importlib.metadata.version('learn2learn')}, "
                                               f"nn/protonet.py loaded alone (the package's import fails: {error})")


def speed(args) -> None:
    train_split, _, _ = mlkit.data.Omniglot().split("maml")
    settings = [("60-way 1-shot, 5 queries, 1 task (training episode)", 60, 1, 5, 1),
                ("5-way 1-shot, 15 queries, 32 tasks", 5, 1, 15, 32)]
    PrototypicalClassifier, l2l = learn2learn_prototypical_classifier()
    rows = []
    for name, ways, shots, queries, tasks in settings:
        batch = mlkit.tasks.FewShot(train_split, ways, shots, queries).sample(tasks, torch.Generator().manual_seed(SEED))
        algo = mlkit.ProtoNet(encoder())
        params = list(algo.parameters())
        model = algo.model

        def mlkit_step():
            return algo.meta_loss(batch)

        def loop_step():
            losses = []
            for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
                support, query = model(sx), model(qx)
                prototypes = torch.stack([support[sy == c].mean(0) for c in range(ways)])
                losses.append(F.cross_entropy(-((query[:, None] - prototypes[None]) ** 2).sum(-1), qy))
            return torch.stack(losses).mean()

        def l2l_step():
            losses = []
            for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
                classifier = PrototypicalClassifier(model(sx), sy)
                losses.append(F.cross_entropy(classifier(model(qx)), qy))
            return torch.stack(losses).mean()

        peers = {"mlkit ProtoNet.meta_loss": mlkit_step, "plain per-task loop": loop_step}
        if PrototypicalClassifier is not None:
            peers["learn2learn PrototypicalClassifier"] = l2l_step
        reference = _loss_and_grads(mlkit_step, params)
        agreement = {}
        for peer, step in peers.items():
            loss, grads = _loss_and_grads(step, params)
            loss_error = abs(loss - reference[0]) / abs(reference[0])
            grad_error = (_flat(grads) - _flat(reference[1])).norm().item() / _flat(reference[1]).norm().item()
            if loss_error > 1e-5 or grad_error > 1e-4:
                raise AssertionError(f"{peer} disagrees with mlkit on {name}: loss {loss_error:.1e}, grad {grad_error:.1e}")
            agreement[peer] = loss_error, grad_error
        times = _interleaved_cpu_ms(peers, params, args.repeats)
        mine = times["mlkit ProtoNet.meta_loss"]
        for peer, (loss_error, grad_error) in agreement.items():
            rows.append({"setting": name, "implementation": peer, "cpu_ms": statistics.median(times[peer]),
                         "ratio_to_mlkit": statistics.median(t / m for t, m in zip(times[peer], mine)),
                         "cpu_ms_rounds": times[peer], "loss_rel_error": loss_error, "grad_rel_error": grad_error})
        if PrototypicalClassifier is None:
            rows.append({"setting": name, "implementation": "learn2learn PrototypicalClassifier", "cpu_ms": None,
                         "ratio_to_mlkit": None, "note": l2l})
    result = {"machine": machine(), "threads": torch.get_num_threads(), "peer": l2l, "torch": torch.__version__,
              "repeats": args.repeats, "load_average": os.getloadavg(), "rows": rows}
    write_json(RESULTS / "protonet-speed.json", result)
    write_atomic(RESULTS / "protonet-speed.md", speed_report(result))
    print(speed_report(result))


def _loss_and_grads(step, params):
    loss = step()
    return loss.item(), [g.detach() for g in torch.autograd.grad(loss, params, allow_unused=False)]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def _interleaved_cpu_ms(steps: dict, params, repeats: int) -> dict[str, list[float]]:
    """CPU milliseconds of one forward and backward of each step, ``repeats`` rounds after two warm-up rounds.
    The implementations take turns within each round, each one first in turn, so a change in the machine's load
    during the run falls on all of them alike (timed one after the other, the last one measured looked 10% faster
    than the first)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(repeats + 2):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # each one first in turn
            step = steps[name]
            start = time.process_time()
            torch.autograd.grad(step(), params)
            if round_ >= 2:
                times[name].append((time.process_time() - start) * 1000)
    return times


def speed_report(result) -> str:
    table = markdown_table(
        ["batch", "implementation", "CPU ms per meta-iteration", "× mlkit (median of rounds)", "agreement (loss, grad)"],
        [[r["setting"], r["implementation"], "—" if r["cpu_ms"] is None else f"{r['cpu_ms']:.0f}",
          "—" if r.get("ratio_to_mlkit") is None else f"{r['ratio_to_mlkit']:.2f}",
          r.get("note") or f"{r['loss_rel_error']:.0e}, {r['grad_rel_error']:.0e}"] for r in result["rows"]])
    caption = (f"One ProtoNet meta-iteration (forward and backward through Conv4, 64 filters, pool variant, 28x28) "
               f"on the same Omniglot batch, median CPU time on {result['threads']} thread(s) over "
               f"{result['repeats']} rounds in which the implementations take turns, after checking that every "
               f"implementation gives mlkit's loss and gradients; × mlkit is the median of the per-round ratios. Peer: {result['peer']}; torch "
               f"{result['torch']}. Machine: {result['machine']}, load average "
               f"{', '.join(f'{x:.1f}' for x in result['load_average'])} (shared: CPU time is less affected than wall "
               "time, not immune).")
    return f"{table}\n\n{caption}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("omniglot", help="ProtoNet on Omniglot beside Snell et al. (2017)")
    one.add_argument("--cells", default="5w1s,5w5s,20w1s,20w5s", help="comma-separated NwKs cells")
    one.add_argument("--cpu-minutes", type=float, default=10.0, help="CPU minutes of training per shot count")
    one.add_argument("--force", action="store_true", help="redo cells that already have a row")
    two = commands.add_parser("semi", help="semi-supervised ProtoNets beside Ren et al. (2018)")
    two.add_argument("--cpu-minutes", type=float, default=5.0, help="CPU minutes of training per model")
    two.add_argument("--refinements", default=",".join(REFINEMENTS))
    two.add_argument("--force", action="store_true", help="re-evaluate models that already have test scores")
    three = commands.add_parser("speed", help="one meta-iteration: mlkit vs a plain loop vs learn2learn")
    three.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.command == "omniglot":
        try:
            args.cells = [tuple(int(v) for v in c.replace("s", "").split("w")) for c in args.cells.split(",")]
        except ValueError:
            parser.error(f"--cells must look like 5w1s,20w5s, got {args.cells!r}")
        if any(c not in CELLS for c in args.cells):
            parser.error(f"--cells must be among 5w1s, 5w5s, 20w1s, 20w5s, got {args.cells}")
    if args.command == "semi":
        args.refinements = args.refinements.split(",")
        if any(r not in REFINEMENTS for r in args.refinements):
            parser.error(f"--refinements must be among {','.join(REFINEMENTS)}")
    if getattr(args, "cpu_minutes", 1) <= 0 or getattr(args, "repeats", 1) <= 0:
        parser.error("--cpu-minutes and --repeats must be positive")
    torch.set_num_threads(1)
    {"omniglot": omniglot, "semi": semi, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()

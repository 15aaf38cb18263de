"""Few-shot intent detection with a pretrained sentence encoder: pretrain > meta-train > fine-tune (P>M>F) on CLINC150.

    python benchmarks/intents_pretrained.py            # every part: 7 CPU-minutes, plus 1 to embed the texts once
    python benchmarks/intents_pretrained.py --quick    # 60 episodes, short trainings: a check of the pipeline

The three stages of Hu et al. (CVPR 2022), with all-MiniLM-L6-v2 (``mlkit.models.SentenceEncoder``) frozen as the
pretrained part (P), on the same episodes, so that each stage's gain is a paired difference:
- P: nearest centroid on the frozen, L2-normalised embeddings (squared Euclidean distance, i.e. ProtoNet with the
  identity as encoder).
- P>M: + a light head meta-trained as a ProtoNet: h(x) = x + W x + b, W and b zero at the start (so it starts as
  P), trained on episodes of the meta-training intents for a budget of CPU time (Adam 1e-4, one thread); the
  state kept is the one with the best accuracy on validation episodes, evaluated every 250 iterations, the
  untrained identity (iteration 0) among them: early stopping.
- P>M>F: + fine-tuning on each support set: the linear classifier that the prototypes define on the head's
  features (weights 2 c_n, biases -|c_n|^2) trained by gradient descent on the support set's cross-entropy; its
  step size and number of steps are chosen on validation data (0 steps is among the choices).

Protocols:
- Domain split (as benchmarks/intents.py, the same episodes): 6 / 1 / 3 domains, cells 5-way 1-shot, 5-way
  5-shot and 15-way 5-shot (within one test domain), 600 test episodes, 15 queries per intent and 50
  out-of-scope queries per episode; thresholds on 200 validation episodes. The head trains on episodes of the
  90 meta-train intents. The TF-IDF rows are read from benchmarks/results/intents.json (same episodes).
- All 150 intents (the setting of Casanueva et al. 2020, DNNC and CPFT): K = 5 or 10 labelled queries per intent
  drawn from the release's train part, 5 seeds; test on the whole test part (4,500 queries) and the 1,000
  out-of-scope test queries. No other label is used for learning: the head is meta-trained on episodes drawn from
  the 150 x K labelled queries (half support, half query), and fine-tuning uses all of them. The step size and
  steps of fine-tuning and the rejection threshold are chosen on the release's validation part (3,000 queries,
  100 out-of-scope), as a development set.

Out of scope: distance to the nearest prototype for P and P>M, one minus the largest probability for P>M>F;
AUROC, and in-scope accuracy / out-of-scope recall at the threshold that maximises their mean on validation data.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
from mlkit import openset  # noqa: E402
from mlkit.algorithms.protonet import class_means, squared_distances  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, save_figure, write_atomic, write_json  # noqa: E402
from intents import CELLS, QUERIES, SEED, VAL_TASKS, episodes, open_set  # noqa: E402

RUNS = CHECKPOINTS / "intents_pretrained"
META_LR = 1e-4  # the head starts at the identity; larger steps (1e-3) drift away from the pretrained geometry
EVAL_EVERY = 250  # iterations between validation evaluations of the head (early stopping)
FINE_TUNE_GRID = [(lr, steps) for lr in (1.0, 5.0, 20.0) for steps in (0, 10, 30)]
STAGES = {"P": "frozen MiniLM, nearest centroid (P)", "PM": "+ meta-trained head (P>M)",
          "PMF": "+ fine-tuned on the support set (P>M>F)"}


class ResidualHead(nn.Module):
    """h(x) = x + W x + b with W, b zero at the start: the identity until trained."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return x + self.linear(x)


class CachedEmbeddings:
    """``embed(texts)`` from a table of precomputed embeddings (the interface TextDataset.embed needs)."""

    def __init__(self, texts, embeddings):
        self.row, self.embeddings = {t: i for i, t in enumerate(texts)}, embeddings

    def embed(self, texts, progress=True):
        return self.embeddings[[self.row[t] for t in texts]]


def cached_embeddings(clinc) -> dict:
    """``{"texts", "embeddings", "source"}`` of every CLINC150 text and out-of-scope text, encoded once and cached
    on disk (atomically) for every benchmark that uses them."""
    cache = RUNS / "embeddings.pt"
    if not cache.exists():
        encoder = mlkit.models.SentenceEncoder()
        texts = clinc.texts + [t for part in ("train", "val", "test") for t in clinc.out_of_scope[part]]
        stored = {"texts": texts, "embeddings": encoder.embed(texts), "source": encoder.source}
        RUNS.mkdir(parents=True, exist_ok=True)
        torch.save(stored, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    return torch.load(cache)


def embed_all():
    """The CLINC150 splits as datasets of frozen embeddings, and the out-of-scope embeddings."""
    clinc = mlkit.data.CLINC150()
    stored = cached_embeddings(clinc)
    lookup = CachedEmbeddings(stored["texts"], stored["embeddings"])
    splits = dict(zip(("train", "val", "test"), clinc.split("domains", SEED)))
    embedded = {name: part.embed(lookup) for name, part in splits.items()}
    oos = {part: lookup.embed(clinc.out_of_scope[part]) for part in ("train", "val", "test")}
    return clinc, lookup, embedded, oos


def meta_train(tag, dataset, ways, shots, queries, minutes, validation):
    """The head meta-trained for ``minutes`` of CPU time, then the state (the identity at iteration 0 included)
    with the best accuracy on 100 fixed episodes of ``validation`` (evaluated every ``EVAL_EVERY`` iterations):
    early stopping, so the head can only leave the pretrained geometry where validation says it helps."""
    torch.manual_seed(SEED)
    model = mlkit.ProtoNet(ResidualHead(dataset.images.shape[1]))
    val_family = mlkit.tasks.FewShot(validation, ways, shots, queries)
    kept = RUNS / f"{tag}-best.pt"  # the best state so far, saved with the checkpoint so that a resumed run keeps it
    best = torch.load(kept) if kept.exists() else {
        "iteration": 0, "state": copy.deepcopy(model.state_dict()),
        "accuracy": mlkit.evaluate(model, val_family, tasks=VAL_TASKS // 2, seed=SEED + 1)[0]}

    def keep_best(evaluation):  # fit evaluates on the same episodes (seed + 1)
        if evaluation.mean > best["accuracy"]:
            best.update(iteration=evaluation.iteration, accuracy=evaluation.mean,
                        state=copy.deepcopy(model.state_dict()))
            RUNS.mkdir(parents=True, exist_ok=True)
            torch.save(best, kept.with_suffix(".tmp"))
            kept.with_suffix(".tmp").replace(kept)

    history = mlkit.fit(model, mlkit.tasks.FewShot(dataset, ways, shots, queries), iterations=1_000_000,
                        meta_batch=4, meta_lr=META_LR, device="cpu", seed=SEED, checkpoint=RUNS / f"{tag}.pt",
                        checkpoint_every=200, minutes=minutes, clock="cpu", progress=False, eval_every=EVAL_EVERY,
                        eval_tasks=VAL_TASKS // 2, eval_family=val_family, on_eval=keep_best)
    model.load_state_dict(best["state"])
    return model, {"cpu_seconds": round(history.seconds, 1), "iterations": history.iteration[-1],
                   "chosen_iteration": best["iteration"], "validation_accuracy": round(best["accuracy"], 2)}


def fine_tune_logits(head, support_x, support_y, inputs, ways, lr, steps):
    """P>M>F for a batch of tasks: the prototype classifier on the head's features, trained on the support set.

    support_x ``[T, n, d]``, support_y ``[T, n]``, inputs ``[T, m, d]`` -> logits ``[T, m, ways]``.
    """
    with torch.no_grad():
        features, targets = head(support_x), head(inputs)
    prototypes = task_prototypes(features, support_y, ways)
    weight = (2 * prototypes).requires_grad_()
    bias = (-(prototypes ** 2).sum(-1)).requires_grad_()
    for _ in range(steps):
        logits = features @ weight.transpose(1, 2) + bias[:, None]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
        loss = loss / support_y.shape[1]  # each task's mean loss, summed over tasks
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))  # tasks are independent: the sum splits
        with torch.no_grad():
            weight -= lr * grad_w
            bias -= lr * grad_b
    with torch.no_grad():
        return targets @ weight.transpose(1, 2) + bias[:, None]


def episode_logits(stage, head, ds, ways, shots, tasks, seed, oos, within, lr=0.0, steps=0):
    """(query logits [T, n, ways], outlier logits [T, m, ways], labels [T, n]) on the episodes of intents.py."""
    out_q, out_o, labels = [], [], []
    for batch, _, outliers in episodes(ds, ways, shots, tasks, seed, oos, within):
        outlier_x = oos[outliers]
        if stage == "PMF":
            logits = fine_tune_logits(head, batch.support_x, batch.support_y,
                                      torch.cat([batch.query_x, outlier_x], 1), ways, lr, steps)
            q, o = logits[:, :batch.query_x.shape[1]], logits[:, batch.query_x.shape[1]:]
        else:
            prototypes = mlkit.ProtoNet(nn.Identity() if stage == "P" else head).eval()
            q, o = openset.open_set_logits(prototypes, batch, outlier_x)
        out_q.append(q), out_o.append(o), labels.append(batch.query_y)
    return torch.cat(out_q), torch.cat(out_o), torch.cat(labels)


def metrics(val, test, kind):
    """Per-episode accuracy and the open-set figures, with the threshold fixed on ``val``."""
    _, correct, s_in, s_out, auroc, in_acc, recall = open_set(val, test, kind)
    at_recall = in_scope_at_recall(s_in, correct, s_out, 0.6)
    return {"per_episode": (correct.double().mean(1) * 100), "auroc": auroc, "in_scope": in_acc * 100,
            "recall": recall * 100, "in_scope_at_recall60": at_recall * 100}


def in_scope_at_recall(s_in, correct, s_out, recall):
    """In-scope accuracy per episode at the largest threshold that still rejects ``recall`` of the outliers."""
    out = []
    for a, c, b in zip(s_in, correct, s_out):
        threshold = torch.quantile(b.double(), 1 - recall).item()
        out.append(((a < threshold) & c).double().mean())
    return torch.stack(out)


def stat(values):
    values = values.double()
    ci = 1.96 * values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": values.mean().item(), "ci95": ci}


def choose_fine_tuning(head, ds, ways, shots, oos, within, tasks):
    best = None
    for lr, steps in FINE_TUNE_GRID:
        q, _, y = episode_logits("PMF", head, ds, ways, shots, tasks, SEED + 5, oos, within, lr, steps)
        accuracy = (q.argmax(-1) == y).double().mean().item()
        if best is None or accuracy > best[0] + 1e-9:
            best = (accuracy, lr, steps)
    return best[1], best[2]


def domain_split(embedded, oos, tasks, minutes):
    rows = []
    for ways, shots in CELLS:
        cell, within = f"{ways}-way {shots}-shot", ways == 15
        t0 = time.process_time()
        head, training = meta_train(f"head-{ways}w{shots}s-{minutes:g}-early", embedded["train"], ways, shots, QUERIES,
                                    minutes, embedded["val"])
        lr, steps = choose_fine_tuning(head.model, embedded["val"], ways, shots, oos["val"], within, 100)
        results = {}
        for stage, kind in (("P", "distance"), ("PM", "distance"), ("PMF", "softmax")):
            args = (lr, steps) if stage == "PMF" else ()
            val = episode_logits(stage, head.model, embedded["val"], ways, shots, VAL_TASKS, SEED + 1, oos["val"], within, *args)
            test = episode_logits(stage, head.model, embedded["test"], ways, shots, tasks, 1234, oos["test"], within, *args)
            results[stage] = metrics(val, test, kind)
        rows += rows_of(cell, results, {"P": None, "PM": training, "PMF": dict(training, lr=lr, steps=steps)},
                        time.process_time() - t0)
        print(cell, {s: round(r["per_episode"].mean().item(), 2) for s, r in results.items()}, flush=True)
    return rows


def rows_of(cell, results, training, cpu_seconds):
    rows, previous = [], None
    for stage, r in results.items():
        row = {"cell": cell, "stage": stage, "name": STAGES[stage], "accuracy": stat(r["per_episode"]),
               "auroc": stat(r["auroc"]), "in_scope_accuracy": stat(r["in_scope"]), "oos_recall": stat(r["recall"]),
               "in_scope_at_recall60": stat(r["in_scope_at_recall60"]), "training": training[stage],
               "episodes": len(r["per_episode"])}
        if previous is not None:
            row["gain"] = stat(r["per_episode"] - previous)
        previous = r["per_episode"]
        rows.append(row)
    rows[-1]["cpu_seconds"] = round(cpu_seconds, 1)
    return rows


def all_intents(clinc, lookup, oos, seeds, minutes):
    """150-way K-shot: K labelled queries per intent from the train part, tested on the whole test part."""
    x, y = lookup.embed(clinc.texts, progress=False), clinc.labels
    val_rows, test_rows = (clinc.part == 1).nonzero().flatten(), (clinc.part == 2).nonzero().flatten()
    validation = mlkit.data.TextDataset([clinc.texts[i] for i in val_rows.tolist()], y[val_rows], clinc.classes,
                                        clinc.domains, x[val_rows])
    rows = []
    for shots in (5, 10):
        per_seed, kept = {stage: [] for stage in STAGES}, []
        t0 = time.process_time()
        for seed in range(seeds):
            chosen = labelled_queries(clinc, shots, seed)
            support = mlkit.data.TextDataset([clinc.texts[i] for i in chosen.tolist()], y[chosen], clinc.classes,
                                             clinc.domains, x[chosen])
            head, training = meta_train(f"head-150w{shots}s-seed{seed}-{minutes:g}-early", support, 30, shots // 2,
                                        shots - shots // 2, minutes, validation)
            sx, sy = x[chosen][None], y[chosen][None]
            if seed == 0:  # fine-tuning's settings, chosen once on the validation part
                lr, steps = max(FINE_TUNE_GRID, key=lambda setting: validation_accuracy(
                    head.model, sx, sy, x[val_rows], y[val_rows], setting))
            for stage in STAGES:
                val = full_logits(stage, head.model, sx, sy, torch.cat([x[val_rows], oos["val"]])[None], lr, steps)
                test = full_logits(stage, head.model, sx, sy, torch.cat([x[test_rows], oos["test"]])[None], lr, steps)
                nv, nt = len(val_rows), len(test_rows)
                kind = "softmax" if stage == "PMF" else "distance"
                per_seed[stage].append(metrics((val[:, :nv], val[:, nv:], y[val_rows][None]),
                                               (test[:, :nt], test[:, nt:], y[test_rows][None]), kind))
            kept.append((training["chosen_iteration"], training["iterations"]))
        training = dict(training, chosen_iteration=[k for k, _ in kept], iterations=[n for _, n in kept])  # per seed
        trainings = {"P": None, "PM": training, "PMF": dict(training, lr=lr, steps=steps)}
        rows += paired_gains([seed_row(f"150-way {shots}-shot", stage, runs, trainings[stage])
                              for stage, runs in per_seed.items()])
        rows[-1]["cpu_seconds"] = round(time.process_time() - t0, 1)
        print(rows[-1]["cell"], {r["stage"]: round(r["accuracy"]["mean"], 2) for r in rows[-3:]}, flush=True)
    return rows


def labelled_queries(clinc, shots, seed):
    """Indices of ``shots`` queries per intent, drawn from the release's train part with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    train_rows = (clinc.part == 0).nonzero().flatten()
    per_intent = (train_rows[clinc.labels[train_rows] == k] for k in range(len(clinc.classes)))
    return torch.cat([rows[torch.randperm(len(rows), generator=generator)[:shots]] for rows in per_intent])


def seed_row(cell, stage, runs, training):
    """A 150-way row: mean and standard deviation over the draws of the labelled queries."""
    def over_seeds(key):
        values = torch.cat([r[key] for r in runs]).double()
        return {"mean": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0}

    accuracy = over_seeds("per_episode")
    accuracy["runs"] = torch.cat([r["per_episode"] for r in runs]).tolist()
    return {"cell": cell, "stage": stage, "name": STAGES[stage], "seeds": len(runs), "accuracy": accuracy,
            "auroc": over_seeds("auroc"), "in_scope_accuracy": over_seeds("in_scope"),
            "oos_recall": over_seeds("recall"), "in_scope_at_recall60": over_seeds("in_scope_at_recall60"),
            "training": training}


def paired_gains(cell_rows):
    """``cell_rows`` (one per stage, in order) with each row's ``gain`` over the row above, paired per draw."""
    runs = lambda row: torch.tensor(row["accuracy"]["runs"], dtype=torch.float64)
    for previous, row in zip(cell_rows, cell_rows[1:]):
        gain = runs(row) - runs(previous)
        row["gain"] = {"mean": gain.mean().item(), "std": gain.std().item() if len(gain) > 1 else 0.0}
    return cell_rows


def validation_accuracy(head, sx, sy, val_x, val_y, setting):
    logits = fine_tune_logits(head, sx, sy, val_x[None], 150, *setting)
    return (logits.argmax(-1) == val_y).double().mean().item(), -setting[1]  # ties: fewer steps


def full_logits(stage, head, sx, sy, inputs, lr, steps):
    if stage == "PMF":
        return fine_tune_logits(head, sx, sy, inputs, 150, lr, steps)
    encoder = nn.Identity() if stage == "P" else head
    with torch.no_grad():
        prototypes = task_prototypes(encoder(sx), sy, 150)
        return -torch.vmap(squared_distances)(encoder(inputs), prototypes)


def task_prototypes(features, labels, ways):
    """ProtoNet's class means for a batch of tasks: features ``[T, n, d]``, labels ``[T, n]`` -> ``[T, ways, d]``."""
    return torch.vmap(class_means, in_dims=(0, 0, None))(features, labels, ways)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="60 test episodes, 2 seeds, 0.1 CPU-minute trainings (default: 600, 5, 0.5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks, seeds, minutes = (60, 2, 0.1) if args.quick else (600, 5, 0.5)
    began = time.process_time()
    clinc, lookup, embedded, oos = embed_all()
    rows = domain_split(embedded, oos, tasks, minutes) + all_intents(clinc, lookup, oos, seeds, minutes)
    tfidf = [r for r in json.loads((RESULTS / "intents.json").read_text())["rows"] if r["method"].startswith("tfidf")]
    summary = {"settings": {"test_tasks": tasks, "val_tasks": VAL_TASKS, "queries": QUERIES, "seeds": seeds,
                            "minutes_per_training": minutes, "clock": "cpu", "threads": 1,
                            "fine_tune_grid": FINE_TUNE_GRID, "encoder": "sentence-transformers/all-MiniLM-L6-v2"},
               "stages": STAGES, "rows": rows, "tfidf": tfidf, "machine": machine(),
               "total_cpu_minutes": round((time.process_time() - began) / 60, 1)}
    name = "intents_pretrained-quick" if args.quick else "intents_pretrained"
    write_json(RESULTS / f"{name}.json", summary)
    write_markdown(summary, name)


def kept_of(training):
    """"kept of run" iterations of the head, one pair per seed in the 150-way cells."""
    pairs = zip(*(t if isinstance(t, list) else [t] for t in (training["chosen_iteration"], training["iterations"])))
    return ", ".join(f"{k} of {n}" for k, n in pairs) + " it."


STAGE_COLUMNS = ["cell", "stage", "accuracy %", "gain over the stage above (paired)", "OOS AUROC",
                 "in-scope acc. at threshold %", "OOS recall %", "in-scope acc. at OOS recall 60 %"]


def spread(m):
    """``mean ± ci95`` (episodes) or ``mean ± std`` (draws), one decimal."""
    return f"{m['mean']:.1f} ± {m.get('ci95', m.get('std', 0)):.1f}"


def stage_cells(r):
    """A stage row's cells under ``STAGE_COLUMNS``."""
    return [r["cell"], r["name"], spread(r["accuracy"]), spread(r["gain"]) if "gain" in r else "",
            f"{r['auroc']['mean']:.3f}", spread(r["in_scope_accuracy"]), spread(r["oos_recall"]),
            spread(r["in_scope_at_recall60"])]


def write_markdown(summary, name):
    table = [stage_cells(r) + ["" if r["training"] is None else kept_of(r["training"])] for r in summary["rows"]]
    table += [[r["cell"], r["name"], spread(r["accuracy"]), "", f"{r['auroc']['mean']:.3f}",
               spread(r["in_scope_accuracy"]), spread(r["oos_recall"]), "", "per episode"] for r in summary["tfidf"]]
    s = summary["settings"]
    text = ("# Few-shot intent detection with a pretrained sentence encoder (P>M>F), CLINC150\n\n"
            + markdown_table(STAGE_COLUMNS + ["head training (kept of run)"], table)
            + f"\n\nDomain-split cells: {s['test_tasks']} test episodes (mean ± 95% CI; gains are paired on the same "
            f"episodes); 150-way cells: {s['seeds']} seeds (mean ± std over seeds). Heads meta-trained for "
            f"{s['minutes_per_training']:g} CPU-minute on one thread. TF-IDF rows from intents.json, same episodes. "
            f"See the docstring of benchmarks/intents_pretrained.py. Total {summary['total_cpu_minutes']} CPU-minutes. "
            f"Machine: {summary['machine']}.\n")
    write_atomic(RESULTS / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()

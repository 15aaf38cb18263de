"""Few-shot intent detection on CLINC150, with out-of-scope queries: meta-learning against per-task baselines.

    python benchmarks/intents.py                  # every cell, 1 CPU-minute of training per algorithm and cell
    python benchmarks/intents.py --minutes 0.1 --tasks 50    # a quick check of the whole pipeline

Data: CLINC150 (Larson et al., 2019), the 10 domains shuffled with seed 0 into 6 meta-train, 1 validation and 3
meta-test domains (``CLINC150.split("domains", 0)``); every intent keeps all its 150 queries. Inputs: the hashed
word uni/bigram and character-trigram tokenizer of mlkit.data, fitted on the meta-train texts only.

Cells: 5-way 1-shot and 5-way 5-shot over the 45 test intents, and 15-way 5-shot within one test domain (all of
its 15 intents; 200 episodes per domain). Every episode has 15 queries per intent and 50 out-of-scope queries
drawn from the release's 1,000 out-of-scope test queries. 600 test episodes per cell, the same ones for every
method; mean ± 95% CI (1.96 std / sqrt(600)).

Algorithms (TextEncoder: 64-d embedding bag + 128-unit ReLU layer, trained from scratch on one thread, stopped
after a budget of CPU time, ``fit(..., minutes=..., clock="cpu")``):
- ProtoNet: episodes of the cell's ways and shots, 15 queries per class, 4 episodes per step, Adam 1e-3.
- MAML, first order: a head of the cell's ways, 5 inner steps at α = 0.5, 8 tasks per step, Adam 1e-3. Second order
  once, in the 5-way 1-shot cell, with the same budget.
- Joint training + fine-tuned head: one classifier over all 90 meta-train intents (one run shared by the cells);
  at test a zero-initialised head of the cell's ways is fitted on the support set by gradient descent on the frozen
  features, with its step size and number of steps chosen on validation episodes.
Baselines, fitted per episode on its support set with scikit-learn: TF-IDF (word 1-2-grams + character 3-grams
within words, sublinear tf) with logistic regression (default C = 1) and with a nearest centroid (cosine).

Out of scope: each query's rejection score is its distance to the nearest prototype (ProtoNet, nearest centroid),
or one minus its largest class probability (MAML, fine-tuned head, logistic regression). AUROC per episode
(out-of-scope queries positive), and in-scope accuracy and out-of-scope recall at one threshold per method and
cell, fixed on 200 validation episodes (the validation domain's intents, the 100 out-of-scope validation
queries) to maximise their mean.
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
import mlkit  # noqa: E402
import mlkit.data  # noqa: E402
from mlkit import openset  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, save_figure, write_atomic, write_json  # noqa: E402

SEED = 0
RUNS = CHECKPOINTS / "intents"
CELLS = ((5, 1), (5, 5), (15, 5))
QUERIES, OOS_PER_EPISODE, VAL_TASKS, BLOCK = 15, 50, 200, 100
DIM, HIDDEN = 64, [128]
MAML_INNER_LR, MAML_STEPS = 0.5, 5
# A published figure with a pretrained language model, for context only: another protocol (see the source).
PUBLISHED = [
    {"source": "Zhang et al., 2020 (DNNC, EMNLP), example run in the README of the authors' code "
               "(salesforce/DNNC-few-shot-intent)",
     "setting": "CLINC150 banking domain alone (15 intents, 5-shot), RoBERTa-base pretrained on NLI data and "
                "fine-tuned as a pairwise nearest-neighbour classifier, validation set, 5 trials, best threshold",
     "figure": "in-domain accuracy 91.9% (std 2.8), out-of-scope recall 97.6% (std 0.9)"},
]
NAMES = {"protonet": "ProtoNet", "maml": "MAML (first order)", "maml2": "MAML (second order)",
         "joint": "joint training + fine-tuned head", "tfidf_lr": "TF-IDF + logistic regression",
         "tfidf_nc": "TF-IDF nearest centroid"}


class GlobalLabels:
    """Episodes of a FewShot family labelled with their dataset classes, for training one classifier of all classes."""

    def __init__(self, family: mlkit.tasks.FewShot):
        self.family = family

    def sample(self, tasks, generator=None, device=None):
        b = self.family.sample(tasks, generator=generator)
        classes = b.info["classes"]
        batch = mlkit.TaskBatch(b.support_x, classes.gather(1, b.support_y), b.query_x, classes.gather(1, b.query_y),
                                b.info)
        return batch if device is None else batch.to(device)


def load():
    data = mlkit.data.CLINC150()
    train, val, test = data.split("domains", SEED)
    tokenizer = mlkit.data.HashedNgrams().fit(train.texts)
    width = int(max(len(tokenizer.ids(t)) for t in data.texts + sum(data.out_of_scope.values(), [])))
    enc = {name: ds.encode(tokenizer, width) for name, ds in (("train", train), ("val", val), ("test", test))}
    oos = {part: (texts, tokenizer.encode(texts, width)[0]) for part, texts in data.out_of_scope.items()}
    return data, tokenizer, enc, oos


def episodes(ds, ways, shots, tasks, seed, oos_ids, within_domain):
    """``tasks`` fixed episodes of ``ds`` (each with OOS_PER_EPISODE out-of-scope ids), in blocks of BLOCK:
    yields (batch, dataset the indices refer to, outlier indices [tasks, m])."""
    generator = torch.Generator().manual_seed(seed)
    if within_domain:
        domains = sorted(set(ds.domains))
        parts = [(ds.domain(d), tasks // len(domains) + (i < tasks % len(domains))) for i, d in enumerate(domains)]
    else:
        parts = [(ds, tasks)]
    for part, n in parts:
        family = mlkit.tasks.FewShot(part, ways, shots, QUERIES)
        drawn = 0
        while drawn < n:
            batch = family.sample(min(BLOCK, n - drawn), generator=generator)
            drawn += batch.tasks
            outliers = torch.rand(batch.tasks, oos_ids.shape[0], generator=generator).argsort(1)[:, :OOS_PER_EPISODE]
            yield batch, part, outliers


def episode_texts(part, batch, shots):
    images = batch.info["images"]
    support = [[part.texts[i] for i in row[:, :shots].flatten().tolist()] for row in images]
    query = [[part.texts[i] for i in row[:, shots:].flatten().tolist()] for row in images]
    return support, query


def sklearn_scores(kind, support, support_y, texts):
    """Per-episode baseline: class probabilities or minus cosine distances ``[n, ways]`` of ``texts``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True))
    xs = vectorizer.fit_transform(support)
    xq = vectorizer.transform(texts)
    if kind == "tfidf_lr":
        model = LogisticRegression(max_iter=1000).fit(xs, support_y)
        return torch.as_tensor(model.predict_log_proba(xq))  # log-probabilities: softmax recovers the probabilities
    ways = int(support_y.max()) + 1
    xs = xs.toarray()
    centroids = np.stack([xs[support_y == c].mean(0) for c in range(ways)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    xq = xq.toarray()
    xq /= np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)
    return torch.as_tensor(xq @ centroids.T - 1)  # minus the cosine distance: the nearest centroid has the largest


def run_method(method, model, ds, ways, shots, tasks, seed, oos, within_domain, steps=None, inner_lr=None):
    """Logits of every episode: (query logits [T, n, ways], outlier logits [T, m, ways], query labels [T, n])."""
    texts, oos_ids = oos
    out_q, out_o, labels = [], [], []
    for batch, part, outliers in episodes(ds, ways, shots, tasks, seed, oos_ids, within_domain):
        if method in ("tfidf_lr", "tfidf_nc"):
            support, query = episode_texts(part, batch, shots)
            for t in range(batch.tasks):
                y = batch.support_y[t].numpy()
                logits = sklearn_scores(method, support[t], y, query[t] + [texts[i] for i in outliers[t].tolist()])
                out_q.append(logits[:len(query[t])])
                out_o.append(logits[len(query[t]):])
        else:
            for start in range(0, batch.tasks, 20):
                sub = batch[start:start + 20]
                q, o = openset.open_set_logits(model, sub, oos_ids[outliers[start:start + 20]], steps, inner_lr)
                out_q.extend(q)
                out_o.extend(o)
        labels.extend(batch.query_y)
    return torch.stack(out_q), torch.stack(out_o), torch.stack(labels)


def kind_of(method):
    return "distance" if method in ("protonet", "tfidf_nc") else "softmax"


def open_set(val, test, kind):
    """Per-episode open-set figures of test logits, the rejection threshold fixed on the validation logits.

    ``val`` and ``test`` are (query logits [T, n, ways], outlier logits [T, m, ways], labels [T, n]); returns
    the threshold, ``correct [T, n]``, the rejection scores of queries and outliers, and ``auroc``, ``in_acc``,
    ``recall`` per episode.
    """
    vq, vo, vy = val
    threshold = openset.fit_threshold(openset.rejection_scores(vq, kind).flatten(),
                                      (vq.argmax(-1) == vy).flatten(), openset.rejection_scores(vo, kind).flatten())
    q, o, y = test
    correct = q.argmax(-1) == y
    in_scores, out_scores = openset.rejection_scores(q, kind), openset.rejection_scores(o, kind)
    positive = torch.cat([torch.zeros_like(in_scores, dtype=torch.bool), torch.ones_like(out_scores, dtype=torch.bool)], 1)
    auroc = openset.auroc(torch.cat([in_scores, out_scores], 1), positive)
    in_acc, recall = openset.accuracy_at(in_scores, correct, out_scores, threshold)
    return threshold, correct, in_scores, out_scores, auroc, in_acc, recall


def score(method, val, test):
    """Per-cell metrics of a method from its validation and test logits."""
    threshold, correct, in_scores, out_scores, auroc, in_acc, recall = open_set(val, test, kind_of(method))

    def stat(values):
        values = values.double()
        return {"mean": values.mean().item(), "ci95": 1.96 * values.std().item() / math.sqrt(len(values))}

    pooled = torch.cat([in_scores.flatten(), out_scores.flatten()])
    fpr, tpr = openset.roc_curve(pooled, torch.cat([torch.zeros(in_scores.numel(), dtype=torch.bool),
                                                    torch.ones(out_scores.numel(), dtype=torch.bool)]))
    keep = torch.linspace(0, len(fpr) - 1, min(101, len(fpr))).round().long()
    return {"accuracy": stat(correct.double().mean(1) * 100), "auroc": stat(auroc),
            "in_scope_accuracy": stat(in_acc * 100), "oos_recall": stat(recall * 100), "threshold": threshold,
            "roc": {"fpr": [round(v, 4) for v in fpr[keep].tolist()], "tpr": [round(v, 4) for v in tpr[keep].tolist()]},
            "tasks": len(correct)}


def train(tag, algorithm, family, meta_batch, minutes):
    torch.manual_seed(SEED)
    history = mlkit.fit(algorithm, family, iterations=1_000_000, meta_batch=meta_batch, meta_lr=1e-3, device="cpu",
                        seed=SEED, checkpoint=RUNS / f"{tag}.pt", checkpoint_every=100, minutes=minutes, clock="cpu",
                        progress=False)
    return {"cpu_seconds": round(history.seconds, 1), "iterations": history.iteration[-1],
            "seconds_per_iteration": round(history.seconds / history.iteration[-1], 4)}


def tune_head(joint_body, ways, shots, enc, oos):
    """Step size and steps of the fine-tuned head, chosen by validation accuracy (100 episodes)."""
    best = None
    for lr in (0.1, 1.0, 10.0):
        for steps in (20, 100):
            model = head_model(joint_body, ways)
            ft = mlkit.JointTraining(model, "cross_entropy", inner_lr=lr, inner_steps=steps)
            q, _, y = run_method("joint", ft, enc["val"], ways, shots, 100, SEED + 5, oos, ways == 15)
            accuracy = (q.argmax(-1) == y).double().mean().item()
            if best is None or accuracy > best[0]:
                best = (accuracy, lr, steps)
    return best[1], best[2]


def head_model(joint_body, ways):
    model = mlkit.models.TextEncoder(joint_body.vocab_size, DIM, HIDDEN, ways=ways)
    state = {k: v for k, v in joint_body.state_dict().items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="CPU-minutes of training per algorithm and cell")
    parser.add_argument("--tasks", type=int, default=600, help="test episodes per cell")
    parser.add_argument("--cells", default="5w1s,5w5s,15w5s",
                        help="cells to run, or 'none' to only gather the finished ones (each cell's rows are kept "
                             "under benchmarks/checkpoints/intents/, so cells may run in separate processes); the "
                             "results hold every finished cell and name the missing ones")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite intents.md and intents.png from intents.json (and the quoted figures)")
    args = parser.parse_args()
    if args.report_only:
        summary = json.loads((RESULTS / "intents.json").read_text())
        summary["published"] = PUBLISHED
        write_json(RESULTS / "intents.json", summary)
        write_markdown(summary)
        plot(summary)
        return
    torch.set_num_threads(1)
    data, tokenizer, enc, oos = load()
    run = f"{args.minutes:g}min"
    rows, curves, training = [], {}, {}

    torch.manual_seed(SEED)
    joint_model = mlkit.models.TextEncoder(tokenizer.vocab_size, DIM, HIDDEN, ways=len(enc["train"].classes))
    joint = mlkit.JointTraining(joint_model, "cross_entropy")
    training["joint"] = train(f"joint-{run}", joint, GlobalLabels(mlkit.tasks.FewShot(enc["train"], 30, 5, 5)), 2,
                              args.minutes)
    print("joint", training["joint"], flush=True)

    wanted = set(args.cells.split(","))
    for ways, shots in CELLS:
        cell = f"{ways}-way {shots}-shot"
        kept = RUNS / f"rows-{ways}w{shots}s-{run}-{args.tasks}.json"
        if f"{ways}w{shots}s" not in wanted or kept.exists():
            continue
        # Methods finished in an interrupted run of this cell are kept in a partial file and not run again.
        partial = kept.with_name(kept.stem + ".partial.json")
        done = json.loads(partial.read_text()) if partial.exists() else {"rows": [], "curves": {}, "cpu_seconds": 0.0}
        cell_rows, cell_curves = done["rows"], done["curves"]
        began_cell = time.process_time() - done["cpu_seconds"]
        within = ways == 15
        methods = {}
        torch.manual_seed(SEED)
        proto = mlkit.ProtoNet(mlkit.models.TextEncoder(tokenizer.vocab_size, DIM, HIDDEN))
        family = mlkit.tasks.FewShot(enc["train"], ways, shots, QUERIES)
        info = {"protonet": train(f"protonet-{ways}w{shots}s-{run}", proto, family, 4, args.minutes)}
        methods["protonet"] = (proto, None, None)
        orders = [("maml", True)] + ([("maml2", False)] if (ways, shots) == (5, 1) else [])
        for name, first_order in orders:
            torch.manual_seed(SEED)
            maml = mlkit.MAML(mlkit.models.TextEncoder(tokenizer.vocab_size, DIM, HIDDEN, ways=ways), "cross_entropy",
                              inner_lr=MAML_INNER_LR, inner_steps=MAML_STEPS, first_order=first_order)
            info[name] = train(f"{name}-{ways}w{shots}s-{run}", maml, family, 8, args.minutes)
            methods[name] = (maml, None, None)
        lr, steps = tune_head(joint_model, ways, shots, enc, oos["val"])
        info["joint"] = dict(training["joint"], fine_tune={"inner_lr": lr, "steps": steps})
        methods["joint"] = (mlkit.JointTraining(head_model(joint_model, ways), "cross_entropy", inner_lr=lr,
                                                inner_steps=steps), None, None)
        methods["tfidf_lr"] = methods["tfidf_nc"] = (None, None, None)
        print(cell, info, flush=True)
        for method, (model, steps_, lr_) in methods.items():
            if any(r["method"] == method for r in cell_rows):
                continue
            t0 = time.process_time()
            val = run_method(method, model, enc["val"], ways, shots, VAL_TASKS, SEED + 1, oos["val"], within)
            test = run_method(method, model, enc["test"], ways, shots, args.tasks, 1234, oos["test"], within)
            result = score(method, val, test)
            curve = result.pop("roc")
            if (ways, shots) == (5, 5):
                cell_curves[method] = curve
            cell_rows.append({"cell": cell, "ways": ways, "shots": shots, "method": method, "name": NAMES[method],
                         **result, "training": info.get(method),
                         "eval_cpu_seconds": round(time.process_time() - t0, 1)})
            print(cell, NAMES[method], f"{result['accuracy']['mean']:.2f} ± {result['accuracy']['ci95']:.2f}",
                  f"AUROC {result['auroc']['mean']:.3f}", f"eval {time.process_time() - t0:.0f} CPU-s", flush=True)
            write_json(partial, {"rows": cell_rows, "curves": cell_curves,
                                 "cpu_seconds": time.process_time() - began_cell})
        order = list(methods)
        cell_rows.sort(key=lambda r: order.index(r["method"]))
        write_json(kept, {"rows": cell_rows, "curves": cell_curves,
                          "cpu_minutes": round((time.process_time() - began_cell) / 60, 1)})
        partial.unlink()

    parts = {f"{w}-way {k}-shot": RUNS / f"rows-{w}w{k}s-{run}-{args.tasks}.json" for w, k in CELLS}
    missing = [cell for cell, path in parts.items() if not path.exists()]
    if missing:
        print("cells not finished:", missing, "- the results below leave them out", flush=True)
    if len(missing) == len(parts):
        return
    for path in (p for p in parts.values() if p.exists()):
        part = json.loads(path.read_text())
        rows += part["rows"]
        curves.update(part["curves"])

    summary = {"settings": {"split": "domains, seed 0: 6 / 1 / 3", "train_domains": sorted(set(enc["train"].domains)),
                            "val_domains": sorted(set(enc["val"].domains)),
                            "test_domains": sorted(set(enc["test"].domains)),
                            "minutes_per_training": args.minutes, "clock": "cpu", "threads": 1,
                            "test_tasks": args.tasks, "val_tasks": VAL_TASKS, "queries": QUERIES,
                            "oos_per_episode": OOS_PER_EPISODE, "vocab_size": tokenizer.vocab_size,
                            "encoder": {"dim": DIM, "hidden": HIDDEN},
                            "maml": {"inner_lr": MAML_INNER_LR, "inner_steps": MAML_STEPS}},
               "names": NAMES, "rows": rows, "missing_cells": missing, "roc_5way_5shot": curves, "published": PUBLISHED,
               "machine": machine(), "total_cpu_minutes": round(total_cpu(rows) / 60, 1)}
    write_json(RESULTS / "intents.json", summary)
    write_markdown(summary)
    plot(summary)


def total_cpu(rows):
    """CPU seconds of every training (the joint model once) and every evaluation of the rows."""
    trainings = {}
    for r in rows:
        if r["training"] is not None:
            key = "joint" if r["method"] == "joint" else (r["cell"], r["method"])
            trainings[key] = r["training"]["cpu_seconds"]
    return sum(trainings.values()) + sum(r["eval_cpu_seconds"] for r in rows)


def write_markdown(summary):
    table = []
    for r in summary["rows"]:
        t = r["training"]
        table.append([r["cell"], r["name"], f"{r['accuracy']['mean']:.1f} ± {r['accuracy']['ci95']:.1f}",
                      f"{r['auroc']['mean']:.3f} ± {r['auroc']['ci95']:.3f}",
                      f"{r['in_scope_accuracy']['mean']:.1f} ± {r['in_scope_accuracy']['ci95']:.1f}",
                      f"{r['oos_recall']['mean']:.1f} ± {r['oos_recall']['ci95']:.1f}",
                      "per episode" if t is None else f"{t['cpu_seconds'] / 60:.1f} ({t['iterations']} it.)"])
    s = summary["settings"]
    text = ("# Few-shot intent detection on CLINC150 with out-of-scope queries\n\n"
            + markdown_table(["cell", "method", "accuracy %", "OOS AUROC", "in-scope acc. at threshold %",
                              "OOS recall %", "training CPU-min"], table)
            + f"\n\nMeta-test domains {', '.join(s['test_domains'])}; validation {', '.join(s['val_domains'])}; "
            f"meta-train {', '.join(s['train_domains'])}. {s['test_tasks']} test episodes per cell (mean ± 95% CI), "
            f"{s['queries']} queries per intent and {s['oos_per_episode']} out-of-scope queries per episode; "
            f"thresholds fixed on {s['val_tasks']} validation episodes. Training budget: {s['minutes_per_training']:g} "
            "CPU-minutes per algorithm and cell on one thread (the joint model is trained once for all cells). "
            "No pretrained language model is used; the encoder is trained from scratch on the 90 meta-train intents. "
            "See the docstring of benchmarks/intents.py for the protocol."
            + (f" Not run within the time available: {', '.join(summary['missing_cells'])}."
               if summary.get("missing_cells") else "") + "\n\n"
            "Published figures with pretrained language models, for context only (other protocols):\n\n"
            + "\n".join(f"- {p['source']}: {p['setting']}: {p['figure']}." for p in summary["published"])
            + f"\n\nTotal: {summary['total_cpu_minutes']} CPU-minutes of training and evaluation (baselines included); "
            "the cells ran in separate processes on a shared machine. "
            f"Machine: {summary['machine']}.\n")
    write_atomic(RESULTS / "intents.md", text)


def plot(summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(r["cell"] for r in summary["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        for c, cell in enumerate(cells):
            row = next((r for r in summary["rows"] if r["cell"] == cell and r["method"] == method), None)
            if row is None:
                continue
            ax.bar(c + (m - (len(methods) - 1) / 2) * width, row["accuracy"]["mean"], width,
                   yerr=row["accuracy"]["ci95"], color=f"C{m}", label=summary["names"][method] if c == 0 else None)
    ax.set_xticks(range(len(cells)), cells)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_figure(fig, RESULTS / "intents.png", dpi=100)


if __name__ == "__main__":
    main()

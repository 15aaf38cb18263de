"""P>M>F with the sentence encoder itself trained: 150-way K-shot intent detection on CLINC150.

    python benchmarks/intents_finetune.py            # 5 seeds x K = 5, 10: about 50 minutes on 2 CPU cores
    python benchmarks/intents_finetune.py --quick    # 1 seed, K = 5, short stages: a check of the pipeline

The protocol of Casanueva et al. 2020, DNNC and CPFT: K labelled queries per intent drawn from the release's
train part (``intents_pretrained.labelled_queries``, the same draws), tested on the whole test part (4,500
queries) and its 1,000 out-of-scope queries. Unlike ``intents_pretrained.py`` (a light head over frozen
embeddings), every stage here trains the whole all-MiniLM-L6-v2 (``SentenceEncoder(trainable_layers=6)``):
- P: the pretrained encoder, nearest centroid (identical to ``intents_pretrained``'s P row).
- P>M: the encoder meta-trained as a ProtoNet on episodes drawn from the 150 x K labelled queries (30 intents,
  K/2 support and K/2 query utterances each), with squared distances between L2-normalised embeddings times
  ``SCALE`` (the metric scaling of Oreshkin et al. 2018; unscaled, distances in [0, 4] give nearly flat
  softmaxes); nearest centroid on its embeddings.
- P>M>F: then fine-tuned on all 150 x K labelled queries with cross-entropy through a cosine classifier
  (Chen et al. 2019) whose weights start at the prototypes, so that fine-tuning starts from P>M's decisions.
  Its number of epochs is chosen on the release's validation part, per seed.
Out of scope: distance to the nearest prototype (P, P>M), one minus the largest probability (P>M>F); AUROC,
and in-scope accuracy / recall at the threshold that maximises their mean on the validation part.
Each seed's results are saved as it ends, so an interrupted run resumes with the next seed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from intents_pretrained import (STAGE_COLUMNS, CachedEmbeddings, cached_embeddings, labelled_queries,  # noqa: E402
                                metrics, paired_gains, seed_row, stage_cells)
from mlkit.algorithms.protonet import class_means, squared_distances  # noqa: E402

RUNS = CHECKPOINTS / "intents_finetune"
SCALE = 10.0      # distance multiplier of the meta-training loss
LOGIT_SCALE = 20.0  # cosine-classifier temperature of fine-tuning
ENCODER_LR, CLASSIFIER_LR, BATCH = 5e-5, 1e-3, 32
STAGES = {"P": "frozen MiniLM, nearest centroid (P)", "PM": "+ encoder meta-trained (P>M)",
          "PMF": "+ encoder fine-tuned (P>M>F)"}


class Scale(nn.Module):
    """Multiplies its input by ``sqrt(SCALE)``, so that squared distances grow by ``SCALE``."""

    def forward(self, x):
        return x * math.sqrt(SCALE)


def embed(encoder, texts, chunk=256):
    """Embeddings ``[n, 384]`` of ``texts`` by the (possibly trained) encoder, in eval mode, without gradients."""
    encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad little
    out = torch.empty(len(texts), encoder.dim)
    with torch.no_grad():
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]
            out[rows] = encoder(encoder.tokenize([texts[i] for i in rows])).float()
    return out


def meta_train(encoder, texts, labels, classes, domains, shots, iterations, seed):
    """P>M: ProtoNet episodes of 30 intents with shots/2 support and shots/2 query utterances each."""
    support = mlkit.data.TextDataset(texts, labels, classes, domains).encode(encoder)
    model = mlkit.ProtoNet(nn.Sequential(encoder, Scale()), batched=False)
    history = mlkit.fit(model, mlkit.tasks.FewShot(support, 30, shots // 2, shots - shots // 2), iterations,
                        meta_batch=1, meta_lr=ENCODER_LR, device="cpu", seed=seed, progress=True)
    return history


def fine_tune(encoder, texts, labels, ways, epochs, seed, on_epoch):
    """P>M>F: cross-entropy through a cosine classifier initialised at the prototypes; ``on_epoch(classifier,
    epoch)`` after every epoch, with the normalised classifier weights ``[ways, dim]``."""
    weight = nn.Parameter(nn.functional.normalize(class_means(embed(encoder, texts), labels, ways), dim=-1))
    optimizer = torch.optim.AdamW([{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": ENCODER_LR},
                                   {"params": [weight], "lr": CLASSIFIER_LR}])
    ids, generator = encoder.tokenize(texts), torch.Generator().manual_seed(seed)
    for epoch in tqdm(range(1, epochs + 1), desc="fine-tuning", unit="epoch", leave=False):
        encoder.train()
        order = torch.randperm(len(texts), generator=generator)
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            logits = LOGIT_SCALE * encoder(ids[rows]) @ nn.functional.normalize(weight, dim=-1).T
            loss = nn.functional.cross_entropy(logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        on_epoch(nn.functional.normalize(weight.detach(), dim=-1).clone(), epoch)


def run_seed(clinc, frozen, oos_texts, shots, seed, iterations, max_epochs):
    """The three stages on one draw of ``shots`` labelled queries per intent: ``{stage: metrics}`` and costs.
    ``frozen`` embeds texts with the pretrained encoder from the shared cache (``CachedEmbeddings``)."""
    torch.manual_seed(seed)
    chosen = labelled_queries(clinc, shots, seed)
    texts, labels = [clinc.texts[i] for i in chosen.tolist()], clinc.labels[chosen]
    parts = {name: (clinc.part == k).nonzero().flatten() for k, name in enumerate(("train", "val", "test"))}
    evaluation = {name: ([clinc.texts[i] for i in parts[name].tolist()] + oos_texts[name], clinc.labels[parts[name]])
                  for name in ("val", "test")}
    ways = len(clinc.classes)

    def scored(logits_of, kind):
        out = []
        for name in ("val", "test"):
            logits, y = logits_of(name), evaluation[name][1]
            out.append((logits[None, :len(y)], logits[None, len(y):], y[None]))
        return metrics(*out, kind)

    centroid_logits = lambda features, centres: -squared_distances(features, centres)
    results, cost = {}, {}
    p_centres = class_means(frozen.embed(texts), labels, ways)
    results["P"] = scored(lambda name: centroid_logits(frozen.embed(evaluation[name][0]), p_centres), "distance")

    encoder = mlkit.models.SentenceEncoder(trainable_layers=6)
    began = time.process_time()
    history = meta_train(encoder, texts, labels, clinc.classes, clinc.domains, shots, iterations, seed)
    cost["PM"] = {"iterations": history.iteration[-1], "cpu_seconds": round(time.process_time() - began, 1)}
    features = {name: embed(encoder, evaluation[name][0]) for name in ("val", "test")}
    centres = class_means(embed(encoder, texts), labels, ways)
    results["PM"] = scored(lambda name: centroid_logits(features[name], centres), "distance")

    began, best, val_y = time.process_time(), {"accuracy": -1.0, "epochs": 0}, evaluation["val"][1]
    val_in_scope = evaluation["val"][0][:len(val_y)]

    def keep_best(classifier, epoch):  # the epoch with the best validation accuracy (in-scope queries)
        predicted = (embed(encoder, val_in_scope) @ classifier.T).argmax(-1)
        accuracy = (predicted == val_y).double().mean().item()
        if accuracy > best["accuracy"]:
            best.update(accuracy=accuracy, epochs=epoch, classifier=classifier,
                        state={k: v.clone() for k, v in encoder.state_dict().items()})

    fine_tune(encoder, texts, labels, ways, max_epochs, seed, keep_best)
    encoder.load_state_dict(best["state"])
    logits = {name: LOGIT_SCALE * embed(encoder, evaluation[name][0]) @ best["classifier"].T for name in ("val", "test")}
    cost["PMF"] = {"epochs": best["epochs"], "cpu_seconds": round(time.process_time() - began, 1)}
    results["PMF"] = scored(lambda name: logits[name], "softmax")
    return results, cost


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, K = 5, 4 meta-iterations, 1 epoch")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds, shot_list, iterations, max_epochs = (1, (5,), 4, 1) if args.quick else (5, (5, 10), 30, 5)
    name = "intents_finetune-quick" if args.quick else "intents_finetune"
    clinc = mlkit.data.CLINC150()
    oos_texts = {part: clinc.out_of_scope[part] for part in ("val", "test")}
    stored = cached_embeddings(clinc)
    frozen = CachedEmbeddings(stored["texts"], stored["embeddings"])
    RUNS.mkdir(parents=True, exist_ok=True)
    rows = []
    for shots in shot_list:
        per_seed, costs = {stage: [] for stage in STAGES}, []
        for seed in range(seeds):
            saved = RUNS / f"{name}-{shots}shot-seed{seed}.pt"
            if not saved.exists():  # each finished seed is kept, so an interrupted run resumes with the next one
                results, cost = run_seed(clinc, frozen, oos_texts, shots, seed, iterations, max_epochs)
                torch.save({"results": results, "cost": cost}, saved.with_suffix(".tmp"))
                saved.with_suffix(".tmp").replace(saved)
            stored = torch.load(saved)
            for stage in STAGES:
                per_seed[stage].append(stored["results"][stage])
            costs.append(stored["cost"])
            print(f"{shots}-shot seed {seed}:", {s: round(r["per_episode"].item(), 2)
                                                 for s, r in stored["results"].items()}, flush=True)
        cell = f"150-way {shots}-shot"
        trainings = {"P": None, "PM": {"iterations": costs[0]["PM"]["iterations"]},
                     "PMF": {"epochs": [c["PMF"]["epochs"] for c in costs]}}
        cell_rows = paired_gains([dict(seed_row(cell, stage, per_seed[stage], trainings[stage]), name=STAGES[stage])
                                  for stage in STAGES])
        for row in cell_rows[1:]:
            row["cpu_seconds"] = sum(c[row["stage"]]["cpu_seconds"] for c in costs)
        rows += cell_rows
    summary = {"settings": {"seeds": seeds, "shots": list(shot_list), "meta_iterations": iterations,
                            "max_epochs": max_epochs, "scale": SCALE, "logit_scale": LOGIT_SCALE,
                            "encoder_lr": ENCODER_LR, "classifier_lr": CLASSIFIER_LR, "batch": BATCH,
                            "threads": 2, "encoder": "sentence-transformers/all-MiniLM-L6-v2"},
               "stages": STAGES, "rows": rows, "machine": machine()}
    write_json(RESULTS / f"{name}.json", summary)
    write_markdown(summary, name)


def write_markdown(summary, name):
    table = [stage_cells(r) + [f"{r['cpu_seconds'] / 60:.1f}" if "cpu_seconds" in r else ""] for r in summary["rows"]]
    s = summary["settings"]
    text = ("# 150-way K-shot CLINC150 intents, the whole MiniLM encoder meta-trained and fine-tuned (P>M>F)\n\n"
            + markdown_table(STAGE_COLUMNS + ["CPU-minutes (all seeds)"], table)
            + f"\n\n{s['seeds']} draws of the labelled queries (mean ± std over draws; gains paired per draw). "
            f"Meta-training: {s['meta_iterations']} episodes; fine-tuning: up to {s['max_epochs']} epochs, chosen "
            f"on validation. See the docstring of benchmarks/intents_finetune.py. Machine: {summary['machine']}.\n")
    write_atomic(RESULTS / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()

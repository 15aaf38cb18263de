"""Semi-supervised Prototypical Networks for few-shot intent detection, with out-of-scope utterances in the pool.

    python benchmarks/intents_semi.py            # 22 trainings of 0.5 CPU-minute, 600 test episodes: ~12 CPU-minutes
    python benchmarks/intents_semi.py --quick    # 60 episodes, 3 CPU-seconds per training (files under checkpoints/)

Does unlabelled data help few-shot intent detection on top of a pretrained sentence encoder, and do the
distractor-aware refinements of Ren et al. (ICLR 2018) protect the prototypes when the unlabelled pool holds
out-of-scope utterances?

Features: all-MiniLM-L6-v2 frozen (``mlkit.models.SentenceEncoder``), L2-normalised 384-d embeddings of every
CLINC150 text and out-of-scope text, computed once and cached by intents_pretrained.cached_embeddings.
On top, the residual head of benchmarks/intents_pretrained.py, h(x) = x + W x + b with W = 0 and b = 0 at the start,
so that the untrained model is a nearest centroid on MiniLM.

Split: CLINC150's domains shuffled with seed 0 (``CLINC150.split("domains", 0)``): 90 meta-train intents (6
domains), 45 meta-test intents (3 domains); the validation domain is not used (nothing is tuned).

Test: 5-way 1-shot and 5-way 5-shot over the 45 test intents, 600 episodes per cell, 15 queries per intent and
M = 5 unlabelled utterances per task intent. Every episode is drawn once with H = 5 distractor intents and seen
under three unlabelled pools, so that support, query and task-intent unlabelled utterances are the same in all:
- none: the 25 unlabelled utterances of the task intents;
- in-domain: + M = 5 utterances of each of H = 5 other test intents (FewShot's ``distractors``), 25 more;
- out-of-scope: + 25 of the 1,000 out-of-scope test utterances of the release (drawn without replacement per
  episode, seeded), the same number as in-domain adds.
The episodes are the same for every model; accuracy is the mean over episodes ± 95% CI, and each gain is the mean
of per-episode differences with the supervised head on the same episodes, ± its 95% CI.

Models (Adam, 4 tasks per step, one thread, stopped after 0.5 CPU-minute of training, ``fit(clock="cpu")``; the
head's step size is intents_pretrained.META_LR = 1e-4, the refinements' own parameters (distractor radius, mask
MLP) 1e-3 as in Ren et al.):
- frozen MiniLM: the untrained head, i.e. nearest centroid (squared Euclidean) on the embeddings; "+ soft k-means
  at test": the same with one soft k-means step on the pool (``SemiProtoNet(refinement="soft_kmeans")``).
- supervised: ProtoNet with the head, meta-trained on 5-way episodes of the meta-train intents with the cell's
  shots and 15 queries; "+ soft k-means at test": that head with one soft k-means step at test only.
- soft_kmeans, soft_kmeans_cluster, masked_soft_kmeans: SemiProtoNet with the head, meta-trained on episodes
  with unlabelled pools (M = 5; support, query and unlabelled utterances distinct, drawn from all of a class's
  utterances: no labelled/unlabelled split of the training intents) of two kinds: in-domain distractors (H = 5
  other meta-train intents) or out-of-scope distractors (25 of the release's 100 out-of-scope train utterances per
  episode).
- frozen MiniLM + soft_kmeans_cluster / masked_soft_kmeans (refinement trained alone): the same trainings with the
  head held at the identity, so that only the distractor radius or the mask MLP learns.
Each model is also scored with no unlabelled pool (a SemiProtoNet without one is a ProtoNet): the paired gain of a
pool over that is what the refinement itself adds, apart from the head its training produced.

Every training resumes from its checkpoint and every model's per-episode test accuracies are kept in
checkpoints/intents_semi/scores.json, so a rerun only does what is missing. Results: benchmarks/results/
intents_semi.{md,json}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlkit  # noqa: E402
import mlkit.data  # noqa: E402
from common import CHECKPOINTS, RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from intents import QUERIES, SEED  # noqa: E402
from intents_pretrained import META_LR, CachedEmbeddings, ResidualHead, cached_embeddings  # noqa: E402
from protonet import REFINEMENTS, _ci95, episode_accuracies  # noqa: E402

RUNS = CHECKPOINTS / "intents_semi"
WAYS, SHOTS, UNLABELED, DISTRACTORS = 5, (1, 5), 5, 5
OUT_OF_SCOPE = UNLABELED * DISTRACTORS  # as many out-of-scope utterances as H distractor intents add
REFINEMENT_LR = 1e-3
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
CONDITIONS = {"no_pool": "no unlabelled pool", "none": "no distractors", "in_domain": "in-domain distractors",
              "oos": "out-of-scope distractors"}
TRAINED_WITH = {"in_domain": "in-domain distractors", "oos": "out-of-scope distractors"}


# Data -----------------------------------------------------------------------------------------------------------
def load():
    """Meta-train and meta-test intents as datasets of embeddings, and the out-of-scope embeddings by part."""
    clinc = mlkit.data.CLINC150()
    stored = cached_embeddings(clinc)
    lookup = CachedEmbeddings(stored["texts"], stored["embeddings"])
    train, _, test = (part.embed(lookup) for part in clinc.split("domains", SEED))
    oos = {part: lookup.embed(clinc.out_of_scope[part]) for part in ("train", "test")}
    return train, test, oos, stored["source"]


def without_distractors(batch: mlkit.TaskBatch) -> mlkit.TaskBatch:
    """The batch with only its task classes' unlabelled examples (their order kept)."""
    keep = ~batch.info["unlabeled_is_distractor"]
    per_task = int(keep[0].sum())
    info = {k: v[keep].view(batch.tasks, per_task) if k.startswith("unlabeled_") else v for k, v in batch.info.items()}
    return dataclasses.replace(batch, unlabeled_x=batch.unlabeled_x[keep].view(batch.tasks, per_task, -1), info=info)


def with_out_of_scope(batch: mlkit.TaskBatch, extra: torch.Tensor) -> mlkit.TaskBatch:
    """The batch with ``extra [tasks, n, dim]`` appended to its unlabelled pool and marked as distractors (the
    refinements are invariant to the pool's order)."""
    unlabeled = torch.cat([batch.unlabeled_x, extra], 1)
    assert unlabeled.shape == (batch.tasks, batch.unlabeled_x.shape[1] + extra.shape[1], batch.support_x.shape[-1])
    is_distractor = torch.cat([batch.info["unlabeled_is_distractor"],
                               torch.ones(extra.shape[:2], dtype=torch.bool)], 1)
    info = {k: v for k, v in batch.info.items() if k not in ("unlabeled_classes", "unlabeled_images")}
    return dataclasses.replace(batch, unlabeled_x=unlabeled, info={**info, "unlabeled_is_distractor": is_distractor})


class Pools:
    """5-way episodes of ``dataset`` whose unlabelled pool is one of CONDITIONS. Every episode is drawn with H
    distractor intents and out-of-scope picks whatever the condition, so that the same generator gives the same
    support, query and task-class unlabelled examples under every condition."""

    def __init__(self, dataset, shots: int, out_of_scope: torch.Tensor, condition: str):
        self.family = mlkit.tasks.FewShot(dataset, WAYS, shots, QUERIES, unlabeled=UNLABELED, distractors=DISTRACTORS)
        self.out_of_scope, self.condition = out_of_scope, condition

    def sample(self, tasks, generator=None, device=None):
        batch = self.family.sample(tasks, generator=generator)
        picks = torch.rand(tasks, len(self.out_of_scope), generator=generator).argsort(1)[:, :OUT_OF_SCOPE]
        if self.condition == "no_pool":
            batch = dataclasses.replace(batch, unlabeled_x=None)
        elif self.condition == "none":
            batch = without_distractors(batch)
        elif self.condition == "oos":
            batch = with_out_of_scope(without_distractors(batch), self.out_of_scope[picks])
        return batch if device is None else batch.to(device)


# Models ---------------------------------------------------------------------------------------------------------
def two_step_sizes(algorithm):
    """An optimizer factory: Adam at META_LR for the head, REFINEMENT_LR for the refinement's own parameters."""
    def make(params):
        params, head = list(params), {id(p) for p in algorithm.model.parameters()}
        groups = [{"params": [p for p in params if id(p) in head], "lr": META_LR},
                  {"params": [p for p in params if id(p) not in head], "lr": REFINEMENT_LR}]
        return torch.optim.Adam([g for g in groups if g["params"]])
    return make


def head_model(refinement: str | None, train_head: bool = True):
    """ProtoNet (``refinement=None``) or SemiProtoNet on the residual head; with ``train_head=False`` the head stays
    the identity and only the refinement's own parameters train."""
    torch.manual_seed(SEED)
    head = ResidualHead(EMBEDDING_DIM).requires_grad_(train_head)
    return mlkit.ProtoNet(head) if refinement is None else mlkit.SemiProtoNet(head, refinement)


def meta_train(checkpoint: Path, algorithm, family, minutes: float) -> dict:
    history = mlkit.fit(algorithm, family, iterations=1_000_000, meta_batch=4, optimizer=two_step_sizes(algorithm),
                        device="cpu", seed=SEED, checkpoint=checkpoint, checkpoint_every=200, minutes=minutes,
                        clock="cpu", progress=False)
    info = {"cpu_seconds": round(history.seconds, 1), "iterations": history.iteration[-1]}
    if hasattr(algorithm, "log_radius"):
        info["distractor_radius"] = round(math.exp(algorithm.log_radius.item()), 3)
    return info


def models(train, oos_train, shots: int, minutes: float, runs: Path):
    """``(key, name, trained with, algorithm factory)`` of every row of a cell; a factory trains its model
    (resuming) and returns ``(algorithm, training info or None)``."""
    def frozen(refinement):
        return lambda: (head_model(refinement), None)

    def supervised():
        algorithm = head_model(None)
        return algorithm, meta_train(runs / f"supervised-{shots}shot-{minutes:g}.pt", algorithm,
                                     mlkit.tasks.FewShot(train, WAYS, shots, QUERIES), minutes)

    def inference():
        algorithm, info = supervised()
        semi = head_model("soft_kmeans")
        semi.model.load_state_dict(algorithm.model.state_dict())
        return semi, info

    def semi(refinement, condition, train_head=True):
        def make():
            algorithm = head_model(refinement, train_head)
            family = Pools(train, shots, oos_train, condition)
            tag = f"{refinement}-{condition}-{shots}shot-{minutes:g}" + ("" if train_head else "-identity")
            return algorithm, meta_train(runs / f"{tag}.pt", algorithm, family, minutes)
        return make

    rows = [("frozen", "frozen MiniLM (nearest centroid)", "—", frozen(None)),
            ("frozen+inference", "frozen MiniLM + soft k-means at test", "—", frozen("soft_kmeans")),
            ("supervised", "supervised ProtoNet head", "no pool", supervised),
            ("inference", "supervised head + soft k-means at test", "no pool", inference)]
    rows += [(f"{r}/{c}", r, TRAINED_WITH[c], semi(r, c)) for c in TRAINED_WITH for r in REFINEMENTS]
    rows += [(f"{r}/{c}/identity", f"frozen MiniLM + {r} (refinement trained alone)", TRAINED_WITH[c],
              semi(r, c, train_head=False)) for c in TRAINED_WITH for r in REFINEMENTS[1:]]
    return rows


# Benchmark ------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    runs = RUNS / "quick" if args.quick else RUNS
    scores_path = runs / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    train, test, oos, source = load()
    jobs = [(shots, *row) for shots in SHOTS for row in models(train, oos["train"], shots, args.minutes, runs)]
    for shots, key, _, _, make in tqdm(jobs, desc="models", unit="model"):
        name = f"{WAYS}w{shots}s/{key}"
        if name in scores:
            continue
        algorithm, training = make()
        began = time.process_time()
        accuracies = {c: episode_accuracies(algorithm, Pools(test, shots, oos["test"], c), args.episodes)
                      for c in CONDITIONS}
        scores[name] = {"accuracies": accuracies, "training": training,
                        "eval_cpu_seconds": round(time.process_time() - began, 1)}
        write_json(scores_path, scores)
    return summarise(scores, jobs, args, source)


def paired(values: list[float], reference: list[float]) -> dict:
    """Mean ± 95% CI of per-episode accuracies and of their differences with ``reference`` on the same episodes."""
    values, reference = torch.tensor(values, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return {"accuracy": values.mean().item(), "ci95": _ci95(values), "gain": (values - reference).mean().item(),
            "gain_ci95": _ci95(values - reference)}


def summarise(scores: dict, jobs, args, source: str) -> dict:
    """One row per cell and model: for each pool, accuracy, the gain over the supervised head, and the gain over
    the same model without a pool (``pool_gain``), all paired on the same episodes."""
    rows = []
    for shots, key, name, trained_with, _ in jobs:
        entry = scores[f"{WAYS}w{shots}s/{key}"]["accuracies"]
        supervised = scores[f"{WAYS}w{shots}s/supervised"]["accuracies"]
        row = {"cell": f"{WAYS}-way {shots}-shot", "model": key, "name": name, "trained_with": trained_with,
               "training": scores[f"{WAYS}w{shots}s/{key}"]["training"]}
        for condition in CONDITIONS:
            own = paired(entry[condition], entry["no_pool"])
            row[condition] = {**paired(entry[condition], supervised[condition]),
                              "pool_gain": own["gain"], "pool_gain_ci95": own["gain_ci95"]}
        rows.append(row)
    training = sum(r["training"]["cpu_seconds"] for r in rows if r["training"] and r["model"] != "inference")
    evaluation = sum(s["eval_cpu_seconds"] for s in scores.values())
    return {"settings": {"ways": WAYS, "shots": list(SHOTS), "queries": QUERIES, "unlabeled": UNLABELED,
                         "distractors": DISTRACTORS, "out_of_scope_per_episode": OUT_OF_SCOPE,
                         "test_episodes": args.episodes, "minutes_per_training": args.minutes, "clock": "cpu",
                         "threads": 1, "meta_batch": 4, "head_lr": META_LR, "refinement_lr": REFINEMENT_LR,
                         "encoder": source, "split": "CLINC150 domains, seed 0: 90 meta-train / 45 meta-test intents"},
            "conditions": CONDITIONS, "rows": rows, "training_cpu_minutes": round(training / 60, 1),
            "total_cpu_minutes": round((training + evaluation) / 60, 1), "machine": machine()}


def report(summary: dict) -> str:
    pools = [c for c in CONDITIONS if c != "no_pool"]

    def over_supervised(r, condition):
        c = r[condition]
        gain = "" if r["model"] == "supervised" else f" ({c['gain']:+.1f} ± {c['gain_ci95']:.1f})"
        return f"{c['accuracy']:.1f} ± {c['ci95']:.1f}{gain}"

    def from_pool(r, condition):
        return f"{r[condition]['pool_gain']:+.1f} ± {r[condition]['pool_gain_ci95']:.1f}"

    def training(t):
        if t is None:
            return "none"
        radius = f", r = {t['distractor_radius']:.2f}" if "distractor_radius" in t else ""
        return f"{t['cpu_seconds'] / 60:.2f} min, {t['iterations']} it.{radius}"

    rows = summary["rows"]
    accuracy = markdown_table(["cell", "model", "trained with pools of", *[f"test: {CONDITIONS[c]}" for c in pools],
                               "training"],
                              [[r["cell"], r["name"], r["trained_with"], *[over_supervised(r, c) for c in pools],
                                training(r["training"])] for r in rows])
    semi = [r for r in rows if r["model"] not in ("frozen", "supervised")]
    pool = markdown_table(["cell", "model", "trained with pools of", "accuracy without a pool",
                           *[f"pool gain: {CONDITIONS[c]}" for c in pools]],
                          [[r["cell"], r["name"], r["trained_with"],
                            f"{r['no_pool']['accuracy']:.1f} ± {r['no_pool']['ci95']:.1f}",
                            *[from_pool(r, c) for c in pools]] for r in semi])
    s = summary["settings"]
    return ("# Semi-supervised ProtoNets on CLINC150 intents, out-of-scope utterances in the unlabelled pool\n\n"
            "Accuracy % with each unlabelled pool, in brackets the paired gain over the supervised head:\n\n"
            + accuracy + "\n\nWhat the pool adds to each model: the paired gain over the same model given no "
            "unlabelled pool (a SemiProtoNet without one is a ProtoNet), which separates the refinement from the "
            "different heads the trainings produce:\n\n" + pool
            + f"\n\n{s['test_episodes']} test episodes of the 45 meta-test intents per cell, the same for every model "
            f"and pool (mean ± 95% CI; gains are means of per-episode differences ± 95% CI). {s['queries']} queries "
            f"and M = {s['unlabeled']} unlabelled utterances per task intent; the pool adds nothing, or M from each of "
            f"H = {s['distractors']} other test intents, or {s['out_of_scope_per_episode']} out-of-scope test "
            "utterances. Encoder: frozen all-MiniLM-L6-v2 + a residual linear head (the identity until trained). "
            f"Each training: {s['minutes_per_training']:g} CPU-minute on one thread; r is the learned "
            "distractor-cluster radius. See the docstring of benchmarks/intents_semi.py. Total "
            f"{summary['total_cpu_minutes']} CPU-minutes ({summary['training_cpu_minutes']} of training), plus "
            f"about 1.3 to embed the texts once. Machine: {summary['machine']}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 episodes, 0.05 CPU-minute trainings, files under "
                                                             "checkpoints/intents_semi/quick/")
    parser.add_argument("--minutes", type=float, default=0.5, help="CPU-minutes per training")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per cell")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.episodes = 0.05, 60
    torch.set_num_threads(1)
    summary = run(args)
    out = RUNS / "quick" / "intents_semi" if args.quick else RESULTS / "intents_semi"
    text = report(summary)
    write_json(out.with_suffix(".json"), summary)
    write_atomic(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()

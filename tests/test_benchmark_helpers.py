"""Helpers the benchmark scripts share: atomic figures, the Omniglot report and figure, interleaved timing."""
import importlib.util
import os
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load("common")


def test_save_figure_writes_a_readable_png_and_leaves_no_temporary_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "figure.png"
    common.save_figure(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert not plt.fignum_exists(fig.number)


def test_save_figure_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    fig, _ = plt.subplots()
    fig.savefig = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        common.save_figure(fig, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def _row(algorithm, ways, shots, accuracy):
    return {"algorithm": algorithm, "ways": ways, "shots": shots, "accuracy": accuracy, "ci95": 0.5,
            "published": 98.7 if algorithm == "maml" else None, "source": None, "protocol": "budget",
            "iterations": 100, "cpu_minutes": 10.02, "machine": "test machine", "device": "cpu",
            "curve_seconds": [0.0, 300.0, 600.0], "curve_accuracy": [20.0, 60.0, accuracy]}


def test_omniglot_report_places_each_cell_in_its_column_and_the_figure_is_written(tmp_path):
    omniglot = _load("omniglot")
    results = {"rows": [_row("maml", 5, 1, 91.25), _row("anil", 20, 5, 77.5)], "speed": []}
    text = omniglot.report(results)
    header, _, maml, anil = text.splitlines()[:4]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert maml.split("|")[1 + columns.index("5w1s ours")].strip() == "91.25 ± 0.50"
    assert maml.split("|")[1 + columns.index("5w1s published")].strip() == "98.70"
    assert anil.split("|")[1 + columns.index("20w5s ours")].strip() == "77.50 ± 0.50"
    assert anil.split("|")[1 + columns.index("5w1s ours")].strip() == "—"
    assert "[10] CPU-minutes" in text
    omniglot.plot(results, tmp_path / "omniglot.png")
    assert (tmp_path / "omniglot.png").read_bytes()[:4] == b"\x89PNG"


def test_protonet_speed_timing_gives_every_implementation_the_first_turn_in_rotation():
    protonet = _load("protonet")
    import torch

    weight = torch.ones(2, requires_grad=True)
    order = []

    def step(name):
        def run():
            order.append(name)
            return (weight * weight).sum()
        return run

    times = protonet._interleaved_cpu_ms({"a": step("a"), "b": step("b"), "c": step("c")}, [weight], repeats=4)
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}  # warm-up rounds dropped
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) == 6 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds] == ["a", "b", "c", "a", "b", "c"]


def test_pmf_fine_tuning_starts_as_the_prototype_classifier_and_lowers_the_support_loss():
    """P>M>F's fine-tuning: with zero steps its logits are ProtoNet's (minus squared distances) up to a constant per
    input, so the predictions agree; gradient steps lower the support cross-entropy of every task."""
    import torch

    pretrained = _load("intents_pretrained")
    generator = torch.Generator().manual_seed(0)
    head = pretrained.ResidualHead(8)
    with torch.no_grad():
        head.linear.weight.copy_(0.1 * torch.randn(8, 8, generator=generator))
    support_x, inputs = torch.randn(3, 10, 8, generator=generator), torch.randn(3, 6, 8, generator=generator)
    support_y = torch.arange(5).repeat(2).expand(3, 10)
    start = pretrained.fine_tune_logits(head, support_x, support_y, inputs, 5, lr=1.0, steps=0)
    with torch.no_grad():
        features, targets = head(support_x), head(inputs)
    for task in range(3):
        prototypes = torch.stack([features[task][support_y[task] == c].mean(0) for c in range(5)])
        distances = -torch.cdist(targets[task], prototypes) ** 2
        torch.testing.assert_close(start[task] - start[task, :, :1], distances - distances[:, :1], atol=1e-4, rtol=1e-4)

    def support_loss(logits):
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), support_y, reduction="none").mean(1)

    before = support_loss(pretrained.fine_tune_logits(head, support_x, support_y, support_x, 5, lr=1.0, steps=0))
    after = support_loss(pretrained.fine_tune_logits(head, support_x, support_y, support_x, 5, lr=1.0, steps=20))
    assert (after < before).all()


def test_head_meta_training_keeps_the_state_whose_validation_accuracy_it_reports(tmp_path, monkeypatch):
    """Early stopping of P>M's head: the head returned is the candidate (the identity included) with the best
    accuracy on the fixed validation episodes, and evaluating it on those episodes gives the reported figure."""
    import torch

    import mlkit

    pretrained = _load("intents_pretrained")
    monkeypatch.setattr(pretrained, "RUNS", tmp_path)
    monkeypatch.setattr(pretrained, "EVAL_EVERY", 5)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 6, generator=generator)

    def dataset(classes, offset):
        labels = torch.arange(len(classes)).repeat_interleave(10)
        features = centres[classes][labels] + 0.8 * torch.randn(len(labels), 6, generator=generator)
        texts = [f"text {offset + i}" for i in range(len(labels))]
        return mlkit.data.TextDataset(texts, labels, [f"intent {c}" for c in classes], ["d"] * len(classes), features)

    train, val = dataset(list(range(8)), 0), dataset(list(range(8, 12)), 1000)
    model, training = pretrained.meta_train("test", train, 4, 1, 3, 0.02, val)
    assert training["chosen_iteration"] % 5 == 0 and training["chosen_iteration"] <= training["iterations"]
    again = mlkit.evaluate(model, mlkit.tasks.FewShot(val, 4, 1, 3), tasks=pretrained.VAL_TASKS // 2,
                           seed=pretrained.SEED + 1)[0]
    assert abs(again - training["validation_accuracy"]) < 0.01
    if training["chosen_iteration"] == 0:  # the identity was kept: the head is untouched
        assert model.model.linear.weight.abs().sum() == 0


def test_encoder_fine_tuning_starts_from_the_prototypes_and_lowers_the_support_loss(monkeypatch):
    """P>M>F with the whole encoder: the cosine classifier starts at the normalised class means of the normalised
    embeddings (with both step sizes at zero it stays there), and training lowers the support loss."""
    import torch
    from torch import nn

    finetune = _load("intents_finetune")

    class CharEncoder(nn.Module):
        dim = 8

        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(128, self.dim, padding_idx=0)

        def tokenize(self, texts):
            width = max(map(len, texts))
            return torch.tensor([[ord(c) for c in t] + [0] * (width - len(t)) for t in texts])

        def forward(self, ids):
            mask = (ids != 0).unsqueeze(-1).float()
            return nn.functional.normalize((self.table(ids) * mask).sum(1) / mask.sum(1), dim=-1)

    texts = ["pay my bill", "pay the bill now", "book a flight", "book flights to rome", "wake me at six",
             "set a wake up alarm"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def run(encoder_lr, classifier_lr, epochs):
        torch.manual_seed(0)
        encoder, seen = CharEncoder(), []
        monkeypatch.setattr(finetune, "ENCODER_LR", encoder_lr)
        monkeypatch.setattr(finetune, "CLASSIFIER_LR", classifier_lr)

        def on_epoch(classifier, epoch):
            logits = finetune.LOGIT_SCALE * finetune.embed(encoder, texts) @ classifier.T
            seen.append((epoch, classifier, nn.functional.cross_entropy(logits, labels).item()))

        start = finetune.embed(encoder, texts)
        finetune.fine_tune(encoder, texts, labels, 3, epochs, 0, on_epoch)
        return start, seen

    start, seen = run(0.0, 0.0, 1)
    means = torch.stack([start[labels == k].mean(0) for k in range(3)])
    assert [s[0] for s in seen] == [1]
    torch.testing.assert_close(seen[0][1], nn.functional.normalize(means, dim=-1))
    _, seen = run(0.05, 0.05, 5)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert torch.allclose(seen[-1][1].norm(dim=-1), torch.ones(3))
    assert seen[-1][2] < 0.5 * seen[0][2]

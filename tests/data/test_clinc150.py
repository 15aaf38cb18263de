import hashlib
import json
import os
import zlib
from pathlib import Path

import pytest
import torch

import mlkit
from mlkit.data import CLINC150, HashedNgrams, TextDataset, clinc150, pad

# A small fake CLINC150 in the release's layout: 5 domains of 3 intents, 6 / 2 / 2 queries per intent in the
# train / val / test parts, and out-of-scope queries. Query j of intent "d<D>_i<I>" reads "intent d<D> i<I> query <j>".
DOMAINS = {f"dom{d}": [f"d{d}_i{i}" for i in range(3)] for d in range(5)}
COUNTS = {"train": 6, "val": 2, "test": 2}


def fake_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {part: [[f"intent {intent.replace('_', ' ')} query {part} {j}", intent]
                   for intents in DOMAINS.values() for intent in intents for j in range(n)]
            for part, n in COUNTS.items()}
    data.update({f"oos_{part}": [[f"something else {part} {j}", "oos"] for j in range(n)] for part, n in
                 (("train", 3), ("val", 4), ("test", 5))})
    (folder / "data_full.json").write_text(json.dumps(data))
    (folder / "domains.json").write_text(json.dumps(DOMAINS))
    return folder


@pytest.fixture
def fake(tmp_path):
    return CLINC150(fake_files(tmp_path / "clinc150"))


def test_reads_one_class_per_intent_with_its_domain_and_keeps_out_of_scope_apart(fake):
    assert fake.classes == [i for intents in DOMAINS.values() for i in intents]
    assert fake.domains == [d for d, intents in DOMAINS.items() for _ in intents]
    assert len(fake) == 15 * 10 and fake.counts.tolist() == [10] * 15
    for text, label in zip(fake.texts, fake.labels.tolist()):
        assert text.startswith(f"intent {fake.classes[label].replace('_', ' ')} query")  # texts match their labels
    assert {k: len(v) for k, v in fake.out_of_scope.items()} == {"train": 3, "val": 4, "test": 5}
    assert not any("something else" in t for t in fake.texts)
    assert torch.bincount(fake.part).tolist() == [90, 30, 30]
    assert fake.images.shape == (150, 1) and torch.equal(fake.images[:, 0], torch.arange(150))  # text indices


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as error:
        CLINC150(tmp_path / "nowhere")
    assert "data_full.json" in str(error.value) and clinc150.RELEASE["domains.json"][0] in str(error.value)


def test_corrupt_json_raises_value_error(tmp_path):
    folder = fake_files(tmp_path / "c")
    (folder / "data_full.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CLINC150(folder)


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLKIT_DATA", str(tmp_path / "data"))
    assert clinc150.default_root() == tmp_path / "data" / "clinc150"
    monkeypatch.delenv("MLKIT_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert clinc150.default_root() == tmp_path / "xdg" / "mlkit" / "clinc150"


@pytest.fixture
def server(tmp_path, serve_folder):
    """A local HTTP server on 127.0.0.1 serving the fake files; yields its base URL and folder."""
    folder = fake_files(tmp_path / "served")
    with serve_folder(folder) as base:
        yield base, folder



def point_release_at(monkeypatch, base, folder, wrong=()):
    for name in clinc150.RELEASE:
        digest = "0" * 64 if name in wrong else hashlib.sha256((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(clinc150.RELEASE, name, (base + name, digest))


def test_download_fetches_and_checks_the_sha256(tmp_path, monkeypatch, server):
    base, folder = server
    point_release_at(monkeypatch, base, folder)
    root = tmp_path / "new" / "root"
    data = CLINC150(root, download=True)
    assert len(data.classes) == 15 and sorted(p.name for p in root.iterdir()) == ["data_full.json", "domains.json"]
    assert (root / "data_full.json").read_bytes() == (folder / "data_full.json").read_bytes()
    point_release_at(monkeypatch, "http://127.0.0.1:9/", folder)  # files there: nothing is fetched
    assert len(CLINC150(root, download=True).classes) == 15


def test_checksum_mismatch_raises_and_leaves_nothing_behind(tmp_path, monkeypatch, server):
    base, folder = server
    point_release_at(monkeypatch, base, folder, wrong=["data_full.json"])
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="sha256"):
        CLINC150(root, download=True)
    assert not list(root.iterdir())


def test_download_failure_says_so(tmp_path, monkeypatch, server):
    base, folder = server
    point_release_at(monkeypatch, base + "missing/", folder)
    with pytest.raises(ConnectionError, match="data_full.json"):
        CLINC150(tmp_path / "root", download=True)
    assert not list((tmp_path / "root").iterdir())


def test_domain_split_is_disjoint_whole_domains_and_intents_never_cross(fake):
    train, val, test = fake.split("domains", seed=3, sizes=(3, 1, 1))
    domain_sets = [set(p.domains) for p in (train, val, test)]
    assert [len(s) for s in domain_sets] == [3, 1, 1] and set.union(*domain_sets) == set(DOMAINS)
    assert not (domain_sets[0] & domain_sets[1] or domain_sets[0] & domain_sets[2] or domain_sets[1] & domain_sets[2])
    intents = [set(p.classes) for p in (train, val, test)]
    assert not (intents[0] & intents[1] or intents[0] & intents[2] or intents[1] & intents[2])
    for part in (train, val, test):
        assert part.domains == [fake.domains[fake.classes.index(c)] for c in part.classes]  # whole domains
        assert len(part.texts) == 10 * len(part.classes)
        for text, label in zip(part.texts, part.labels.tolist()):  # relabelled, texts still match
            assert text.startswith(f"intent {part.classes[label].replace('_', ' ')} query")
    again = fake.split("domains", seed=3, sizes=(3, 1, 1))
    assert [p.classes for p in again] == [p.classes for p in (train, val, test)]
    others = {tuple(fake.split("domains", seed=s, sizes=(3, 1, 1))[2].classes) for s in range(8)}
    assert len(others) > 1  # the seed matters


@pytest.mark.parametrize("kwargs, match", [(dict(name="intents"), "unknown CLINC150 split"),
                                           (dict(sizes=(4, 1, 1)), "sizes"), (dict(sizes=(3, 0, 1)), "sizes"),
                                           (dict(seed="0"), "seed")])
def test_split_rejects_bad_arguments(fake, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fake.split(**kwargs)


def test_tokenizer_vocabulary_comes_from_the_fitted_texts_only():
    tokenizer = HashedNgrams(char_ngrams=None, min_count=1).fit(["book a flight", "book a table"])
    # book, a, flight, table, "book a", "a flight", "a table", and padding
    assert tokenizer.vocab_size == 8
    assert tokenizer.ids("cancel the flight") == tokenizer.ids("flight") != []  # unseen words have no id
    assert tokenizer.ids("cancel my reservation") == []
    # ids are numbered by document frequency: the features of both texts first
    assert sorted(tokenizer.ids("book a")) == [1, 2, 3] and tokenizer.document_frequency[1:4].tolist() == [2, 2, 2]
    assert tokenizer.idf[0] == 0 and tokenizer.idf[1] < tokenizer.idf[4]  # frequent features weigh less
    strict = HashedNgrams(char_ngrams=None, min_count=2).fit(["book a flight", "book a table"])
    assert strict.vocab_size == 4 and strict.ids("a flight") == strict.ids("a")


def test_tokenizer_is_deterministic_and_hashes_with_crc32():
    texts = ["What's my balance?", "book a table for two", "what is my credit score"]
    first, second = HashedNgrams(buckets=1000).fit(texts * 2), HashedNgrams(buckets=1000).fit(texts * 2)
    assert torch.equal(first.encode(texts)[0], second.encode(texts)[0])
    features = first.features("What's my balance?")
    assert features[:5] == ["what's", "my", "balance", "what's my", "my balance"] and "<ba" in features
    assert first.buckets_of("my") == [zlib.crc32(b"my") % 1000] + [zlib.crc32(g.encode()) % 1000 for g in
                                                                     ("<my", "my>")]


def test_encode_pads_with_zero_and_reports_lengths():
    tokenizer = HashedNgrams(char_ngrams=None, min_count=1).fit(["book a flight", "book a table"])
    ids, lengths = tokenizer.encode(["book a flight", "table", "nothing known"])
    assert ids.dtype == torch.long and ids.shape == (3, 5) and lengths.tolist() == [5, 1, 0]
    assert torch.equal(ids != 0, torch.arange(5) < lengths[:, None])
    cut, cut_lengths = tokenizer.encode(["book a flight"], max_length=2)
    assert cut.shape == (1, 2) and cut_lengths.tolist() == [2] and torch.equal(cut[0], ids[0, :2])
    assert pad([[3, 1], []])[0].tolist() == [[3, 1], [0, 0]]


@pytest.mark.parametrize("call, match", [
    (lambda: HashedNgrams(buckets=0), "buckets"), (lambda: HashedNgrams(char_ngrams=(3, 2)), "char_ngrams"),
    (lambda: HashedNgrams(word_ngrams=3), "word_ngrams"), (lambda: HashedNgrams(min_count=0), "min_count"),
    (lambda: HashedNgrams().fit("one string"), "list of strings"), (lambda: HashedNgrams().fit([]), "at least one"),
    (lambda: HashedNgrams().fit(["ok", 3]), "strings only"), (lambda: HashedNgrams().encode(["a"]), "not fitted"),
    (lambda: HashedNgrams(min_count=5).fit(["a b", "c d"]), "min_count"),
    (lambda: pad([[1, 0]]), "positive"), (lambda: pad([[1]], max_length=0), "max_length")])
def test_bad_tokenizer_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_text_dataset_rejects_mismatched_domains_and_ids():
    with pytest.raises(ValueError, match="domains"):
        TextDataset(["a", "b"], torch.tensor([0, 1]), ["x", "y"], ["d"])
    with pytest.raises(ValueError, match="ids"):
        TextDataset(["a", "b"], torch.tensor([0, 1]), ["x", "y"], ["d", "d"], ids=torch.ones(3, 2, dtype=torch.long))


def test_fewshot_text_episodes_have_remapped_labels_matching_their_texts(fake):
    train, _, _ = fake.split("domains", seed=0, sizes=(3, 1, 1))
    tokenizer = HashedNgrams(min_count=1).fit(train.texts)
    encoded = train.encode(tokenizer)
    assert encoded.encoded and encoded.images.dtype == torch.long and encoded.texts == train.texts
    family = mlkit.tasks.FewShot(encoded, ways=3, shots=2, queries=3)
    batch = family.sample(6, generator=torch.Generator().manual_seed(0))
    assert batch.support_x.shape[:2] == (6, 6) and batch.support_x.dtype == torch.long
    orders = set()
    for t in range(6):
        classes, images = batch.info["classes"][t], batch.info["images"][t]
        orders.add(tuple(classes.tolist()))
        for x, y, index in zip(torch.cat([batch.support_x[t], batch.query_x[t]]),
                               torch.cat([batch.support_y[t], batch.query_y[t]]),
                               torch.cat([images[:, :2].flatten(), images[:, 2:].flatten()])):
            text = encoded.texts[index]
            assert torch.equal(x, encoded.images[index])  # the ids are those of that text
            intent = encoded.classes[classes[y]]
            assert text.startswith(f"intent {intent.replace('_', ' ')} query")  # and its label names its intent
    assert len(orders) > 1  # labels are remapped per task


def test_a_domain_is_its_intents(fake):
    part = fake.domain("dom2")
    assert part.classes == DOMAINS["dom2"] and set(part.domains) == {"dom2"} and len(part.texts) == 30
    with pytest.raises(ValueError, match="no domain"):
        fake.domain("weather")


REAL = Path(os.environ.get("MLKIT_DATA") or Path.home() / ".local" / "share" / "mlkit") / "clinc150"


@pytest.mark.skipif(not (REAL / "data_full.json").is_file(), reason="CLINC150 not in $MLKIT_DATA/clinc150")
def test_real_clinc150():
    data = CLINC150(REAL)
    assert len(data.classes) == 150 and len(set(data.domains)) == 10 and len(data.texts) == 22500
    assert data.counts.eq(150).all() and {k: len(v) for k, v in data.out_of_scope.items()} == {
        "train": 100, "val": 100, "test": 1000}
    train, val, test = data.split("domains", 0)
    assert (len(train.classes), len(val.classes), len(test.classes)) == (90, 15, 45)
    assert not (set(train.domains) & set(test.domains) or set(val.domains) & set(test.domains))
    digest = hashlib.sha256((REAL / "data_full.json").read_bytes()).hexdigest()
    assert digest == clinc150.RELEASE["data_full.json"][1]

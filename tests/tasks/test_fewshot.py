import pytest
import torch

import mlkit
from mlkit.data import ClassDataset


def synthetic(classes=12, per_class=(6, 9), rotations=(0, 1, 2, 3), size=5, seed=0):
    """Every image is unique and asymmetric, so its source (class, index, rotation) can be read back."""
    g = torch.Generator().manual_seed(seed)
    counts = [per_class[c % len(per_class)] for c in range(classes)]
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    images = torch.randint(0, 256, (len(labels), 1, size, size), generator=g, dtype=torch.uint8)
    return ClassDataset(images, labels, [f"c{c}" for c in range(classes)], rotations)


def source_of(image, dataset):
    """(base class, quarter turns, image index) of an episode image, found by content."""
    raw = (image * 255).round().to(torch.uint8)
    for k in range(4):
        back = torch.rot90(raw, -k, dims=(-2, -1))
        hit = (dataset.images == back).flatten(1).all(1).nonzero().flatten()
        if len(hit):
            return int(dataset.labels[hit[0]]), k, int(hit[0])
    raise AssertionError("episode image not found in the dataset")


@pytest.mark.parametrize("ways, shots, queries", [(5, 1, 3), (3, 2, 4)])
def test_labels_match_the_images_they_came_from(ways, shots, queries):
    dataset = synthetic()
    batch = mlkit.tasks.FewShot(dataset, ways, shots, queries).sample(6, generator=torch.Generator().manual_seed(1))
    for t in range(6):
        seen = {}
        used = set()
        for x, y in [(batch.support_x[t], batch.support_y[t]), (batch.query_x[t], batch.query_y[t])]:
            for image, label in zip(x, y):
                base, turns, index = source_of(image, dataset)
                seen.setdefault(int(label), set()).add((base, turns))
                assert (index, turns) not in used, "an image was used twice in one task"
                used.add((index, turns))
        assert sorted(seen) == list(range(ways))
        assert all(len(s) == 1 for s in seen.values()), "a label mixes images of several classes"
        assert len({next(iter(s)) for s in seen.values()}) == ways, "two labels share one class"
        for label, (source,) in seen.items():
            cls = batch.info["classes"][t, label].item()
            assert source == (cls // 4, cls % 4)


def test_shapes_counts_and_value_range():
    batch = mlkit.tasks.FewShot(synthetic(), ways=5, shots=2, queries=3).sample(4)
    assert batch.support_x.shape == (4, 10, 1, 5, 5) and batch.support_y.shape == (4, 10)
    assert batch.query_x.shape == (4, 15, 1, 5, 5) and batch.query_y.shape == (4, 15)
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    for t in range(4):
        assert torch.bincount(batch.support_y[t], minlength=5).tolist() == [2] * 5
        assert torch.bincount(batch.query_y[t], minlength=5).tolist() == [3] * 5


def test_label_assignment_is_random_across_tasks():
    batch = mlkit.tasks.FewShot(synthetic(rotations=(0,)), ways=3, shots=1, queries=1).sample(
        50, generator=torch.Generator().manual_seed(0))
    label0_class = batch.info["classes"][:, 0]
    assert len(set(label0_class.tolist())) > 5


def test_same_seed_same_episodes():
    family = mlkit.tasks.FewShot(synthetic(), ways=5, shots=1, queries=2)
    a = family.sample(3, generator=torch.Generator().manual_seed(7))
    b = family.sample(3, generator=torch.Generator().manual_seed(7))
    c = family.sample(3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)


def test_split_classes_are_disjoint_and_cover_the_requested_sizes():
    dataset = synthetic(classes=12, rotations=(0,))
    parts = dataset.split_classes([5, 3, 4], seed=0, rotations=(0, 1, 2, 3))
    names = [set(p.classes) for p in parts]
    assert [len(n) for n in names] == [5, 3, 4] and [p.num_classes for p in parts] == [20, 12, 16]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # each part holds exactly the images of its classes
    for part in parts:
        assert len(part.images) == sum(int(dataset.counts[dataset.classes.index(n)]) for n in part.classes)


@pytest.mark.parametrize("kwargs, match", [
    ({"ways": 13 * 4}, "only 48 classes"), ({"shots": 4, "queries": 3}, "smallest class has only 6"),
    ({"ways": 0}, "ways"), ({"shots": 0}, "shots"), ({"queries": -1}, "queries"),
])
def test_impossible_episodes_raise(kwargs, match):
    args = {"ways": 5, "shots": 1, "queries": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        mlkit.tasks.FewShot(synthetic(), **args)


def test_empty_class_list_raises():
    with pytest.raises(ValueError, match="empty"):
        synthetic().subset([])
    with pytest.raises(ValueError, match="empty"):
        ClassDataset(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), [])


def test_digits_is_the_offline_dataset():
    dataset = mlkit.data.digits()
    assert dataset.num_classes == 10 and len(dataset) == 1797 and dataset.images.shape[1:] == (1, 8, 8)
    train, test = dataset.split_classes([5, 5], seed=0)
    assert not set(train.classes) & set(test.classes)
    batch = mlkit.tasks.FewShot(test, ways=5, shots=1, queries=5).sample(2)
    assert batch.support_x.shape == (2, 5, 1, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd"])
def test_meta_training_on_digits_beats_the_untrained_model_on_held_out_digits(algorithm):
    torch.manual_seed(0)
    train, test = mlkit.data.digits().split_classes([7, 3], seed=0)
    model = mlkit.models.Conv4(1, ways=3, filters=16, image_size=8)
    algo = (mlkit.MAML(model, loss="cross_entropy", inner_lr=0.4) if algorithm == "maml"
            else mlkit.MetaSGD(model, loss="cross_entropy", inner_lr=0.4))
    family = mlkit.tasks.FewShot(test, ways=3, shots=5, queries=5)
    before, _ = mlkit.evaluate(algo, family, tasks=200, steps=1)
    mlkit.fit(algo, mlkit.tasks.FewShot(train, ways=3, shots=5, queries=5), iterations=300, meta_batch=8,
              meta_lr=3e-3, progress=False)
    after, ci95 = mlkit.evaluate(algo, family, tasks=200, steps=1)
    # chance is 33%; measured over seeds 0-2: 51-56% before, 85-90% after
    assert after > before + 20 and after - ci95 > 75


@pytest.mark.parametrize("levels", [None, 2**16, 64])
def test_class_choice_is_exactly_the_argsort_prefix_even_with_tied_keys(levels):
    from mlkit.tasks.fewshot import _smallest
    keys = torch.rand(64, 1200, generator=torch.Generator().manual_seed(levels or 0))
    if levels is not None:  # coarse keys: many rows tie among their smallest entries
        keys = (keys * levels).floor() / levels
    for k in (1, 5, 21, 1200):
        assert torch.equal(_smallest(keys, k), keys.argsort(-1)[..., :k])


def test_episodes_come_from_any_torch_dataset_of_x_label_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = torch.arange(60) % 6 * 10 + 3  # labels 3, 13, ..., 53: not 0..k-1
    family = mlkit.tasks.FewShot(torch.utils.data.TensorDataset(x, y), ways=3, shots=2, queries=3)
    assert family.dataset.classes == ["3", "13", "23", "33", "43", "53"]
    batch = family.sample(4, generator=g)
    assert batch.support_x.shape == (4, 6, 4) and batch.query_y.shape == (4, 9)
    # every episode's examples are the dataset's own, with the dataset classes recorded in info
    for t in range(4):
        for k in range(3):
            chosen = x[y == batch.info["classes"][t, k] * 10 + 3]
            assert all(any(torch.equal(e, c) for c in chosen) for e in batch.support_x[t][batch.support_y[t] == k])
    maml = mlkit.MAML(torch.nn.Linear(4, 3), "cross_entropy")
    assert torch.isfinite(maml.meta_loss(batch))


@pytest.mark.parametrize("items, message", [([([0.0, 0.0], 0)], "not a tensor: give the dataset a transform"),
                                            ([(torch.zeros(2), 0), (torch.zeros(3), 1)], "every example needs one shape"),
                                            ([(torch.zeros(2), 0.5)], "one integer class label"), ([], "empty")])
def test_a_dataset_that_cannot_give_episodes_is_refused(items, message):
    with pytest.raises(ValueError, match=message):
        mlkit.tasks.FewShot(items, ways=1, shots=1, queries=1)

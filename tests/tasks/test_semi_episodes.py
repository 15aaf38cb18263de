"""Semi-supervised episodes: labelled and unlabelled pools, distractor classes, the meta-test protocol (Ren et al., 2018)."""
import pytest
import torch

import mlkit
from test_fewshot import source_of, synthetic


def sample(family, tasks=40, seed=0):
    return family.sample(tasks, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rotations", [(0,), (0, 1, 2, 3)])
def test_no_base_image_is_ever_in_both_pools(rotations):
    dataset = synthetic(classes=10, per_class=(20,), rotations=rotations)
    family = mlkit.tasks.FewShot(dataset, ways=3, shots=1, queries=1, unlabeled=5, distractors=2, labeled_fraction=0.1)
    labelled, unlabelled = set(), set()
    for seed in range(5):
        batch = sample(family, seed=seed)
        labelled |= set(batch.info["images"].flatten().tolist())
        unlabelled |= set(batch.info["unlabeled_images"].flatten().tolist())
    assert not labelled & unlabelled
    assert len(labelled) == 10 * 2, "every class's 2 labelled drawings (10% of 20) and no others are used as labelled"
    assert len(unlabelled) > 100


def test_the_split_is_fixed_by_its_seed_and_differs_between_seeds():
    dataset = synthetic(classes=10, per_class=(20,), rotations=(0,))
    pools = [mlkit.tasks.FewShot(dataset, 3, 1, 1, unlabeled=2, labeled_fraction=0.1, seed=s).pools[0] for s in (0, 0, 1)]
    assert torch.equal(pools[0], pools[1]) and not torch.equal(pools[0], pools[2])


@pytest.mark.parametrize("labeled_fraction", [None, 0.5])
def test_images_come_from_the_classes_info_names_and_distractors_are_never_task_classes(labeled_fraction):
    dataset = synthetic(classes=12, per_class=(10, 12), rotations=(0, 1, 2, 3))
    family = mlkit.tasks.FewShot(dataset, ways=3, shots=2, queries=1, unlabeled=2, distractors=4,
                                 labeled_fraction=labeled_fraction)
    batch = sample(family, tasks=8)
    info = batch.info
    for t in range(8):
        classes, distractors = set(info["classes"][t].tolist()), set(info["distractors"][t].tolist())
        assert len(distractors) == 4 and not classes & distractors
        for image, cls, index, is_distractor in zip(batch.unlabeled_x[t], info["unlabeled_classes"][t],
                                                    info["unlabeled_images"][t], info["unlabeled_is_distractor"][t]):
            base, turns, found = source_of(image, dataset)
            assert (base, turns) == (int(cls) // 4, int(cls) % 4) and found == int(index)
            assert bool(is_distractor) == (int(cls) in distractors)
        used = info["images"][t].flatten().tolist() + info["unlabeled_images"][t][~info["unlabeled_is_distractor"][t]].tolist()
        per_class = {}
        for c, i in zip(info["classes"][t].repeat_interleave(3).tolist() + info["unlabeled_classes"][t][
                ~info["unlabeled_is_distractor"][t]].tolist(), used):
            per_class.setdefault(c, []).append(i)
        assert all(len(v) == len(set(v)) == 5 for v in per_class.values()), "a class's images repeat within an episode"


def test_shapes_dtypes_and_counts_per_class():
    family = mlkit.tasks.FewShot(synthetic(), ways=3, shots=2, queries=1, unlabeled=2, distractors=4)
    batch = sample(family, tasks=5)
    assert batch.support_x.shape == (5, 6, 1, 5, 5) and batch.query_x.shape == (5, 3, 1, 5, 5)
    assert batch.unlabeled_x.shape == (5, (3 + 4) * 2, 1, 5, 5) and batch.unlabeled_x.dtype == torch.float32
    assert 0 <= batch.unlabeled_x.min() and batch.unlabeled_x.max() <= 1
    assert batch.info["distractors"].shape == (5, 4) and batch.info["unlabeled_is_distractor"].dtype == torch.bool
    for t in range(5):
        counts = torch.unique(batch.info["unlabeled_classes"][t], return_counts=True)[1]
        assert counts.tolist() == [2] * 7
        assert int(batch.info["unlabeled_is_distractor"][t].sum()) == 8
    assert batch[1:3].unlabeled_x.shape[0] == 2 and batch.to(torch.float64).unlabeled_x.dtype == torch.float64


def test_unlabelled_images_come_in_a_random_order():
    batch = sample(mlkit.tasks.FewShot(synthetic(), ways=3, shots=1, queries=1, unlabeled=3, distractors=2), tasks=20)
    first = batch.info["unlabeled_is_distractor"][:, 0]
    assert 0 < int(first.sum()) < 20


def test_test_episodes_share_support_and_query_with_the_plain_episodes():
    dataset = synthetic()
    plain = sample(mlkit.tasks.FewShot(dataset, ways=4, shots=1, queries=2), tasks=6)
    for unlabeled, distractors in [(2, 0), (3, 5)]:
        semi = sample(mlkit.tasks.FewShot(dataset, ways=4, shots=1, queries=2, unlabeled=unlabeled,
                                          distractors=distractors), tasks=6)
        assert torch.equal(semi.support_x, plain.support_x) and torch.equal(semi.query_x, plain.query_x)
        assert torch.equal(semi.info["classes"], plain.info["classes"])


def test_without_the_new_options_there_is_no_unlabelled_set():
    batch = sample(mlkit.tasks.FewShot(synthetic(), ways=3, shots=1, queries=2), tasks=2)
    assert batch.unlabeled_x is None and set(batch.info) == {"classes", "images"}
    labelled_only = sample(mlkit.tasks.FewShot(synthetic(per_class=(20,)), 3, 1, 1, labeled_fraction=0.1), tasks=2)
    assert labelled_only.unlabeled_x is None


@pytest.mark.parametrize("kwargs, match", [
    ({"unlabeled": -1}, "unlabeled must be a non-negative integer"),
    ({"distractors": 2}, "distractors=2 but unlabeled=0"),
    ({"unlabeled": 1, "distractors": 47}, "ways \\+ distractors = 49 but the dataset has only 48 classes"),
    ({"unlabeled": 4}, "shots \\+ queries \\+ unlabeled = 6 but the smallest class has only 5"),
    ({"labeled_fraction": 0}, "labeled_fraction must be None"),
    ({"labeled_fraction": 1.5}, "labeled_fraction must be None"),
    ({"labeled_fraction": 0.2}, "shots \\+ queries = 2 but with labeled_fraction=0.2 the smallest class has only 1"),
    ({"labeled_fraction": 0.8, "unlabeled": 2}, "unlabeled = 2 but with labeled_fraction=0.8 the smallest class has only 1"),
])
def test_requests_a_pool_cannot_meet_raise_before_sampling(kwargs, match):
    dataset = synthetic(classes=12, per_class=(5, 9))
    with pytest.raises(ValueError, match=match):
        mlkit.tasks.FewShot(dataset, **{"ways": 2, "shots": 1, "queries": 1, **kwargs})

"""N-way K-shot classification episodes drawn from a ClassDataset, optionally with unlabelled images and distractors."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .batch import TaskBatch
from ..checks import positive_int


class FewShot:
    """Tasks of ``ways`` classes drawn from ``dataset``, with ``shots`` support and ``queries`` query
    images per class; labels are remapped to ``0..ways-1`` at random in every task.

    Args:
        dataset: a :class:`mlkit.data.ClassDataset` (rotated copies of a class count as classes), or any map-style
            torch ``Dataset`` of ``(x, label)`` items (``TensorDataset(x, y)``, a torchvision dataset with a
            tensor transform), loaded once with :meth:`mlkit.data.ClassDataset.from_dataset`.
        ways, shots, queries: N, K, and query images per class.
        unlabeled: M, unlabelled images of each task class (and of each distractor class) per episode.
        distractors: H, classes outside the task, drawn from the dataset's other classes, that contribute M
            unlabelled images each and nothing else.
        labeled_fraction: ``None`` (the meta-test protocol): support, query and unlabelled images are drawn
            from all of a class's images, distinct within the episode. A fraction p in (0, 1] (meta-training):
            every base class's images are split once, with ``seed``, into a labelled pool of ⌊p·n⌋ images
            and an unlabelled pool of the rest; support and query images come only from the labelled pool,
            unlabelled images only from the unlabelled pool. The split is by base image, so the rotated
            copies of a drawing are always in the same pool.
        seed: fixes the labelled/unlabelled split (episodes are fixed by ``sample``'s generator).

    ``sample`` returns support ``[tasks, ways*shots, C, H, W]`` float in [0, 1] for uint8 images (other examples,
    such as token ids ``[tasks, ways*shots, length]``, keep their type), labels ``[tasks, ways*shots]``,
    query ``[tasks, ways*queries, ...]``; ``info["classes"]`` ``[tasks, ways]`` holds the dataset class of each
    label and ``info["images"]`` ``[tasks, ways, shots+queries]`` the index of each support and query image.
    With ``unlabeled > 0`` the batch also has ``unlabeled_x [tasks, (ways+distractors)*unlabeled, ...]`` in a
    random order, with no labels; ``info`` records where they came from: ``"distractors"`` ``[tasks, H]`` (the
    dataset classes used as distractors), ``"unlabeled_classes"`` and ``"unlabeled_images"`` ``[tasks, n]``,
    and ``"unlabeled_is_distractor"`` ``[tasks, n]`` (bool). With the same generator, an episode's support
    and query sets do not depend on ``unlabeled`` or ``distractors`` in the meta-test protocol.

    The semi-supervised protocol is that of Ren et al., "Meta-Learning for Semi-Supervised Few-Shot
    Classification", ICLR 2018, and of their public code.
    """

    def __init__(self, dataset, ways: int = 5, shots: int = 1, queries: int = 15, unlabeled: int = 0,
                 distractors: int = 0, labeled_fraction: float | None = None, seed: int = 0):
        from ..data.dataset import ClassDataset  # mlkit.data's loaders are not needed to sample episodes

        if not isinstance(dataset, ClassDataset):
            dataset = ClassDataset.from_dataset(dataset)
        self.dataset = dataset
        self.ways = positive_int("ways", ways)
        self.shots = positive_int("shots", shots)
        self.queries = positive_int("queries", queries)
        self.unlabeled = _count("unlabeled", unlabeled)
        self.distractors = _count("distractors", distractors)
        self.labeled_fraction = labeled_fraction
        if dataset.num_classes == 0:
            raise ValueError("the dataset has no classes")
        if self.distractors and not self.unlabeled:
            raise ValueError(f"distractors={distractors} but unlabeled=0: distractor classes only contribute "
                             "unlabelled images; set unlabeled >= 1 or distractors=0")
        if ways + self.distractors > dataset.num_classes:
            raise ValueError(f"ways + distractors = {ways + self.distractors} but the dataset has only "
                             f"{dataset.num_classes} classes; lower ways or distractors")
        if labeled_fraction is None:
            smallest = int(dataset.counts.min())
            if shots + queries + self.unlabeled > smallest:
                raise ValueError(f"shots + queries + unlabeled = {shots + queries + self.unlabeled} but the smallest "
                                 f"class has only {smallest} images; lower shots, queries or unlabeled")
            self.pools = None
            return
        if (isinstance(labeled_fraction, bool) or not isinstance(labeled_fraction, (int, float))
                or not 0 < labeled_fraction <= 1):
            raise ValueError(f"labeled_fraction must be None (the meta-test protocol) or a fraction in (0, 1], "
                             f"got {labeled_fraction!r}")
        labeled = torch.floor(dataset.counts * float(labeled_fraction) + 1e-9).long()
        unlabeled_counts = dataset.counts - labeled
        if shots + queries > int(labeled.min()):
            raise ValueError(f"shots + queries = {shots + queries} but with labeled_fraction={labeled_fraction} the "
                             f"smallest class has only {int(labeled.min())} labelled images; lower shots or queries "
                             "or raise labeled_fraction")
        if self.unlabeled > int(unlabeled_counts.min()):
            raise ValueError(f"unlabeled = {self.unlabeled} but with labeled_fraction={labeled_fraction} the smallest "
                             f"class has only {int(unlabeled_counts.min())} unlabelled images; lower unlabeled or "
                             "labeled_fraction")
        self.pools = _split_pools(dataset.members, labeled, seed)

    def __repr__(self) -> str:
        extra = ""
        if self.unlabeled:
            extra = f", {self.unlabeled} unlabelled per class, {self.distractors} distractor classes"
        if self.labeled_fraction is not None:
            extra += f", {self.labeled_fraction:g} labelled"
        return f"FewShot({self.ways}-way {self.shots}-shot, {self.queries} queries{extra}, {self.dataset!r})"

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
        """Draw ``tasks`` episodes, deterministic under ``generator``."""
        positive_int("tasks", tasks)
        ds, ways, labeled_per_class, m = self.dataset, self.ways, self.shots + self.queries, self.unlabeled
        chosen = _smallest(torch.rand(tasks, ds.num_classes, generator=generator), ways + self.distractors)
        classes, distractors = chosen[:, :ways], chosen[:, ways:]                              # [tasks, ways], [tasks, H]
        if self.pools is None:
            # Support, query and unlabelled images of a task class: distinct images of that class.
            picked = _pick(ds.members[classes // len(ds.rotations)], labeled_per_class + m, generator)
            labeled, unlabeled = picked[..., :labeled_per_class], picked[..., labeled_per_class:]
            if self.distractors:
                extra = _pick(ds.members[distractors // len(ds.rotations)], m, generator)
                unlabeled = torch.cat([unlabeled, extra], 1)
        else:
            labeled_pool, unlabeled_pool = self.pools
            labeled = _pick(labeled_pool[classes // len(ds.rotations)], labeled_per_class, generator)
            unlabeled = _pick(unlabeled_pool[chosen // len(ds.rotations)], m, generator) if m else None
        labels = torch.arange(ways).view(1, ways, 1).expand(tasks, ways, labeled_per_class)

        def part(t: Tensor, lo: int, hi: int) -> Tensor:
            return t[:, :, lo:hi].flatten(1, 2)

        images = self._images(labeled, classes)                                                # [tasks, ways, n, ...]
        info = {"classes": classes, "images": labeled}
        unlabeled_x = None
        if m:
            # The unlabelled set in a random order, so that its position says nothing about its class.
            order = torch.rand(tasks, chosen.shape[1] * m, generator=generator).argsort(1)
            unlabeled_x = _take(self._images(unlabeled, chosen).flatten(1, 2), order)
            source = chosen[:, :, None].expand(-1, -1, m).flatten(1)
            info.update(distractors=distractors, unlabeled_classes=source.gather(1, order),
                        unlabeled_images=unlabeled.flatten(1).gather(1, order),
                        unlabeled_is_distractor=(torch.arange(source.shape[1]) >= ways * m).expand(tasks, -1)
                        .gather(1, order))
        batch = TaskBatch(part(images, 0, self.shots), part(labels, 0, self.shots),
                          part(images, self.shots, labeled_per_class), part(labels, self.shots, labeled_per_class),
                          info, unlabeled_x)
        return batch if device is None else batch.to(device)

    def _images(self, picked: Tensor, classes: Tensor) -> Tensor:
        """The examples at indices ``picked [tasks, k, n]`` of dataset classes ``classes [tasks, k]``, each
        class's rotation applied, uint8 scaled to float in [0, 1]."""
        ds = self.dataset
        images = _rotate(ds.images[picked], torch.as_tensor(ds.rotations)[classes % len(ds.rotations)])
        if images.dtype == torch.uint8:
            return images.float() / 255
        if images.is_floating_point():
            return images.float()      # other integer examples (token ids) keep their type
        return images


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _smallest(keys: Tensor, k: int) -> Tensor:
    """``keys.argsort(-1)[..., :k]``, exactly, from a top-k: the full sort of thousands of class keys was most of
    a meta-batch's sampling time. Rows whose k + 1 smallest keys are not all distinct (a tie could be ordered
    either way) fall back to argsort."""
    if k >= keys.shape[-1]:
        return keys.argsort(-1)[..., :k]
    values, smallest = keys.topk(k + 1, -1, largest=False, sorted=True)
    smallest = smallest[..., :k]
    tied = (values[..., 1:] == values[..., :-1]).any(-1)
    if tied.any():
        smallest[tied] = keys[tied].argsort(-1)[..., :k]
    return smallest


def _pick(members: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` distinct entries of each row of ``members [..., max]`` (padded with -1), in random order."""
    keys = torch.rand(members.shape, generator=generator).masked_fill(members < 0, 2.0)
    return members.gather(-1, keys.argsort(-1)[..., :n])


def _split_pools(members: Tensor, labeled: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Each base class's images shuffled with ``seed``: the first ``labeled[c]`` form the labelled pool, the
    rest the unlabelled pool. Returns both as ``[base classes, max]`` indices padded with -1."""
    shuffled = _pick(members, members.shape[1], torch.Generator().manual_seed(seed))   # valid entries first
    counts = (members >= 0).sum(1, keepdim=True)
    position = torch.arange(members.shape[1])
    labeled_pool = shuffled.masked_fill(position >= labeled[:, None], -1)
    source = (position + labeled[:, None]).clamp(max=members.shape[1] - 1)
    unlabeled_pool = shuffled.gather(1, source).masked_fill(position + labeled[:, None] >= counts, -1)
    return labeled_pool, unlabeled_pool


def _take(x: Tensor, order: Tensor) -> Tensor:
    """``x[t, order[t]]`` for every task t: x ``[tasks, n, *item]``, order ``[tasks, n]``."""
    return x[torch.arange(x.shape[0])[:, None], order]


def _rotate(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate ``images [tasks, ways, n, C, H, W]`` by ``turns [tasks, ways]`` quarter turns each."""
    if not bool((turns != 0).any()):
        return images
    out = images.clone()
    for k in (1, 2, 3):
        mask = turns == k
        if bool(mask.any()):
            out[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
    return out

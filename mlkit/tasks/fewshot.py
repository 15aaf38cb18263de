"""N-way K-shot classification episodes drawn from a ClassDataset."""
from __future__ import annotations

import torch
from torch import Tensor

from .batch import TaskBatch
from ..checks import positive_int


class FewShot:
    """Tasks of ``ways`` classes drawn from ``dataset``, with ``shots`` support and ``queries`` query
    images per class; labels are remapped to ``0..ways-1`` at random in every task.

    Args:
        dataset: a :class:`mlkit.data.ClassDataset` (rotated copies of a class count as classes).
        ways, shots, queries: N, K, and query images per class.
    ``sample`` returns support ``[tasks, ways*shots, C, H, W]`` float in [0, 1] for uint8 images (other examples,
    such as token ids ``[tasks, ways*shots, length]``, keep their type), labels ``[tasks, ways*shots]``,
    query ``[tasks, ways*queries, ...]``; ``info["classes"]`` ``[tasks, ways]`` holds the dataset class of each label.
    """

    def __init__(self, dataset, ways: int = 5, shots: int = 1, queries: int = 15):
        self.dataset = dataset
        self.ways = positive_int("ways", ways)
        self.shots = positive_int("shots", shots)
        self.queries = positive_int("queries", queries)
        if dataset.num_classes == 0:
            raise ValueError("the dataset has no classes")
        if ways > dataset.num_classes:
            raise ValueError(f"ways={ways} but the dataset has only {dataset.num_classes} classes; lower ways")
        smallest = int(dataset.counts.min())
        if shots + queries > smallest:
            raise ValueError(f"shots + queries = {shots + queries} but the smallest class has only {smallest} images; "
                             "lower shots or queries")

    def __repr__(self) -> str:
        return f"FewShot({self.ways}-way {self.shots}-shot, {self.queries} queries, {self.dataset!r})"

    def sample(self, tasks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
        """Draw ``tasks`` episodes, deterministic under ``generator``."""
        positive_int("tasks", tasks)
        ds, ways, per_class = self.dataset, self.ways, self.shots + self.queries
        classes = torch.rand(tasks, ds.num_classes, generator=generator).argsort(1)[:, :ways]   # [tasks, ways]
        base, turns = classes // len(ds.rotations), classes % len(ds.rotations)
        # Pick per_class distinct images of each chosen class: sort random keys, padding slots last.
        members = ds.members[base]                                                             # [tasks, ways, max]
        keys = torch.rand(members.shape, generator=generator).masked_fill(members < 0, 2.0)
        picked = members.gather(2, keys.argsort(2)[..., :per_class])                          # [tasks, ways, n]
        images = ds.images[picked]                                                             # [tasks, ways, n, C, H, W]
        images = _rotate(images, torch.as_tensor(ds.rotations)[turns])
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif images.is_floating_point():
            images = images.float()      # other integer examples (token ids) keep their type
        labels = torch.arange(ways).view(1, ways, 1).expand(tasks, ways, per_class)

        def part(t: Tensor, lo: int, hi: int) -> Tensor:
            return t[:, :, lo:hi].flatten(1, 2)

        batch = TaskBatch(part(images, 0, self.shots), part(labels, 0, self.shots),
                          part(images, self.shots, per_class), part(labels, self.shots, per_class),
                          {"classes": classes, "images": picked})
        return batch if device is None else batch.to(device)


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

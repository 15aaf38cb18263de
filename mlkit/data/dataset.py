"""ClassDataset: labelled examples (images, token ids, ...) grouped by class, the input of few-shot episode sampling."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class ClassDataset:
    """Examples with class labels; optionally every class of images also seen rotated by quarter turns as new classes.

    Args:
        images: the examples ``[N, *item]``: images ``[N, C, H, W]`` as uint8 (0..255) or float, or anything
            else with a leading example dimension, such as padded token ids ``[N, length]`` (int64).
        labels: ``[N]`` int64 base-class ids in ``0..len(classes)-1``.
        classes: a name per base class.
        rotations: quarter turns applied to every base class, each making a distinct class (the MAML
            paper's Omniglot augmentation uses ``(0, 1, 2, 3)``). Class ``c`` is base class
            ``c // len(rotations)`` turned ``rotations[c % len(rotations)]`` times. Images only.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], rotations: Sequence[int] = (0,)):
        if not isinstance(images, Tensor) or images.dim() < 1:
            raise ValueError(f"images must be a tensor [N, *item] of examples, got {type(images).__name__}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N] = [{images.shape[0]}], got shape {tuple(labels.shape)}")
        if len(classes) == 0:
            raise ValueError("a ClassDataset needs at least one class; the class list is empty")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1} (one per class name)")
        if not rotations or any(r not in (0, 1, 2, 3) for r in rotations) or len(set(rotations)) != len(rotations):
            raise ValueError(f"rotations must be distinct quarter turns from (0, 1, 2, 3), got {tuple(rotations)}")
        if tuple(rotations) != (0,) and images.dim() != 4:
            raise ValueError(f"rotations apply to images [N, C, H, W]; these examples have shape {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        self.classes, self.rotations = list(classes), tuple(rotations)
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        if (counts == 0).any():
            empty = [self.classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()[:3]]
            raise ValueError(f"every class needs at least one image; these have none: {empty}")
        # members[c, j] = index of the j-th image of base class c, padded with -1.
        order = torch.argsort(self.labels, stable=True)
        self.counts = counts
        self.members = torch.full((len(self.classes), int(counts.max())), -1, dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        position = torch.arange(len(order)) - starts[self.labels[order]]
        self.members[self.labels[order], position] = order

    @classmethod
    def from_dataset(cls, dataset, classes: Sequence[str] | None = None) -> "ClassDataset":
        """Every ``(x, label)`` example of a map-style ``torch.utils.data.Dataset`` (a ``TensorDataset``, a
        torchvision dataset with a tensor transform, ...), loaded once into memory as a ClassDataset.

        Args:
            dataset: ``len(dataset)`` items, each ``(x, label)``: ``x`` a tensor of one shape ``[*item]`` (uint8
                images are scaled to [0, 1] by :class:`mlkit.tasks.FewShot`), ``label`` an integer.
            classes: a name per distinct label, in sorted label order; default ``dataset.classes`` when it
                names every label ``0..k-1``, else the labels as strings.
        Returns:
            A ClassDataset with the labels remapped to ``0..k-1`` in sorted order.
        """
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"dataset must be a map-style torch Dataset (len and [i]) of (x, label) items, got "
                             f"{type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        xs, ys = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(f"dataset[{i}] must be an (x, label) pair, got {type(item).__name__}")
            x, y = item[0], item[1]
            if not isinstance(x, Tensor):
                raise ValueError(f"dataset[{i}][0] is a {type(x).__name__}, not a tensor: give the dataset a transform "
                                 "that returns tensors (e.g. torchvision.transforms.ToTensor())")
            if xs and x.shape != xs[0].shape:
                raise ValueError(f"dataset[{i}][0] has shape {list(x.shape)} but dataset[0][0] has {list(xs[0].shape)}; "
                                 "every example needs one shape (resize or pad them)")
            y = torch.as_tensor(y)
            if y.numel() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"dataset[{i}][1] must be one integer class label, got {item[1]!r}")
            xs.append(x)
            ys.append(int(y))
        labels, remapped = torch.unique(torch.tensor(ys), sorted=True, return_inverse=True)
        if classes is None:
            names = getattr(dataset, "classes", None)
            contiguous = torch.equal(labels, torch.arange(len(labels)))
            classes = list(names) if names is not None and contiguous and len(names) == len(labels) else \
                [str(label) for label in labels.tolist()]
        elif len(classes) != len(labels):
            raise ValueError(f"classes names {len(classes)} classes but the dataset has {len(labels)} distinct labels")
        return cls(torch.stack(xs), remapped, classes)

    @property
    def num_classes(self) -> int:
        """Number of classes, rotations counted as classes."""
        return len(self.classes) * len(self.rotations)

    def __len__(self) -> int:
        return self.images.shape[0] * len(self.rotations)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.classes)} classes x {len(self.rotations)} rotations, "
                f"{self.images.shape[0]} examples of {tuple(self.images.shape[1:])})")

    def subset(self, base_classes: Sequence[int] | Tensor, rotations: Sequence[int] | None = None) -> "ClassDataset":
        """The examples of the given base classes (relabelled ``0..len-1`` in that order)."""
        base_classes = torch.as_tensor(base_classes, dtype=torch.long).flatten()
        if base_classes.numel() == 0:
            raise ValueError("subset needs at least one class; the class list is empty")
        if len(set(base_classes.tolist())) != base_classes.numel():
            raise ValueError("subset classes must be distinct")
        remap = torch.full((len(self.classes),), -1, dtype=torch.long)
        remap[base_classes] = torch.arange(base_classes.numel())
        keep = remap[self.labels] >= 0
        return ClassDataset(self.images[keep], remap[self.labels[keep]], [self.classes[i] for i in base_classes.tolist()],
                            self.rotations if rotations is None else rotations)

    def split_classes(self, sizes: Sequence[int], seed: int = 0, rotations: Sequence[int] | None = None) -> list["ClassDataset"]:
        """Shuffle the base classes with ``seed`` and cut them into disjoint parts of the given ``sizes``."""
        if any(s <= 0 for s in sizes) or sum(sizes) > len(self.classes):
            raise ValueError(f"split sizes {list(sizes)} must be positive and sum to at most {len(self.classes)} classes")
        order = torch.randperm(len(self.classes), generator=torch.Generator().manual_seed(seed))
        parts, start = [], 0
        for size in sizes:
            parts.append(self.subset(order[start:start + size], rotations))
            start += size
        return parts


def digits() -> ClassDataset:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, classes "0".."9".

    Offline and small, so every chapter of the book can run on it. Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images * (255 / 16)).round().to(torch.uint8)[:, None]
    return ClassDataset(images, torch.as_tensor(bunch.target), [str(d) for d in range(10)])

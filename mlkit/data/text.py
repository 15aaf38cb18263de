"""Text for few-shot episodes: a hashed n-gram tokenizer that needs no download, padded token ids, and TextDataset."""
from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import Tensor

from .dataset import ClassDataset

PAD = 0  # the id of padding; real features have ids 1..vocab_size-1
_WORD = re.compile(r"[a-z0-9']+")


def check_texts(texts, name: str = "texts") -> list[str]:
    """``texts`` as a list, else one ValueError: a single string or a non-string entry is refused."""
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{name} must hold strings only, got a {type(bad[0]).__name__}: {bad[0]!r}")
    return texts


class HashedNgrams:
    """A tokenizer with no downloaded model: word uni- and bigrams plus character n-grams, hashed into a fixed
    number of buckets, with a vocabulary of the buckets seen in the texts it is fitted on.

    A text is lower-cased and split into words (letters, digits, apostrophes). Its features are its words, its
    word bigrams (``"w1 w2"``) and the character n-grams of every word padded as ``<word>`` (as fastText
    does), each counted once per text. A feature's bucket is the CRC-32 of its UTF-8 text modulo ``buckets``,
    the same in every process. :meth:`fit` keeps the buckets that occur in at least ``min_count`` of the
    fitting texts and numbers them ``1..V`` by decreasing document frequency; id 0 is padding, and features
    whose bucket was not kept are dropped. Fit it on meta-training texts only, so that nothing about the
    test classes leaks into the inputs.

    Args:
        buckets: size of the hashing space (collisions merge features).
        char_ngrams: ``(min, max)`` lengths of character n-grams; ``None`` for words only.
        word_ngrams: 1 (words) or 2 (words and bigrams).
        min_count: the fewest fitting texts a bucket must occur in to get an id.

    Attributes (after :meth:`fit`): ``vocab_size`` (V + 1, padding included), ``document_frequency``
    ``[vocab_size]`` (texts holding each id, 0 for padding) and ``idf`` ``[vocab_size]``, the smoothed inverse
    document frequency ``log((1 + n) / (1 + df)) + 1`` of scikit-learn's TfidfVectorizer.
    Reference for the features: Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017.
    """

    def __init__(self, buckets: int = 2 ** 20, char_ngrams: tuple[int, int] | None = (3, 3), word_ngrams: int = 2,
                 min_count: int = 2):
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be a positive int, got {buckets!r}")
        if char_ngrams is not None:
            if (not isinstance(char_ngrams, (tuple, list)) or len(char_ngrams) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) for n in char_ngrams)
                    or not 1 <= char_ngrams[0] <= char_ngrams[1]):
                raise ValueError(f"char_ngrams must be None or (min, max) with 1 <= min <= max, got {char_ngrams!r}")
            char_ngrams = (int(char_ngrams[0]), int(char_ngrams[1]))
        if word_ngrams not in (1, 2) or isinstance(word_ngrams, bool):
            raise ValueError(f"word_ngrams must be 1 (words) or 2 (words and bigrams), got {word_ngrams!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive int, got {min_count!r}")
        self.buckets, self.char_ngrams, self.word_ngrams, self.min_count = buckets, char_ngrams, word_ngrams, min_count
        self._ids: dict[int, int] | None = None

    def __repr__(self) -> str:
        fitted = f", vocab_size={self.vocab_size}" if self._ids is not None else ", not fitted"
        return (f"HashedNgrams(buckets={self.buckets}, char_ngrams={self.char_ngrams}, word_ngrams={self.word_ngrams}, "
                f"min_count={self.min_count}{fitted})")

    def features(self, text: str) -> list[str]:
        """The distinct features of ``text`` in order of appearance: words, bigrams, then character n-grams."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        words = _WORD.findall(text.lower())
        out = list(words)
        if self.word_ngrams == 2:
            out += [f"{a} {b}" for a, b in zip(words[:-1], words[1:])]
        if self.char_ngrams is not None:
            lo, hi = self.char_ngrams
            for word in words:
                padded = f"<{word}>"
                out += [padded[i:i + n] for n in range(lo, hi + 1) for i in range(len(padded) - n + 1)]
        return list(dict.fromkeys(out))

    def buckets_of(self, text: str) -> list[int]:
        """The distinct hash buckets of ``text``'s features."""
        return list(dict.fromkeys(zlib.crc32(f.encode("utf-8")) % self.buckets for f in self.features(text)))

    def fit(self, texts: Sequence[str]) -> "HashedNgrams":
        """Build the vocabulary and document frequencies from ``texts`` (meta-training texts only). Returns self."""
        texts = check_texts(texts)
        if not texts:
            raise ValueError("fit needs at least one text")
        counts = Counter(b for text in texts for b in self.buckets_of(text))
        kept = sorted((b for b, c in counts.items() if c >= self.min_count), key=lambda b: (-counts[b], b))
        if not kept:
            raise ValueError(f"no feature occurs in {self.min_count} or more of the {len(texts)} texts; lower min_count")
        self._ids = {b: i + 1 for i, b in enumerate(kept)}
        self.document_frequency = torch.tensor([0] + [counts[b] for b in kept], dtype=torch.long)
        self.idf = torch.log((1.0 + len(texts)) / (1.0 + self.document_frequency.double())).float() + 1.0
        self.idf[PAD] = 0.0
        self.fitted_texts = len(texts)
        return self

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding included (the rows of an embedding table)."""
        self._check_fitted()
        return len(self._ids) + 1

    def _check_fitted(self) -> None:
        if self._ids is None:
            raise ValueError("this tokenizer is not fitted yet: call fit(meta_train_texts) first")

    def ids(self, text: str) -> list[int]:
        """The ids of ``text``'s known features (unknown ones dropped), in order of appearance."""
        self._check_fitted()
        return [self._ids[b] for b in self.buckets_of(text) if b in self._ids]

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Padded token ids of ``texts``.

        Args:
            texts: ``n`` strings.
            max_length: cut every text's ids to this many (``None``: the longest text's count).
        Returns:
            ``(ids, lengths)``: ids ``[n, L]`` int64 padded with 0, and lengths ``[n]`` int64 (the number of
            non-padding ids of each text, 0 when no feature of it is known).
        """
        texts = check_texts(texts)
        self._check_fitted()
        return pad([self.ids(t) for t in texts], max_length)


def pad(sequences: Sequence[Sequence[int]], max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Stack id lists into one tensor padded with 0.

    Args:
        sequences: ``n`` lists of positive ids.
        max_length: the width ``L`` (longer lists are cut); ``None``: the longest list (at least 1).
    Returns:
        ``(ids [n, L] int64, lengths [n] int64)``. The mask of real ids is ``ids != 0``.
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be None or a positive int, got {max_length!r}")
    sequences = [list(s) for s in sequences]
    if any(i <= 0 for s in sequences for i in s):
        raise ValueError("ids must be positive: 0 is padding")
    width = max_length if max_length is not None else max([len(s) for s in sequences] + [1])
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    lengths = torch.zeros(len(sequences), dtype=torch.long)
    for row, s in enumerate(sequences):
        s = s[:width]
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        lengths[row] = len(s)
    return ids, lengths


class TextDataset(ClassDataset):
    """A :class:`ClassDataset` of texts: one class per intent (or topic), its domain recorded.

    Before encoding, each example is its own index ``[N, 1]`` into ``texts``; :meth:`encode` returns the same
    dataset with padded token ids ``[N, L]`` as examples, and :meth:`embed` with a pretrained encoder's
    embeddings ``[N, dim]``; :class:`mlkit.tasks.FewShot` turns either into text episodes (``info["images"]``
    holds the index of every support and query text, so ``texts[i]`` shows it).

    Args:
        texts: ``N`` strings; labels: ``[N]`` class ids; classes: a name per class;
        domains: the domain of each class (``len(classes)`` names).
        ids: ``[N, L]`` padded token ids (int64) or ``[N, dim]`` embeddings (float), or ``None`` for the index form.
    """

    def __init__(self, texts: Sequence[str], labels: Tensor, classes: Sequence[str], domains: Sequence[str],
                 ids: Tensor | None = None):
        texts = check_texts(texts)
        if len(domains) != len(classes):
            raise ValueError(f"domains must name the domain of each of the {len(classes)} classes, got {len(domains)}")
        self.encoded = ids is not None
        if ids is None:
            ids = torch.arange(len(texts))[:, None]
        elif (not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != len(texts)
              or not (ids.dtype == torch.long or ids.is_floating_point())):
            raise ValueError(f"ids must be int64 token ids [N, L] or float embeddings [N, dim] with N = {len(texts)} "
                             f"texts, got {getattr(ids, 'dtype', type(ids).__name__)} {list(getattr(ids, 'shape', []))}")
        super().__init__(ids, torch.as_tensor(labels, dtype=torch.long), classes)
        self.texts, self.domains = texts, list(domains)

    def __repr__(self) -> str:
        what = ("texts" if not self.encoded else f"embeddings of width {self.images.shape[1]}"
                if self.images.is_floating_point() else f"token ids of length {self.images.shape[1]}")
        return (f"{type(self).__name__}({len(self.classes)} classes in {len(set(self.domains))} domains, "
                f"{len(self.texts)} {what})")

    def subset(self, base_classes, rotations=None) -> "TextDataset":
        """The examples of the given classes (relabelled ``0..len-1`` in that order), texts and domains kept."""
        if rotations not in (None, (0,), [0]):
            raise ValueError("texts cannot be rotated")
        base_classes = torch.as_tensor(base_classes, dtype=torch.long).flatten()
        part = super().subset(base_classes)
        keep = torch.isin(self.labels, base_classes).nonzero().flatten()
        # ClassDataset.subset keeps examples in their order: the same order as ``keep``.
        return TextDataset([self.texts[i] for i in keep.tolist()], part.labels, part.classes,
                           [self.domains[i] for i in base_classes.tolist()], self.images[keep] if self.encoded else None)

    def domain(self, name: str) -> "TextDataset":
        """The classes of one domain."""
        if name not in self.domains:
            raise ValueError(f"no domain {name!r} here; domains: {sorted(set(self.domains))}")
        return self.subset([c for c, d in enumerate(self.domains) if d == name])

    def encode(self, tokenizer: HashedNgrams, max_length: int | None = None) -> "TextDataset":
        """The same texts with padded token ids ``[N, L]`` as examples (see :meth:`HashedNgrams.encode`)."""
        ids, _ = tokenizer.encode(self.texts, max_length)
        return TextDataset(self.texts, self.labels, self.classes, self.domains, ids)

    def embed(self, encoder, progress: bool = True) -> "TextDataset":
        """The same texts with a frozen encoder's embeddings ``[N, dim]`` as examples.

        Args:
            encoder: anything with ``embed(texts, progress) -> [N, dim]``, such as
                :class:`mlkit.models.SentenceEncoder` (which caches, so a second call is free).
        """
        if not callable(getattr(encoder, "embed", None)):
            raise ValueError(f"encoder must have an embed(texts) method (e.g. mlkit.models.SentenceEncoder), "
                             f"got {type(encoder).__name__}")
        features = encoder.embed(self.texts, progress=progress)
        if not isinstance(features, Tensor) or features.shape[:1] != (len(self.texts),):
            raise ValueError(f"encoder.embed returned {getattr(features, 'shape', type(features).__name__)}, "
                             f"expected [{len(self.texts)}, dim]")
        return TextDataset(self.texts, self.labels, self.classes, self.domains, features)

"""CLINC150 (Larson et al., EMNLP 2019): 150 intents of a task-oriented assistant in 10 domains, and out-of-scope queries."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .download import fetch
from .text import TextDataset

_URL = "https://raw.githubusercontent.com/clinc/oos-eval/828f8093932c8fe6ca7936c3d2e52903b1c523de/data/"
# The authors' files and their sha256 (README of the data folder).
RELEASE = {
    "data_full.json": (_URL + "data_full.json", "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),
    "domains.json": (_URL + "domains.json", "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a"),
}
PARTS = ("train", "val", "test")  # the release's per-intent parts: 100 / 20 / 30 queries
# Named splits: numbers of whole domains in meta-train, validation and meta-test.
SPLITS = {"domains": (6, 1, 3)}


def default_root() -> Path:
    """Where CLINC150 lives when no root is given: ``$MLKIT_DATA/clinc150``, else
    ``$XDG_DATA_HOME/mlkit/clinc150`` (``~/.local/share/mlkit/clinc150`` without ``XDG_DATA_HOME``)."""
    if os.environ.get("MLKIT_DATA"):
        return Path(os.environ["MLKIT_DATA"]).expanduser() / "clinc150"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "mlkit" / "clinc150"


class CLINC150(TextDataset):
    """All 150 in-scope intents of CLINC150 as one :class:`TextDataset` (150 queries per intent: the release's
    train, val and test parts pooled), with each intent's domain; the out-of-scope queries are kept apart.

    Args:
        root: folder holding ``data_full.json`` and ``domains.json``; ``None`` means :func:`default_root`.
        download: fetch missing files from the authors' repository (clinc/oos-eval) and check their sha256.

    Attributes:
        domains: the domain of each intent (``"banking"``, ``"travel"``, ...).
        part: ``[N]`` the release part of each query, an index into ``PARTS`` (train, val, test).
        out_of_scope: ``{"train": [...], "val": [...], "test": [...]}``, the 100 / 100 / 1,000 out-of-scope
            queries, which belong to no intent.

    Reference: Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction",
    EMNLP-IJCNLP 2019 (CC BY 3.0).
    """

    def __init__(self, root: str | os.PathLike | None = None, download: bool = False):
        if not isinstance(download, bool):
            raise ValueError(f"download must be True or False, got {download!r}")
        self.root = default_root() if root is None else Path(root).expanduser()
        if download:
            _download(self.root)
        data, domains = _read(self.root)
        intent_domain = {intent: domain for domain, intents in domains.items() for intent in intents}
        classes = list(intent_domain)
        index = {intent: c for c, intent in enumerate(classes)}
        texts, labels, parts = [], [], []
        for p, part in enumerate(PARTS):
            for text, intent in data[part]:
                if intent not in index:
                    raise ValueError(f"{self.root / 'data_full.json'}: intent {intent!r} is in no domain of "
                                     "domains.json; replace both files with the release")
                texts.append(text)
                labels.append(index[intent])
                parts.append(p)
        super().__init__(texts, torch.tensor(labels), classes, [intent_domain[c] for c in classes])
        self.part = torch.tensor(parts)
        self.out_of_scope = {part: [text for text, _ in data[f"oos_{part}"]] for part in PARTS}

    def split(self, name: str = "domains", seed: int = 0, sizes: tuple[int, int, int] | None = None
              ) -> tuple[TextDataset, TextDataset, TextDataset]:
        """Disjoint meta-train, validation and meta-test sets of whole domains.

        Args:
            name: ``"domains"``: the 10 domains shuffled with ``seed`` and cut into 6 / 1 / 3 domains, so that
                no test intent, and no test domain, is seen in meta-training.
            seed: the shuffle's seed; sizes: other numbers of domains ``(train, val, test)``, each >= 1.
        Returns:
            ``(train, val, test)`` :class:`TextDataset` s, every intent with all its queries.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown CLINC150 split {name!r}; known splits: {sorted(SPLITS)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        names = list(dict.fromkeys(self.domains))
        sizes = SPLITS[name] if sizes is None else tuple(sizes)
        if (len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
                or sum(sizes) > len(names)):
            raise ValueError(f"sizes must be three positive numbers of domains summing to at most {len(names)}, "
                             f"got {sizes!r}")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
        parts, start = [], 0
        for size in sizes:
            chosen = {names[i] for i in order[start:start + size]}
            parts.append(self.subset([c for c, d in enumerate(self.domains) if d in chosen]))
            start += size
        return parts[0], parts[1], parts[2]


def _read(root: Path) -> tuple[dict, dict]:
    """The two JSON files of ``root``; FileNotFoundError naming what is missing, ValueError if unreadable."""
    missing = [name for name in RELEASE if not (root / name).is_file()]
    if missing:
        urls = "\n".join(f"  {url}" for url, _ in RELEASE.values())
        raise FileNotFoundError(
            f"CLINC150 not found: {', '.join(missing)} missing from {root}. Put data_full.json and domains.json "
            f"there, set MLKIT_DATA to the folder holding clinc150/, or pass download=True to fetch them from:\n{urls}")
    out = []
    for name in RELEASE:
        try:
            out.append(json.loads((root / name).read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{root / name} is not valid JSON ({error}); replace it with the release file") from error
    data, domains = out
    expected = [*PARTS, *(f"oos_{p}" for p in PARTS)]
    if not isinstance(data, dict) or any(k not in data for k in expected) or not isinstance(domains, dict):
        raise ValueError(f"{root / 'data_full.json'} does not have the CLINC150 layout (keys {expected}); "
                         "replace it with the release file")
    return data, domains


def _download(root: Path) -> None:
    """Fetch each file missing from ``root``, checking its sha256; written atomically (temp file + rename)."""
    for name, (url, sha256) in RELEASE.items():
        if (root / name).is_file():
            continue
        fetch(url, root / name, "sha256", sha256, progress=False)

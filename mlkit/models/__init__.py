"""Models for meta-learning: an MLP, the Conv4 backbone, batch norm on batch statistics, a text encoder trained from
scratch, and a pretrained sentence encoder (the ``text`` extra, imported only when made)."""
from .layers import ACTIVATIONS, MLP, BatchNorm, Conv4, TextEncoder, replace_batchnorm
from .sentence import DEFAULT_MODEL, SentenceEncoder, packaged_path

__all__ = ["ACTIVATIONS", "MLP", "BatchNorm", "Conv4", "TextEncoder", "replace_batchnorm", "DEFAULT_MODEL",
           "SentenceEncoder", "packaged_path"]

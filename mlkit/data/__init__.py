"""Datasets for few-shot learning: Omniglot (real archives), scikit-learn's digits (offline), CLINC150 texts."""
from .clinc150 import CLINC150
from .dataset import ClassDataset, digits
from .omniglot import Omniglot
from .text import HashedNgrams, TextDataset, pad

__all__ = ["ClassDataset", "Omniglot", "digits", "CLINC150", "HashedNgrams", "TextDataset", "pad"]

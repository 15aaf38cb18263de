"""Datasets for few-shot learning: Omniglot (real archives) and scikit-learn's digits (offline)."""
from .dataset import ClassDataset, digits
from .omniglot import Omniglot

__all__ = ["ClassDataset", "Omniglot", "digits"]

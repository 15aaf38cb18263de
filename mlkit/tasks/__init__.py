"""Task families: each has ``sample(tasks, generator=None, device=None) -> TaskBatch``."""
from .batch import TaskBatch
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "Sinusoid"]

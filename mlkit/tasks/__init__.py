"""Task families: each has ``sample(tasks, generator=None, device=None) -> TaskBatch``."""
from .batch import TaskBatch
from .fewshot import FewShot
from .pool import TaskPool
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "FewShot", "Sinusoid", "TaskPool"]

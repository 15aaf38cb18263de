"""Task families: each has ``sample(tasks, generator=None, device=None) -> TaskBatch`` (:class:`TaskFamily`)."""
from .batch import TaskBatch
from .fewshot import FewShot
from .pool import TaskPool
from .protocol import TaskFamily
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "TaskFamily", "FewShot", "Sinusoid", "TaskPool"]

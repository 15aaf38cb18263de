"""mlkit: meta-learning on torch.func — MAML, Meta-SGD, task families, training and plots."""
from . import blackbox, core, data, models, plot, tasks, widgets
from .maml import MAML
from .metasgd import MetaSGD
from .pretrain import JointTraining
from .train import History, evaluate, fit, resolve_device

__all__ = ["blackbox", "core", "data", "models", "plot", "tasks", "widgets", "MAML", "MetaSGD", "JointTraining", "History", "evaluate", "fit",
           "resolve_device"]
__version__ = "0.1.0"

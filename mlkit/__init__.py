"""mlkit: meta-learning on torch.func — MAML, Meta-SGD, Reptile, ANIL, ProtoNets, learned optimisers, and more."""
from . import blackbox, checks, core, data, distributed, models, openset, optim, plot, rl, tasks, widgets
from .algorithms import ANIL, MAML, JointTraining, MetaLearner, MetaSGD, ProtoNet, Reptile, SemiProtoNet
from .tasks import TaskBatch, TaskFamily
from .train import Evaluation, History, Step, evaluate, fit, resolve_device

__all__ = ["blackbox", "checks", "core", "data", "distributed", "models", "openset", "optim", "plot", "rl", "tasks",
           "widgets", "MetaLearner", "MAML", "MetaSGD", "Reptile", "ANIL", "JointTraining", "ProtoNet", "SemiProtoNet",
           "TaskBatch", "TaskFamily", "History", "Step", "Evaluation", "evaluate", "fit", "resolve_device"]
__version__ = "0.2.0"

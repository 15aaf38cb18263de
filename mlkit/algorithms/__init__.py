"""The algorithms: each is its update rule on the shared core (:mod:`mlkit.core`) and :class:`MetaLearner`."""
from .anil import ANIL
from .base import MetaLearner
from .joint import JointTraining
from .maml import MAML
from .metasgd import MetaSGD
from .protonet import ProtoNet
from .reptile import Reptile
from .semiproto import SemiProtoNet

__all__ = ["MetaLearner", "MAML", "MetaSGD", "Reptile", "ANIL", "JointTraining", "ProtoNet", "SemiProtoNet"]

"""Learned optimisers (Andrychowicz et al., 2016; Li & Malik, 2017): a coordinatewise LSTM that maps each
coordinate's gradient to its step, meta-trained by truncated backpropagation through optimisation runs.

``LearnedOptimizer(model.parameters())`` is the shipped optimiser as a ``torch.optim.Optimizer``;
``lstm`` holds the network as pure functions, ``optimizees`` the task families (quadratics, small nets on
digits and Omniglot), ``train`` the rollout and meta-training, and ``python -m mlkit.optim.pretrain``
reproduces the shipped weights.
"""
from . import lstm, optimizees, train
from .optimizer import LearnedOptimizer, load_params, save_params

__all__ = ["lstm", "optimizees", "train", "LearnedOptimizer", "load_params", "save_params"]

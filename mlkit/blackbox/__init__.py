"""Learned black-box optimisation (Chen et al., 2017): an LSTM meta-trained on Gaussian-process draws maps
the history of queries and values to the next query.

``minimize(f, bounds)`` runs the optimiser that ships with mlkit; ``Minimizer`` is its ask/tell form;
``functions`` has standard test functions; ``gp`` draws the training tasks; ``rnn`` holds the network and
its meta-training; ``surrogate`` is the cheap GP whose suggestion the shipped network reads;
``python -m mlkit.blackbox.pretrain`` reproduces the shipped weights.
"""
from . import functions, gp, rnn, surrogate
from .minimize import EvaluationError, Minimizer, load_pretrained, minimize
from .rnn import LSTMOptimizer

__all__ = ["functions", "gp", "rnn", "surrogate", "EvaluationError", "LSTMOptimizer", "Minimizer", "load_pretrained",
           "minimize"]

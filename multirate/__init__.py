"""Multirate training of neural networks (Vlaar & Leimkuhler, ICML 2022)."""

from multirate import partition
from multirate.adamw import MultirateAdam, MultirateAdamW
from multirate.bases import BASES, check_hyperparameters
from multirate.optimizer import HyperparameterError, Multirate
from multirate.step import TrainStep

__all__ = ["BASES", "HyperparameterError", "Multirate", "MultirateAdam", "MultirateAdamW", "TrainStep",
           "check_hyperparameters", "partition"]
__version__ = "0.1.0"

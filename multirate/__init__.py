"""Multirate training of neural networks (Vlaar & Leimkuhler, ICML 2022)."""

from multirate import partition
from multirate.adamw import MultirateAdamW
from multirate.optimizer import Multirate
from multirate.step import TrainStep

__all__ = ["Multirate", "MultirateAdamW", "TrainStep", "partition"]
__version__ = "0.1.0"

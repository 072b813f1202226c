"""The base algorithms of the multirate cycle, by name: the one table that the experiment runner, the
integrations and :func:`check_hyperparameters` read.

A new base is a direction in :mod:`multirate._functional`, a subclass of :class:`multirate.Multirate`
that supplies it (e.g. :class:`multirate.MultirateAdam`), and a row here.
"""

import inspect
from dataclasses import dataclass

import torch

from multirate.adamw import MultirateAdam, MultirateAdamW
from multirate.optimizer import Multirate


@dataclass(frozen=True)
class Base:
    """A base algorithm: its multirate optimizer, the torch optimizer that one equals with ``k=1``,
    and the base's own hyperparameters, which both take under these names (the cycle's, ``k`` and
    ``linear_drift``, are the multirate optimizer's)."""

    optimizer: type[Multirate]
    torch_optimizer: type[torch.optim.Optimizer]
    hyperparameters: tuple[str, ...]


BASES = {
    # Heavy ball, or Nesterov with nesterov=True (as in torch.optim.SGD).
    "sgd": Base(Multirate, torch.optim.SGD, ("momentum", "nesterov", "weight_decay")),
    "adamw": Base(MultirateAdamW, torch.optim.AdamW, ("betas", "eps", "weight_decay")),
    "adam": Base(MultirateAdam, torch.optim.Adam, ("betas", "eps", "weight_decay")),
}


def check_hyperparameters(base: str = "sgd", **hyperparameters) -> None:
    """Raise ValueError, naming the hyperparameter, for a value that the multirate optimizer of
    ``base`` (a name in :data:`BASES`) would refuse; no model needed. Hyperparameters not given
    take the optimizer's defaults; ``rate`` is ``"fast"`` unless given, e.g.
    ``check_hyperparameters("sgd", k=5, momentum=0.9)``. An impossible value raises
    :class:`multirate.HyperparameterError`, whose ``key`` and ``requirement`` say which and why."""
    if base not in BASES:
        raise ValueError(f"base must be one of {tuple(BASES)}, got {base!r}")
    cls = BASES[base].optimizer
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(hyperparameters) - set(defaults) - {"rate"})
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for base {base!r}; known: {sorted(defaults)}")
    group = {**defaults, "rate": "fast", **hyperparameters}
    if "betas" in group:
        group["betas"] = tuple(group["betas"])
    cls.check_group(group)

"""The optimizer a run's config asks for: which parameters train, their multirate groups, the
optimizer and its schedule. The runner builds them for a run, `check_optimizer` on a stand-in model
for the drivers (ablations, sweeps) and the runner's own command line, the cost plan as a run does.
"""

from __future__ import annotations

import collections

import torch
from torch import nn

from experiments.core.config import OPTIMIZERS, RunConfig
from experiments.core.errors import UserError
from multirate import BASES, partition


def apply_train(model: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """Freeze (once) every parameter not under one of the named modules; ``["all"]`` trains all.

    Returns the trained parameters.
    """
    if "all" not in prefixes:
        try:
            trained = {id(p) for p in partition.under(model, prefixes).values()}
        except ValueError as err:
            raise ValueError(f"train={prefixes}: {err}") from None
        for p in model.parameters():
            if id(p) not in trained:
                p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The torch optimizer of cfg.optimizer's base over the trained parameters ("sgd", "adamw"), or
    its multirate optimizer over their cfg.partition ("multirate*", see `param_groups`)."""
    if cfg.optimizer.startswith("multirate"):
        groups = param_groups(cfg, model)
        if cfg.slow_lr_scale != 1:  # a diagnostic: the slow part's own step size (its drift lr/k per step)
            for group in groups:
                if group.get("rate") == "slow":
                    group["lr"] = cfg.step_lr * cfg.slow_lr_scale
        return _optimizer(cfg, groups)
    return _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])


def param_groups(cfg: RunConfig, model: nn.Module, fast: list[str] | None = None) -> list[dict]:
    """The multirate param groups of `model`'s trained parameters for cfg.partition: "layerwise"
    (the modules `fast`, default cfg.fast, are fast), "weights_and_biases" (cfg.fast = ["biases"] or
    ["weights"]), "batchnorm" (the batch-norm layers fast), or, SGD base only, "random_subgroups"
    and "random_split" (a fixed random cfg.slow_fraction of every tensor slow)."""
    # The partitions skip frozen parameters themselves, so cfg.train carries over.
    if cfg.partition == "random_subgroups":
        return partition.random_subgroups(model, slow_fraction=cfg.slow_fraction, seed=cfg.seed,
                                          zero_slow_every_step=cfg.zero_slow_every_step)
    if cfg.partition == "weights_and_biases":
        if len(cfg.fast) != 1:
            raise ValueError(f"fast={cfg.fast}: partition='weights_and_biases' needs fast=biases or weights")
        return partition.weights_and_biases(model, fast=cfg.fast[0])
    if cfg.partition == "random_split":  # a fixed random slow_fraction of every tensor slow
        return partition.random_split(model, slow_fraction=cfg.slow_fraction, seed=cfg.seed)
    if cfg.partition == "batchnorm":  # the batch-norm layers fast, everything else slow
        norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return partition.layerwise(model, fast=norms if fast is None else fast)
    if cfg.partition == "layerwise":
        return partition.layerwise(model, fast=cfg.fast if fast is None else fast)
    raise ValueError(f"partition={cfg.partition!r} is not built by this runner yet")


def check_optimizer(cfg: RunConfig) -> None:
    """Build cfg's optimizer over a stand-in model, so that the optimizer's own checks refuse an
    impossible hyperparameter (ValueError) before any run starts, without building the real model."""
    stand_in = nn.Sequential(collections.OrderedDict(slow=nn.Linear(2, 2), fast=nn.Linear(2, 2)))
    try:
        if cfg.optimizer.startswith("multirate"):  # the stand-in's module names are not the model's
            _optimizer(cfg, param_groups(cfg, stand_in, fast=["fast"]))
        else:
            _optimizer(cfg, list(stand_in.parameters()))
    except ValueError as err:
        raise UserError(f"{cfg.method}: {err}") from None


def _optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """cfg.optimizer over `params`: its base's hyperparameters (multirate.BASES) from cfg, and for a
    multirate optimizer the cycle's k and linear_drift."""
    base = BASES[OPTIMIZERS[cfg.optimizer]]
    values = {name: getattr(cfg, name) for name in base.hyperparameters}
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}  # betas
    if cfg.optimizer.startswith("multirate"):
        return base.optimizer(params, lr=cfg.step_lr, k=cfg.k, linear_drift=cfg.linear_drift, **values)
    return base.torch_optimizer(params, lr=cfg.step_lr, **values)


def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer):
    """An epoch-wise LR scheduler for cfg.schedule, or None for "constant"."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    return None

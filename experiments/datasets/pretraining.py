"""Pretraining for the quick profiles: one training loop, and a cache of the pretrained weights.

The quick profiles cannot download pretrained networks, so the transfer experiments pretrain their
own on a generated source task (``experiments.transfer``: a small ResNet, SGD with a cosine
schedule per epoch; ``experiments.transfer_text``: a tiny DistilBERT, AdamW with warm-up, a
schedule step and gradient clipping per minibatch). Both run `fit`, a plain training loop::

    model.train()
    for each epoch, for each batch:
        loss = sum of loss(model, batch)       # named parts, e.g. token and sentence losses
        zero_grad; backward; [clip the gradient norm]; step; [schedule step]
    [schedule step after each epoch]
    model.eval()

and are cached (`cached`) under ``results/<profile>/<experiment>/pretrained/<prefix><hash>.pt``,
the hash of everything that determines the weights (`cache_path`), with a SHA-256 that is checked
on every read, or taken from the networks shipped in ``experiments/pretrained/``: see
`experiments.datasets.pretrained_cache`, which keeps the cache apart from this module because the cache keys
hash this module's source (the code that produces the weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from experiments.datasets.pretrained_cache import cache_path, cached, share_caches  # noqa: F401 (the cache's names here)

SCHEDULE_EVERY = ("epoch", "step")


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: Iterable[Iterable[Any]],
        loss: Callable[[nn.Module, Any], dict[str, Tensor]], *,
        schedule: torch.optim.lr_scheduler.LRScheduler | None = None, schedule_every: str = "epoch",
        clip_grad_norm: float | None = None,
        on_step: Callable[[int, dict[str, Tensor]], None] | None = None) -> None:
    """Train `model` on every batch of every epoch; leaves it in eval mode.

    `loss(model, batch)` returns named loss tensors, summed in order for the backward pass;
    `on_step(step, losses)` (steps counted from 1) sees them after each optimizer step.
    """
    if schedule_every not in SCHEDULE_EVERY:
        raise ValueError(f"schedule_every={schedule_every!r}: must be one of {SCHEDULE_EVERY}")
    model.train()
    step = 0
    for batches in epochs:
        for batch in batches:
            # forward, backward, update
            losses = loss(model, batch)
            parts = iter(losses.values())
            total = next(parts)
            for part in parts:
                total = total + part
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            step += 1
            if schedule is not None and schedule_every == "step":
                schedule.step()
            if on_step is not None:
                on_step(step, losses)
        if schedule is not None and schedule_every == "epoch":
            schedule.step()
    model.eval()

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
the hash of everything that determines the weights (`cache_path`), so a cached network is never
the wrong one and can be copied between results folders (`share_caches`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from experiments.files import atomic_open, waiting_lock

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


def cache_path(run_dir: str | Path, spec: dict, prefix: str = "", digits: int = 16) -> Path:
    """``<run_dir>/pretrained/<prefix><first digits of the sha256 of spec as sorted JSON>.pt``"""
    blob = json.dumps(spec, sort_keys=True).encode()
    return Path(run_dir) / "pretrained" / f"{prefix}{hashlib.sha256(blob).hexdigest()[:digits]}.pt"


def cached(path: Path, pretrain: Callable[[], dict]) -> dict:
    """The dict saved at `path`; if there is none, `pretrain()`'s, saved there first (atomically).

    Pretraining holds a lock beside the file, so processes that need the same network at once
    (`make fig-transfer`'s two, a Slurm array's tasks) pretrain it once: the others wait, then read it.
    """
    if not path.exists():
        with waiting_lock(path.with_name(path.name + ".lock")):
            if not path.exists():  # not written while this process waited
                result = pretrain()
                with atomic_open(path, "wb") as f:
                    torch.save(result, f)
                return result
    return torch.load(path, map_location="cpu", weights_only=True)


def share_caches(run_dir: str | Path, results_dir: str | Path) -> list[Path]:
    """Copy into ``<run_dir>/pretrained/`` every pretrained network that another folder under
    `results_dir` has cached for the same profile and experiment (the last two parts of `run_dir`)
    and this one lacks; returns the copies. Pretraining again costs about a minute each."""
    run_dir = Path(run_dir)
    profile, experiment = run_dir.parts[-2:]
    target, copied = run_dir / "pretrained", []
    for source in sorted(Path(results_dir).glob(f"**/{profile}/{experiment}/pretrained/*.pt")):
        if source.parent.resolve() != target.resolve() and not (target / source.name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / source.name)
            copied.append(target / source.name)
    return copied

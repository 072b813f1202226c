"""The training loop every figure uses: `run(cfg, task)` trains, evaluates, logs, checkpoints.

The whole training set lives on the device as tensors; each epoch a seeded permutation is
sliced into minibatches, so there is no DataLoader and no per-sample Python. A run can be
stopped at any step and resumed from its checkpoint to the same bits (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from experiments.config import RunConfig, list_methods, load_config, parse_cli
from experiments.files import atomic_open
from experiments.runlog import RunLog, read_rows, read_status
from multirate import Multirate, TrainStep, partition

FINISHED = ("complete", "diverged")  # deterministic outcomes: rerunning would repeat them
SYNC_EVERY = 50  # steps between loss checks; each check waits for the device


class Task:
    """What an experiment supplies to `run`. Subclass it; `batch` and `evaluate` have defaults.

    The constructor takes the config so that `main` can use the class as its task factory.
    """

    def __init__(self, cfg: RunConfig | None = None):
        self.cfg = cfg

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """A fresh model (on the CPU is fine; `run` moves it to the device)."""
        raise NotImplementedError

    def train_tensors(self, cfg: RunConfig, device: torch.device) -> tuple[Tensor, ...]:
        """The whole training set as tensors on `device`, first dimension = examples."""
        raise NotImplementedError

    def batch(self, tensors: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        """Batched augmentation of one minibatch, drawing randomness only from `generator`."""
        return tensors

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Scalar training loss of `model` on one minibatch."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> dict[str, float]:
        """Metrics of `model` (called in eval mode under no_grad)."""
        return {}


@dataclasses.dataclass
class Progress:
    """Where training stands; everything here goes into the checkpoint."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # completed minibatches of the current epoch
    perm: Tensor | None = None  # the current epoch's data order
    time_s: float = 0.0  # training wall-clock, without evaluation and checkpointing
    loss_sum: Tensor | None = None  # over the current epoch's minibatches, kept on the device
    loss_count: int = 0


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    """SGD over the trained parameters, or Multirate over their layer-wise/random partition."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trained, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # The partitions skip frozen parameters themselves, so cfg.train carries over.
    if cfg.partition == "random_subgroups":
        groups = partition.random_subgroups(model, slow_fraction=cfg.slow_fraction, seed=cfg.seed)
    else:
        groups = partition.layerwise(model, fast=cfg.fast)
    return Multirate(groups, lr=cfg.lr, k=cfg.k, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, linear_drift=cfg.linear_drift)


def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer):
    """An epoch-wise LR scheduler for cfg.schedule, or None for "constant"."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    return None


def checkpoint_path(cfg: RunConfig) -> Path:
    """results/<profile>/<experiment>/checkpoints/<run_name>.pt"""
    return cfg.run_dir / "checkpoints" / f"{cfg.run_name}.pt"


def evaluate(task: Task, model: nn.Module, optimizer, cfg: RunConfig, device) -> dict[str, float]:
    """task.evaluate in eval mode under no_grad, with every weight in place, then back to train."""
    # Random-subgroup Multirate zeroes the slow entries during a cycle; evaluate the full net.
    full_weights = getattr(optimizer, "full_weights", contextlib.nullcontext)
    model.eval()
    try:
        with torch.no_grad(), full_weights():
            return {name: float(value) for name, value in task.evaluate(model, cfg, device).items()}
    finally:
        model.train()


def run(cfg: RunConfig, task: Task, stop_at_step: int | None = None) -> dict:
    """Train `task` under `cfg`, resuming from its checkpoint if one exists.

    Returns {"status", "rows", "run_name", "model"}: status is "complete", "diverged",
    or "interrupted" (stopped after global step `stop_at_step`, which simulates preemption;
    the checkpoint it leaves, if cfg.checkpoint, lets the next call continue to the same bits).
    A run already finished (complete/diverged) is not trained again unless cfg.rerun; its
    logged rows are returned with model None.
    """
    status = read_status(cfg)
    ckpt_file = checkpoint_path(cfg)
    if status in FINISHED:
        if not cfg.rerun:
            csv_file = cfg.run_dir / f"{cfg.run_name}.csv"
            rows = read_rows(csv_file) if csv_file.exists() else []
            return dict(status=status, rows=rows, run_name=cfg.run_name, model=None)
        ckpt_file.unlink(missing_ok=True)

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    tensors = task.train_tensors(cfg, device)
    n, bs = len(tensors[0]), cfg.batch_size
    steps_per_epoch = n // bs  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={bs} is larger than the {n} training examples")
    model = task.build_model(cfg).to(device)
    apply_train(model, cfg.train)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    train_step = TrainStep(model, optimizer)
    model.train()

    # Separate streams: data order on the CPU, augmentation on the device.
    data_seed, aug_seed = (int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(2))
    data_gen = torch.Generator().manual_seed(data_seed)
    aug_gen = torch.Generator(device=device).manual_seed(aug_seed)
    prog = Progress(loss_sum=torch.zeros((), dtype=torch.float64, device=device))
    log = RunLog(cfg)
    if cfg.checkpoint and ckpt_file.exists():
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        data_gen.set_state(ckpt["data_gen"])
        aug_gen.set_state(ckpt["aug_gen"])
        _set_rng_states(ckpt["rng"])
        prog = Progress(**{**ckpt["progress"], "loss_sum": ckpt["progress"]["loss_sum"].to(device)})
        log = RunLog(cfg, rows=ckpt["rows"], started=ckpt["started"], wandb_id=ckpt["wandb_id"])

    def save_checkpoint():
        if not cfg.checkpoint:
            return
        state = dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            data_gen=data_gen.get_state(), aug_gen=aug_gen.get_state(), rng=_rng_states(),
            progress={**dataclasses.asdict(prog), "loss_sum": prog.loss_sum.cpu()},
            rows=log.rows, started=log.started, wandb_id=log.wandb_id, config=dataclasses.asdict(cfg),
        )
        with atomic_open(ckpt_file, "wb") as f:
            torch.save(state, f)

    def result(status):
        return dict(status=status, rows=log.rows, run_name=cfg.run_name, model=model)

    log.start(device)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=prog.epoch * steps_per_epoch + prog.batch,
               desc=cfg.run_name, leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty() or bool(os.environ.get("CI")))
    final_status = None
    try:
        t0 = time.perf_counter()
        while prog.epoch < cfg.epochs:
            if prog.batch == 0:
                prog.perm = torch.randperm(n, generator=data_gen)
                prog.loss_sum.zero_()
                prog.loss_count = 0
            order = prog.perm.to(device)
            for b in range(prog.batch, steps_per_epoch):
                batch = task.batch(tuple(t[order[b * bs:(b + 1) * bs]] for t in tensors), aug_gen)
                loss = train_step(functools.partial(task.loss, model, batch))
                prog.loss_sum += loss
                prog.loss_count += 1
                prog.batch = b + 1
                step = prog.epoch * steps_per_epoch + prog.batch
                bar.update()
                if prog.batch % SYNC_EVERY == 0 or prog.batch == steps_per_epoch:
                    mean = prog.loss_sum.item() / prog.loss_count
                    bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                    if not math.isfinite(mean):
                        prog.time_s += _elapsed(t0, device)
                        # Logged against the epoch it happened in, so figures can show where.
                        log.log(prog.epoch + 1, step, prog.time_s, {"train_loss": mean})
                        tqdm.write(f"{cfg.run_name}: loss {mean} at step {step}, stopping (diverged)")
                        final_status = "diverged"
                        return result("diverged")
                if step == stop_at_step:
                    prog.time_s += _elapsed(t0, device)
                    save_checkpoint()
                    return result("interrupted")

            prog.time_s += _elapsed(t0, device)
            prog.epoch, prog.batch, prog.perm = prog.epoch + 1, 0, None
            if scheduler is not None:
                scheduler.step()
            if prog.epoch % cfg.eval_every == 0 or prog.epoch == cfg.epochs:
                metrics = {"train_loss": prog.loss_sum.item() / prog.loss_count,
                           **evaluate(task, model, optimizer, cfg, device)}
                log.log(prog.epoch, prog.epoch * steps_per_epoch, prog.time_s, metrics)
            save_checkpoint()
            t0 = time.perf_counter()
        final_status = "complete"
        return result("complete")
    finally:
        bar.close()
        train_step.remove()
        log.finish(final_status)  # None (interrupted or crashed) leaves the JSON at "running"


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # GPU work is asynchronous; count it where it ran
    return time.perf_counter() - t0


def _rng_states() -> dict:
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def main(argv: list[str] | None, config_cls: type[RunConfig], toml_path: str | Path,
         task_factory: Callable[[RunConfig], Task]) -> list[dict]:
    """Entry point helper: parse the CLI, then `run` every method x seed in turn.

    Methods default to all `[methods.*]` in the TOML file, seeds to the configured seed.
    `task_factory(cfg)` makes the task (a Task subclass itself will do).
    """
    profile, methods, seeds, overrides = parse_cli(argv)
    methods = methods or list_methods(toml_path) or [config_cls.__dataclass_fields__["method"].default]
    results = []
    for method in methods:
        for seed in seeds or [None]:
            extra = [] if seed is None else [f"seed={seed}"]
            cfg = load_config(config_cls, toml_path, profile, method, [*overrides, *extra])
            result = run(cfg, task_factory(cfg))
            rows = result["rows"]
            last = {r["metric"]: r["value"] for r in rows if r["step"] == rows[-1]["step"]} if rows else {}
            shown = " ".join(f"{k}={v:.4g}" for k, v in last.items())
            print(f"{cfg.run_name}: {result['status']} {shown}", flush=True)
            results.append(result)
    return results

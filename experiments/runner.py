"""The training loop every figure uses: `run(cfg, task)` trains, evaluates, logs, checkpoints.

The whole training set lives on the device as tensors; each epoch a seeded permutation is
sliced into minibatches, so there is no DataLoader and no per-sample Python. A run can be
stopped at any step and resumed from its checkpoint to the same bits (on CPU).

Preemption: while training, SIGTERM and SIGUSR1 (what Slurm sends before it kills a job) only set
a flag; the run finishes its minibatch, saves its checkpoint and returns "preempted", and `main`
requeues the Slurm job and exits with EXIT_PREEMPTED. Under torchrun (torch.distributed
initialised) every rank trains on its shard of each global minibatch and all-reduces gradients with
:class:`multirate.distributed.AllReduceGrads`; rank 0 alone writes logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import signal
import subprocess
import sys
import threading
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
from multirate import Multirate, MultirateAdamW, TrainStep, partition
from multirate.distributed import AllReduceGrads, any_rank, broadcast_module, init_from_env, world

FINISHED = ("complete", "diverged")  # deterministic outcomes: rerunning would repeat them
SYNC_EVERY = 50  # steps between loss checks; each check waits for the device
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again": `main`'s exit status after a preemption


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


class Preemption:
    """Turns SIGTERM/SIGUSR1 into a flag while `catching()`, instead of killing the process mid-step.

    The flag (`signal`, the number caught, else None) stays set until `clear()` (which `run` does
    when it stops for it), so a signal that arrives between two runs of `main` is not lost. Handlers
    can only be installed from the main thread; elsewhere `catching()` changes nothing.
    """

    def __init__(self):
        self.signal: int | None = None

    def _catch(self, signum, frame):
        self.signal = signum

    def clear(self) -> None:
        self.signal = None

    def install(self) -> Callable[[], None]:
        """Install the handlers; returns the function that puts the previous ones back."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {sig: signal.signal(sig, self._catch) for sig in PREEMPT_SIGNALS}
        return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]

    @contextlib.contextmanager
    def catching(self):
        restore = self.install()
        try:
            yield self
        finally:
            restore()


PREEMPTION = Preemption()


def requeue_slurm_job() -> str | None:
    """Under Slurm (SLURM_JOB_ID set), `scontrol requeue` this job or array task; returns its id.

    Slurm then ends this job and starts it again later; the run resumes from its checkpoint.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{task}" if array_job and task else job
    try:
        done = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"could not requeue Slurm job {target}: {err}", file=sys.stderr, flush=True)
        return None
    if done.returncode != 0:
        print(f"could not requeue Slurm job {target}: {done.stderr.strip()}", file=sys.stderr, flush=True)
        return None
    return target


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
    """SGD or AdamW over the trained parameters, or Multirate / MultirateAdamW over their
    layer-wise (or, SGD base only, random) partition."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trained, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(trained, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    # The partitions skip frozen parameters themselves, so cfg.train carries over.
    if cfg.partition == "random_subgroups":
        groups = partition.random_subgroups(model, slow_fraction=cfg.slow_fraction, seed=cfg.seed)
    else:
        groups = partition.layerwise(model, fast=cfg.fast)
    if cfg.optimizer == "multirate_adamw":
        return MultirateAdamW(groups, lr=cfg.lr, k=cfg.k, betas=tuple(cfg.betas), eps=cfg.eps,
                              weight_decay=cfg.weight_decay, linear_drift=cfg.linear_drift)
    return Multirate(groups, lr=cfg.lr, k=cfg.k, momentum=cfg.momentum, nesterov=cfg.nesterov,
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
    "preempted" (SIGTERM or SIGUSR1 arrived: stopped after the current minibatch) or "interrupted"
    (stopped after global step `stop_at_step`, for tests); the checkpoint either leaves, if
    cfg.checkpoint, lets the next call continue to the same bits.
    Under torch.distributed, every rank takes its equal share of each global minibatch of
    cfg.batch_size (the same data order and augmentation as one process) and the gradients are
    averaged over the ranks; only rank 0 evaluates, logs and checkpoints.
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
    rank, world_size = world()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world_size} processes")
    seed_everything(cfg.seed)
    tensors = task.train_tensors(cfg, device)
    n, bs = len(tensors[0]), cfg.batch_size
    steps_per_epoch = n // bs  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={bs} is larger than the {n} training examples")
    shard = bs // world_size
    model = task.build_model(cfg).to(device)
    apply_train(model, cfg.train)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    train_step = TrainStep(model, optimizer, reduce_grads=AllReduceGrads() if world_size > 1 else None)
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
    if world_size > 1:
        broadcast_module(model)  # equal already (same seed or checkpoint); this makes sure

    def save_checkpoint():
        if not cfg.checkpoint or rank != 0:
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

    def mean_loss():  # over the epoch's minibatches so far, of every rank
        total = prog.loss_sum
        if world_size > 1:
            total = total.clone()
            torch.distributed.all_reduce(total)
            total /= world_size
        return total.item() / prog.loss_count

    if rank == 0:
        log.start(device)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=prog.epoch * steps_per_epoch + prog.batch,
               desc=cfg.run_name, leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty() or bool(os.environ.get("CI")) or rank != 0)
    final_status = None
    restore_signals = PREEMPTION.install()
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
                if world_size > 1:  # every rank drew the same global batch: keep this rank's share
                    batch = tuple(t[rank * shard:(rank + 1) * shard] for t in batch)
                loss = train_step(functools.partial(task.loss, model, batch))
                prog.loss_sum += loss
                prog.loss_count += 1
                prog.batch = b + 1
                step = prog.epoch * steps_per_epoch + prog.batch
                bar.update()
                if prog.batch % SYNC_EVERY == 0 or prog.batch == steps_per_epoch:
                    mean = mean_loss()
                    bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                    if not math.isfinite(mean):
                        prog.time_s += _elapsed(t0, device)
                        # Logged against the epoch it happened in, so figures can show where.
                        if rank == 0:
                            log.log(prog.epoch + 1, step, prog.time_s, {"train_loss": mean})
                            tqdm.write(f"{cfg.run_name}: loss {mean} at step {step}, stopping (diverged)")
                        final_status = "diverged"
                        return result("diverged")
                preempted = PREEMPTION.signal is not None
                if world_size > 1:  # all ranks must stop at the same step
                    preempted = any_rank(preempted, device)
                if step == stop_at_step or preempted:
                    prog.time_s += _elapsed(t0, device)
                    save_checkpoint()
                    if preempted:
                        PREEMPTION.clear()  # this stop answered it; `main` goes by the status
                        if rank == 0:
                            tqdm.write(f"{cfg.run_name}: signal caught, checkpointed at step {step}")
                    return result("preempted" if preempted else "interrupted")

            prog.time_s += _elapsed(t0, device)
            prog.epoch, prog.batch, prog.perm = prog.epoch + 1, 0, None
            if scheduler is not None:
                scheduler.step()
            if prog.epoch % cfg.eval_every == 0 or prog.epoch == cfg.epochs:
                train_loss = mean_loss()
                if rank == 0:
                    metrics = {"train_loss": train_loss, **evaluate(task, model, optimizer, cfg, device)}
                    log.log(prog.epoch, prog.epoch * steps_per_epoch, prog.time_s, metrics)
            save_checkpoint()
            t0 = time.perf_counter()
        final_status = "complete"
        return result("complete")
    finally:
        restore_signals()
        bar.close()
        train_step.remove()
        if rank == 0:
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
    Launched by torchrun (WORLD_SIZE > 1), it joins the process group first.
    After SIGTERM/SIGUSR1 it stops once the current run has checkpointed, requeues the Slurm job
    (if under Slurm) and exits with status EXIT_PREEMPTED; rerunning it continues where it stopped.
    """
    profile, methods, seeds, overrides = parse_cli(argv)
    methods = methods or list_methods(toml_path) or [config_cls.__dataclass_fields__["method"].default]
    # Every config first: an unknown key or impossible value fails before any run starts.
    cfgs = [load_config(config_cls, toml_path, profile, method,
                        [*overrides, *([] if seed is None else [f"seed={seed}"])])
            for method in methods for seed in seeds or [None]]
    joined = init_from_env()
    rank, world_size = world()
    results, preempted = [], False
    with PREEMPTION.catching():
        for cfg in cfgs:
            preempted = PREEMPTION.signal is not None
            if world_size > 1:  # the ranks stop together
                preempted = any_rank(preempted)
            if preempted:
                break
            result = run(cfg, task_factory(cfg))
            rows = result["rows"]
            last = {r["metric"]: r["value"] for r in rows if r["step"] == rows[-1]["step"]} if rows else {}
            shown = " ".join(f"{k}={v:.4g}" for k, v in last.items())
            if rank == 0:
                print(f"{cfg.run_name}: {result['status']} {shown}", flush=True)
            results.append(result)
            preempted = result["status"] == "preempted"
            if preempted:
                break
        if preempted:
            requeued = requeue_slurm_job() if rank == 0 else None
            print("preempted by a signal; "
                  + (f"requeued Slurm job {requeued}" if requeued else "rerun the same command to resume"),
                  file=sys.stderr, flush=True)
            raise SystemExit(EXIT_PREEMPTED)
    if joined:
        torch.distributed.destroy_process_group()
    return results

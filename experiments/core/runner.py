"""The training loop every figure uses: `run(cfg, task)` trains, evaluates, logs, checkpoints.

The whole training set lives on the device as tensors; each epoch a seeded permutation is
sliced into minibatches, so there is no DataLoader and no per-sample Python. A run can be
stopped at any step and resumed from its checkpoint (`experiments.core.checkpoint`) to the same bits
(on CPU). While a run trains it holds a lock beside its JSON, so a second copy of the same run
(a resubmitted job, a Slurm requeue of a task still alive) stops with one line and writes nothing.

Preemption (`experiments.core.preemption`): while training, SIGTERM and SIGUSR1 (what Slurm sends
before it kills a job) only set a flag; the run finishes its minibatch, saves its checkpoint and
returns "preempted", and `main` requeues the Slurm job and exits with EXIT_PREEMPTED. Under
torchrun (torch.distributed initialised) every rank trains on its shard of each global minibatch
and all-reduces gradients with :class:`multirate.distributed.AllReduceGrads`; rank 0 alone writes
logs and checkpoints.
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

from experiments.core import accel, checkpoint, determinism, tracking
from experiments.core.checkpoint import Progress, checkpoint_path
from experiments.core.config import RunConfig, list_methods, load_config, parse_cli, read_toml
from experiments.core.errors import UserError
from experiments.core.files import LockedError, run_lock, sha256_file
from experiments.core.optimizers import apply_train, build_optimizer, build_scheduler, check_optimizer
from experiments.core.preemption import EXIT_PREEMPTED, PREEMPTION, requeue_slurm_job
from experiments.core.runlog import ResultError, RunLog, check_csv, read_record, read_rows
from multirate.distributed import AllReduceGrads, any_rank, broadcast_module, init_from_env, world

FINISHED = ("complete", "diverged")  # deterministic outcomes: rerunning would repeat them
SYNC_EVERY = 50  # steps between loss checks; each check waits for the device


class Task:
    """What an experiment supplies to `run`: made once from its config (`Task(cfg)`, so `main` can
    use the class as its task factory), which its methods read as `self.cfg`. Subclass it; `batch`
    and `evaluate` have defaults.
    """

    def __init__(self, cfg: RunConfig | None = None):
        self.cfg = cfg  # None: `run` gives the task its config

    def build_model(self) -> nn.Module:
        """A fresh model (on the CPU is fine; `run` moves it to the device)."""
        raise NotImplementedError

    def train_tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        """The whole training set as tensors on `device`, first dimension = examples."""
        raise NotImplementedError

    def batch(self, tensors: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        """Batched augmentation of one minibatch, drawing randomness only from `generator`."""
        return tensors

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Scalar training loss of `model` on one minibatch."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics of `model` (called in eval mode under no_grad)."""
        return {}


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


def evaluate(task: Task, model: nn.Module, optimizer, device) -> dict[str, float]:
    """task.evaluate in eval mode under no_grad, with every weight in place, then back to train."""
    # Random-subgroup Multirate zeroes the slow entries during a cycle; evaluate the full net.
    full_weights = getattr(optimizer, "full_weights", contextlib.nullcontext)
    model.eval()
    try:
        with torch.no_grad(), full_weights():
            return {name: float(value) for name, value in task.evaluate(model, device).items()}
    finally:
        model.train()


@dataclasses.dataclass
class Training:
    """What one run trains with, built once by `_build` (its checkpoint saves and restores the state)."""

    cfg: RunConfig
    task: Task
    device: torch.device
    rank: int
    world_size: int
    tensors: tuple[Tensor, ...]  # the whole training set on the device
    steps_per_epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None  # fp16 only
    train_step: Callable
    data_gen: torch.Generator  # the data order, on the CPU
    aug_gen: torch.Generator  # augmentation, on the device


def run(cfg: RunConfig, task: Task, stop_at_step: int | None = None) -> dict:
    """Train `task` under `cfg`, resuming from its checkpoint if one exists.

    Returns {"status", "rows", "run_name", "model"}: status is "complete", "diverged",
    "preempted" (SIGTERM or SIGUSR1 arrived: stopped after the current minibatch) or "interrupted"
    (stopped after global step `stop_at_step`, for tests); the checkpoint either leaves, if
    cfg.checkpoint, lets the next call continue to the same bits.
    Under torch.distributed, every rank takes its equal share of each global minibatch of
    cfg.batch_size (the same data order and augmentation as one process) and the gradients are
    averaged over the ranks; only rank 0 evaluates, logs and checkpoints.
    A finished run is not trained again unless cfg.rerun (see `_finished`). Another process
    training the same run raises LockedError, before anything is written.
    """
    # Threads and deterministic kernels before any tensor work
    determinism.apply(cfg)
    if task.cfg is None:
        task.cfg = cfg
    elif task.cfg != cfg:
        raise ValueError(f"{cfg.run_name}: the task was made for another config")
    device = resolve_device(cfg.device)
    rank, world_size = world()
    _check_world_size(cfg, world_size)
    ckpt_file = checkpoint_path(cfg)

    with contextlib.ExitStack() as cleanup:
        # One process per run: hold its lock (rank 0, for all ranks) until the run returns
        cleanup.enter_context(_run_lock(cfg, rank, world_size, device))

        # A finished run is not trained again (unless cfg.rerun) if its CSV is what was recorded
        finished = _finished(cfg, rank)
        if finished is not None:
            return finished

        # Data, model, optimizer, scheduler, random streams; then the checkpoint's state if there is one
        tr = _build(cfg, task, device, rank, world_size)
        cleanup.callback(tr.train_step.remove)
        prog, log = _resume(tr, ckpt_file)

        # Logging, progress bar, signals; the JSON says "running" until the run finishes
        status = None  # None (interrupted or crashed) leaves the JSON at "running"
        if rank == 0:
            log.start(device)
            cleanup.callback(lambda: log.finish(status, _kept_checkpoint_sha(cfg, ckpt_file, status)))
        bar = _progress_bar(tr, prog)
        cleanup.callback(bar.close)
        cleanup.callback(PREEMPTION.install())

        # Train: epochs of minibatches in a seeded order; stop on divergence, a signal or stop_at_step
        t0 = time.perf_counter()
        while prog.epoch < cfg.epochs:
            stop = _train_minibatches(tr, prog, log, bar, t0, stop_at_step)
            if stop == "diverged":  # logged, its time counted
                status = stop
                return dict(status=status, rows=log.rows, run_name=cfg.run_name, model=tr.model)
            prog.time_s += _elapsed(t0, device)

            # End of epoch (unless stopping mid-way): schedule, evaluate, log
            if stop is None:
                _end_epoch(tr, prog, log)

            # Checkpoint after every epoch and before stopping (rank 0: the others hold the same state)
            if cfg.checkpoint and rank == 0:
                checkpoint.save(ckpt_file, checkpoint.capture(cfg, tr.model, tr.optimizer, tr.scheduler,
                                                              tr.data_gen, tr.aug_gen, prog, log, tr.scaler))
            if stop is not None:  # "preempted" or "interrupted"
                if stop == "preempted":
                    PREEMPTION.clear()  # this stop answered it; `main` goes by the status
                    if rank == 0:
                        step = prog.epoch * tr.steps_per_epoch + prog.batch
                        tqdm.write(f"{cfg.run_name}: signal caught, checkpointed at step {step}")
                return dict(status=stop, rows=log.rows, run_name=cfg.run_name, model=tr.model)
            t0 = time.perf_counter()
        status = "complete"
        return dict(status=status, rows=log.rows, run_name=cfg.run_name, model=tr.model)


def _check_world_size(cfg: RunConfig, world_size: int) -> None:
    """Refuse a minibatch the processes cannot share equally, and fp16 in more than one process."""
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world_size} processes")
    if cfg.amp == "fp16" and world_size > 1:  # each rank's GradScaler would skip steps on its own
        raise ValueError(f"amp=fp16 with {world_size} processes is not supported (the ranks' loss "
                         "scalers would disagree on skipped steps): use amp=bf16")


def _build(cfg: RunConfig, task: Task, device: torch.device, rank: int, world_size: int) -> Training:
    """The run's data, model, optimizer, scheduler and train step, in the order the seeded random
    numbers are drawn in, then its two random streams."""
    seed_everything(cfg.seed)
    tensors = task.train_tensors(device)
    n, bs = len(tensors[0]), cfg.batch_size
    steps_per_epoch = n // bs  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={bs} is larger than the {n} training examples")
    accel.configure_backends(cfg, device)
    model = task.build_model().to(device)
    apply_train(model, cfg.train)
    accel.prepare_model(model, cfg, device)  # channels_last, torch.compile: per cfg
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = accel.grad_scaler(cfg, device)  # fp16 only, else None
    train_step = accel.make_train_step(model, optimizer, scaler,
                                       reduce_grads=AllReduceGrads() if world_size > 1 else None)
    model.train()

    # Separate random streams: data order on the CPU, augmentation on the device
    data_seed, aug_seed = (int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(2))
    return Training(cfg, task, device, rank, world_size, tensors, steps_per_epoch, model, optimizer,
                    scheduler, scaler, train_step, data_gen=torch.Generator().manual_seed(data_seed),
                    aug_gen=torch.Generator(device=device).manual_seed(aug_seed))


def _resume(tr: Training, ckpt_file: Path) -> tuple[Progress, RunLog]:
    """Where the run stands and its log: from its checkpoint if there is one (and cfg.checkpoint),
    else the start. Under torch.distributed every rank then holds rank 0's weights."""
    prog = Progress(loss_sum=torch.zeros((), dtype=torch.float64, device=tr.device))
    log = RunLog(tr.cfg)
    if tr.cfg.checkpoint and ckpt_file.exists():
        state = checkpoint.load(ckpt_file)
        prog = checkpoint.restore(state, tr.model, tr.optimizer, tr.scheduler, tr.data_gen, tr.aug_gen,
                                  tr.device, tr.scaler)
        log = RunLog(tr.cfg, rows=state["rows"], started=state["started"], wandb_id=state["wandb_id"])
    if tr.world_size > 1:
        broadcast_module(tr.model)  # equal already (same seed or checkpoint); this makes sure
    return prog, log


def _progress_bar(tr: Training, prog: Progress) -> tqdm:
    """A bar over the run's steps: rank 0 at an interactive terminal only (not in CI or a log file)."""
    done = prog.epoch * tr.steps_per_epoch + prog.batch
    return tqdm(total=tr.cfg.epochs * tr.steps_per_epoch, initial=done, desc=tr.cfg.run_name, leave=False,
                dynamic_ncols=True,
                disable=not sys.stderr.isatty() or bool(os.environ.get("CI")) or tr.rank != 0)


def _train_minibatches(tr: Training, prog: Progress, log: RunLog, bar: tqdm, t0: float,
                       stop_at_step: int | None) -> str | None:
    """The current epoch's minibatches from `prog.batch` on. None at the epoch's end, else why
    training stopped early: "diverged" (logged, its time counted), "preempted" or "interrupted"."""
    cfg, bs, shard = tr.cfg, tr.cfg.batch_size, tr.cfg.batch_size // tr.world_size
    if prog.batch == 0:
        prog.perm = torch.randperm(len(tr.tensors[0]), generator=tr.data_gen)
        prog.loss_sum.zero_()
        prog.loss_count = 0
    order = accel.to_device((prog.perm,), tr.device)[0]
    for b in range(prog.batch, tr.steps_per_epoch):
        batch = tr.task.batch(tuple(t[order[b * bs:(b + 1) * bs]] for t in tr.tensors), tr.aug_gen)
        if tr.world_size > 1:  # every rank drew the same global batch: keep this rank's share
            batch = tuple(t[tr.rank * shard:(tr.rank + 1) * shard] for t in batch)
        compute_loss = accel.autocast_loss(functools.partial(tr.task.loss, tr.model, batch), cfg, tr.device)
        prog.loss_sum += tr.train_step(compute_loss)
        prog.loss_count += 1
        prog.batch = b + 1
        step = prog.epoch * tr.steps_per_epoch + prog.batch
        bar.update()

        # Every SYNC_EVERY steps and at the epoch's end: stop if the loss is not finite
        if prog.batch % SYNC_EVERY == 0 or prog.batch == tr.steps_per_epoch:
            mean = _mean_loss(prog, tr.world_size)
            bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
            if not math.isfinite(mean):
                prog.time_s += _elapsed(t0, tr.device)
                if tr.rank == 0:  # logged against the epoch it happened in, so figures can show where
                    log.log(prog.epoch + 1, step, prog.time_s, {"train_loss": mean})
                    tqdm.write(f"{cfg.run_name}: loss {mean} at step {step}, stopping (diverged)")
                return "diverged"

        # After a signal (all ranks stop at the same step) or at stop_at_step
        preempted = PREEMPTION.signal is not None
        if tr.world_size > 1:
            preempted = any_rank(preempted, tr.device)
        if step == stop_at_step or preempted:
            return "preempted" if preempted else "interrupted"
    return None


def _end_epoch(tr: Training, prog: Progress, log: RunLog) -> None:
    """Count the finished epoch, step the schedule, and evaluate and log every cfg.eval_every epochs
    and after the last (between evaluations, rank 0 still prints a line)."""
    prog.epoch, prog.batch, prog.perm = prog.epoch + 1, 0, None
    if tr.scheduler is not None:
        tr.scheduler.step()
    step = prog.epoch * tr.steps_per_epoch
    if prog.epoch % tr.cfg.eval_every == 0 or prog.epoch == tr.cfg.epochs:
        train_loss = _mean_loss(prog, tr.world_size)
        if tr.rank == 0:
            metrics = {"train_loss": train_loss, **evaluate(tr.task, tr.model, tr.optimizer, tr.device)}
            log.log(prog.epoch, step, prog.time_s, metrics)
    elif tr.rank == 0:  # a line per epoch in a Slurm .out file between evaluations too
        tracking.print_epoch(tr.cfg, prog.epoch, step, prog.time_s, {})


def lock_path(cfg: RunConfig) -> Path:
    """results/<profile>/<experiment>/<run_name>.lock, held while the run trains"""
    return cfg.run_dir / f"{cfg.run_name}.lock"


@contextlib.contextmanager
def _run_lock(cfg: RunConfig, rank: int, world_size: int, device: torch.device):
    """Hold the run's lock file on rank 0; every rank raises LockedError if another process has it."""
    json_file = cfg.run_dir / f"{cfg.run_name}.json"
    with contextlib.ExitStack() as held:
        locked = None
        if rank == 0:
            try:
                held.enter_context(run_lock(lock_path(cfg), str(json_file)))
            except LockedError as err:
                locked = err
        if any_rank(locked is not None, device) if world_size > 1 else locked is not None:
            raise locked or LockedError(f"{json_file} is being trained by another process")
        yield


def _finished(cfg: RunConfig, rank: int) -> dict | None:
    """The result of a finished (complete/diverged) run, read back instead of training it again, or
    None if it must be trained: not finished, cfg.rerun (its checkpoint is deleted), or its CSV is
    missing (rebuilt from the kept checkpoint when there is one, else trained again). A CSV that
    differs from the row count and SHA-256 its JSON recorded raises ResultError naming the file."""
    csv_file, json_file = (cfg.run_dir / f"{cfg.run_name}{suffix}" for suffix in (".csv", ".json"))
    record = read_record(json_file) if json_file.exists() else None
    if record is None or record["status"] not in FINISHED:
        return None
    if cfg.rerun:
        checkpoint_path(cfg).unlink(missing_ok=True)
        return None
    problem = check_csv(record, csv_file)
    if problem is None:
        rows = read_rows(csv_file) if csv_file.exists() else []
        return dict(status=record["status"], rows=rows, run_name=cfg.run_name, model=None)
    if problem != "missing":
        raise ResultError(problem)
    if rank == 0:
        how = "restoring it from its checkpoint" if checkpoint_path(cfg).exists() else "training it again"
        print(f"{csv_file} of a {record['status']} run is missing: {how}", file=sys.stderr, flush=True)
    return None


def _mean_loss(prog: Progress, world_size: int) -> float:
    """Mean training loss over the epoch's minibatches so far, of every rank (waits for the device)."""
    total = prog.loss_sum
    if world_size > 1:
        total = total.clone()
        torch.distributed.all_reduce(total)
        total /= world_size
    return total.item() / prog.loss_count


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # GPU work is asynchronous; count it where it ran
    return time.perf_counter() - t0


def _kept_checkpoint_sha(cfg: RunConfig, ckpt_file: Path, status: str | None) -> str | None:
    """SHA-256 of the checkpoint a finished run keeps, for its JSON (None if none is kept)."""
    return sha256_file(ckpt_file) if status is not None and cfg.checkpoint and ckpt_file.exists() else None


def main(argv: list[str] | None, config_cls: type[RunConfig], toml_path: str | Path,
         task_factory: Callable[[RunConfig], Task]) -> list[dict]:
    """Entry point helper: parse the CLI, then `run` every method x seed in turn.

    Methods default to all `[methods.*]` in the TOML file, seeds to the configured seed.
    `task_factory(cfg)` makes the task (a Task subclass itself will do).
    Every config is loaded (types, finite numbers, ranges, seeds), its device parsed and its optimizer
    built on a stand-in model first, so an unknown key or an impossible value (by the optimizer's own
    checks) fails in one line before any run starts or anything is written.
    With `--skip-running` a run that another process is training is left to it: processes started
    with the same runs then share them out, each taking the next one that nobody has started.
    Launched by torchrun (WORLD_SIZE > 1), it joins the process group first.
    After SIGTERM/SIGUSR1 it stops once the current run has checkpointed, requeues the Slurm job
    (if under Slurm) and exits with status EXIT_PREEMPTED; rerunning it continues where it stopped.
    """
    # Every config and optimizer first: nothing runs unless all of them are possible
    cfgs, skip_running = _checked_configs(sys.argv[1:] if argv is None else list(argv), config_cls, toml_path)

    # Each run in turn, until a signal asks to stop
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
            try:
                result = run(cfg, task_factory(cfg))
            except LockedError:
                if not skip_running:
                    raise
                if rank == 0:  # the process that holds the lock finishes the run
                    print(f"{cfg.run_name}: another process is training it; left to that one", flush=True)
                continue
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


def _checked_configs(argv: list[str], config_cls: type[RunConfig], toml_path: str | Path
                     ) -> tuple[list[RunConfig], bool]:
    """The config of every method x seed the command line selects, each loaded, its optimizer built
    on a stand-in model and its device parsed (a UserError before any run starts), and whether
    --skip-running was given."""
    profile, methods, seeds, overrides, skip_running = parse_cli(argv, config_cls, toml_path)
    read_toml(toml_path)
    methods = methods or list_methods(toml_path) or [config_cls.__dataclass_fields__["method"].default]
    cfgs = [load_config(config_cls, toml_path, profile, method,
                        [*overrides, *([] if seed is None else [f"seed={seed}"])])
            for method in methods for seed in seeds or [None]]
    for cfg in cfgs:
        check_optimizer(cfg)
        try:
            resolve_device(cfg.device)
        except RuntimeError as err:  # torch's message lists the device types it knows
            raise UserError(f"invalid device={cfg.device!r}: {' '.join(str(err).split())}") from None
    return cfgs, skip_running

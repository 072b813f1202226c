"""GPU speed options of a run (``amp``, ``channels_last``, ``compile``, ``cudnn_benchmark``), as
small functions the runner calls; each keeps :class:`multirate.TrainStep`'s saving. For a CPU,
``keep_freed_host_memory`` (used by ``benchmarks.speedup``, not by the runner).

    configure_backends(cfg, device)                  # cudnn.benchmark, once per run
    model = prepare_model(model, cfg, device)        # after .to(device), before the optimizer
    scaler = grad_scaler(cfg, device)                # fp16 only, else None
    train_step = make_train_step(model, optimizer, scaler, reduce_grads)
    loss = train_step(autocast_loss(functools.partial(task.loss, model, batch), cfg, device))
    tensors = to_device(tensors, device)             # pinned host memory, non-blocking copy

Device-dependent choices are made when the run starts, on its device (`resolve_amp`): ``amp =
"auto"`` is bf16 on a CUDA device that runs it natively (compute capability 8.0 or newer) and none
elsewhere; the paper profile's TOMLs use it. A CPU runs bf16 autocast far slower than float32 (the
paper profile's language model: 319 s against 20 s for its first epoch at 1 thread; the perceptron
about 4x), and with other numerics. The runner records the choice in the run's JSON
(``experiments.core.runlog``). ``channels_last`` and ``compile`` have no "auto": NHWC convolutions
are fast on CPUs (oneDNN) and GPUs alike, and compiling is a choice of time to first step, not of
device.

Why each keeps the saving (the fast step records no graph through the slow part):

- ``amp``: the autocast region is entered inside the loss function, once per step, so autograd
  still starts off and the forward pre-hooks of TrainStep still switch it on at the first fast
  module. The region ends with the step, which empties autocast's cache of weight casts: a cast
  made under no_grad is never reused where a gradient is needed. bf16 needs no loss scaling;
  fp16 needs a ``torch.amp.GradScaler`` (``grad_scaler``), which TrainStep drives: it scales the
  loss, unscales the gradients before ``reduce_grads`` and skips a step with inf/nan gradients
  without advancing Multirate's cycle.
- ``channels_last``: a memory format of the parameters (and so of the convolutions' outputs);
  grad modes are untouched.
- ``compile``: ``nn.Module.compile`` compiles the module in place (parameter names, hence the
  partitions and checkpoints, stay as they are). TorchDynamo traces TrainStep's forward pre-hooks
  with the model and guards on their state, so the slow and the fast step get graphs of their
  own, each with autograd off where TrainStep has it off: a compiled fast step saves exactly the
  activations an eager one saves (tests/test_accel.py, with the aot_eager and inductor backends).
  The first steps of each kind compile (seconds to minutes).
- ``cudnn_benchmark``: picks convolution algorithms per input shape; on CUDA only.

Pinned memory: ``to_device`` copies a host tensor through page-locked memory with
``non_blocking=True``; the copy overlaps with the host's work and ends before any kernel on the
device's current stream reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from experiments.core.config import RunConfig
from multirate import TrainStep

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """`amp` as run on `device`: "auto" is "bf16" on a CUDA device with native bf16 (compute
    capability >= 8.0), "none" elsewhere; any other setting is itself."""
    if amp != "auto":
        return amp
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return "bf16" if cuda and torch.cuda.get_device_capability(device) >= (8, 0) else "none"


def resolved_options(cfg: RunConfig, device: torch.device) -> dict[str, str]:
    """The device-dependent options of `cfg` as run on `device` (what the run's JSON records)."""
    return {"amp": resolve_amp(cfg.amp, device)}


def configure_backends(cfg: RunConfig, device: torch.device) -> None:
    """``torch.backends.cudnn.benchmark = cfg.cudnn_benchmark`` on CUDA (nothing elsewhere)."""
    if cfg.cudnn_benchmark and cfg.deterministic:
        raise ValueError("cudnn_benchmark=true with deterministic=true: benchmarking picks kernels by "
                         "timing, so results would vary; set one of them to false")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_host_memory_kept = False  # keep_freed_host_memory took effect in this process


def keep_freed_host_memory() -> bool:
    """Let glibc keep the memory that freed tensors leave (no trimming of the heap, no mmap per
    allocation), so that later tensors reuse pages the process already has instead of faulting in
    fresh ones. Process-wide and for good; numerics are untouched. Returns whether it applied:
    Linux with glibc, and ``MULTIRATE_KEEP_HOST_MEMORY`` not ``0`` (a no-op elsewhere); called
    again, whether it took effect in this process.

    Why: glibc hands freed blocks over 32 MiB, and the free top of its heap, back to the kernel,
    and the next allocation faults in every page again (several microseconds each on a virtual
    machine). A multirate slow step, which follows k - 1 fast steps that need little memory, paid
    for its whole graph that way on every cycle; ``python -m benchmarks.speedup`` counts the
    faults per step (docs/performance.md, "Freed host memory": without this setting, DistilBERT-base's
    slow step took 2.70 s against a train-all step's 2.02 s, at 2 threads). PyTorch's CUDA caching
    allocator does the same for GPU memory. The cost: the process keeps its peak host memory until
    it exits. Not for small models: the quick profile's runs took about 10 % longer with it
    (docs/performance.md, same section), so the runner does not call it.
    """
    global _host_memory_kept
    if _host_memory_kept:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("MULTIRATE_KEEP_HOST_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    # -1 as size_t: never trim; 0 mmapped chunks: every block comes from the heap and returns to it.
    _host_memory_kept = bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _host_memory_kept


def host_memory_kept() -> bool:
    """Whether :func:`keep_freed_host_memory` took effect in this process (it lasts)."""
    return _host_memory_kept


def prepare_model(model: nn.Module, cfg: RunConfig, device: torch.device,
                  compile_backend: str = "inductor") -> nn.Module:
    """The model (already on `device`) in channels-last format and/or compiled in place, per `cfg`.

    Call it before building the optimizer (channels_last replaces the parameters' storage, not
    the parameters, but the optimizer should see the final layout). Returns the same module.
    """
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D parameters only; the rest is unchanged
    if cfg.compile:
        model.compile(backend=compile_backend)
    return model


@contextlib.contextmanager
def autocast(cfg: RunConfig, device: torch.device):
    """``torch.autocast`` of `device`'s type with cfg.amp's dtype (resolved); nothing for "none"."""
    amp = resolve_amp(cfg.amp, device)
    if amp == "none":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp]):
        yield


def autocast_loss(compute_loss: Callable[[], Tensor], cfg: RunConfig,
                  device: torch.device) -> Callable[[], Tensor]:
    """`compute_loss` run under `autocast` (one region per call, see the module docstring)."""
    if resolve_amp(cfg.amp, device) == "none":
        return compute_loss

    def loss():
        with autocast(cfg, device):
            return compute_loss()
    return loss


def grad_scaler(cfg: RunConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for amp="fp16" (fp16 gradients underflow without loss scaling), else None."""
    return torch.amp.GradScaler(device.type) if resolve_amp(cfg.amp, device) == "fp16" else None


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None = None, reduce_grads=None) -> TrainStep:
    """``TrainStep(model, optimizer, reduce_grads, scaler)``, `scaler` from ``grad_scaler`` or None."""
    return TrainStep(model, optimizer, reduce_grads=reduce_grads, scaler=scaler)


def to_device(tensors: tuple[Tensor, ...], device: torch.device) -> tuple[Tensor, ...]:
    """Each tensor on `device`; from the host to CUDA through pinned memory, without blocking.

    The host tensors must not be modified until the device has used the copies (the caching host
    allocator keeps the pinned buffers alive until then).
    """
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu" else t.to(device)
                 for t in tensors)


__all__ = ["resolve_amp", "resolved_options",
           "configure_backends", "keep_freed_host_memory", "host_memory_kept", "prepare_model", "autocast",
           "autocast_loss", "grad_scaler", "make_train_step", "to_device", "AMP_DTYPES"]

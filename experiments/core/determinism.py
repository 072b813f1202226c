"""The determinism contract: a run's bits depend on its config and the code, not on the machine.

What can move a CPU run's bits, and what pins it here:

- **Vector instruction set.** PyTorch's CPU kernels (ATen), its convolutions (oneDNN) and its matrix
  products (MKL) each pick an implementation for the CPU they find, and AVX-512 and AVX2 kernels
  round differently (sums in another order). On x86-64, `pin_cpu_kernels` sets
  ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_CBWR=AVX2`` (every x86-64 CPU
  since 2013 has AVX2) before torch is imported -- ``experiments/__init__.py`` calls it, so every
  ``python -m experiments.X`` process is pinned. A variable the user has set is left alone, and
  ``MULTIRATE_NATIVE_CPU=1`` turns the pinning off (faster kernels, machine-dependent bits). Where
  AVX2 cannot be confirmed (no /proc/cpuinfo, as on macOS), nothing is pinned.
  Measured on one AVX2 machine (docs/determinism.md, "Why the kernels are pinned"): ATen's scalar
  kernels against its AVX2 ones, and oneDNN capped at SSE4.1 against AVX2, each change a run's bits
  after one epoch.
- **Thread count.** Reductions split over threads sum in another order. The quick and cpu profiles
  fix ``threads = 1`` in their TOMLs (`apply` sets it before the run's first tensor operation);
  parallelism comes from running independent runs side by side.
- **Nondeterministic kernels** (mostly CUDA atomics): ``deterministic = true`` turns on
  ``torch.use_deterministic_algorithms``; the quick and cpu profiles set it, the paper profile does
  not (it would slow the GPU runs).
- **Stale caches.** A cache (a pretrained network) is keyed by `code_key` of the functions that
  produce it: a hash of their modules' source files and the torch/torchvision versions, so code
  that would produce other bits never reuses an old cache.

Within one architecture (x86-64, or separately ARM64) this gives the same bits for the same config,
code and torch build; PyTorch promises no more across torch versions or between CPU and GPU.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
from pathlib import Path

X86_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
NATIVE = "MULTIRATE_NATIVE_CPU"  # set to 1: no pinning


def pin_cpu_kernels() -> dict[str, str]:
    """Pin the CPU kernel families to AVX2 on x86-64 (before torch is imported); returns what it set.

    Leaves variables the user has set, and does nothing with ``MULTIRATE_NATIVE_CPU=1`` or on other
    architectures.
    """
    if os.environ.get(NATIVE, "") not in ("", "0") or not has_avx2():
        return {}
    pinned = {k: v for k, v in X86_PINS.items() if k not in os.environ}
    os.environ.update(pinned)
    return pinned


def has_avx2() -> bool:
    """An x86-64 CPU that reports AVX2 (Linux's /proc/cpuinfo). ATen takes ATEN_CPU_CAPABILITY on
    trust, so pinning AVX2 on a CPU without it would crash: elsewhere nothing is pinned."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def apply(cfg) -> None:
    """Set the run's thread count and deterministic-kernel mode (`cfg.threads`, `cfg.deterministic`)."""
    import torch  # not at the top: experiments/__init__ imports this module to pin the kernels first

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        # CUDA's deterministic cuBLAS needs its workspace fixed before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def environment() -> dict[str, str | int | None]:
    """What a run's JSON records about the numerical environment."""
    import torch  # not at the top: experiments/__init__ imports this module to pin the kernels first

    return dict(torch=torch.__version__, threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                **{k: os.environ.get(k) for k in X86_PINS})


def code_key(*objects) -> str:
    """A hash of the source files defining `objects` (functions, classes, modules) and of the
    torch and torchvision versions: part of every cache key, so changed code rebuilds its caches."""
    import torch  # not at the top: experiments/__init__ imports this module to pin the kernels first

    files = sorted({Path(inspect.getsourcefile(obj)).resolve() for obj in objects})
    digest = hashlib.sha256(torch.__version__.encode())
    try:
        import torchvision

        digest.update(torchvision.__version__.encode())
    except ImportError:
        pass
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]

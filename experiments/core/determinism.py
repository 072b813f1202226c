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

Within one CPU vendor's x86-64 machines (Intel, or the AMD EPYCs checked), or separately ARM64, this
gives the same bits for the same config, code and torch build; Intel and AMD differ in MKL's kernels
(`cpu_vendor`), so the CI slice has a reference per vendor. PyTorch promises no more across torch
versions or between CPU and GPU.
"""

from __future__ import annotations

import hashlib
import inspect
import math
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


def cpu_vendor(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's maker as MKL tells them apart: ``intel``, ``amd``, another x86 vendor's id in lower
    case, or the architecture (``aarch64``) where /proc/cpuinfo names none.

    MKL picks its code path by vendor as well as by instruction set: ``MKL_CBWR=AVX2`` fixes the AVX2
    path on every Intel CPU, while on other vendors' CPUs MKL takes its AUTO branch instead (MKL's
    developer guide, "Getting Started with Conditional Numerical Reproducibility"). So a run's bits
    are the same across Intel CPUs and across the AMD CPUs checked, but differ between the two
    (docs/determinism.md, "Intel and AMD")."""
    names = {"genuineintel": "intel", "authenticamd": "amd"}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.partition(":")[2].strip().lower()
                    return names.get(vendor, vendor)
    except OSError:
        pass
    return platform.machine().lower()


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
                cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_vendor=cpu_vendor(),
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


def kernel_fingerprints() -> dict[str, str | bool]:
    """A short hash of each CPU kernel family's output on fixed inputs, one thread, under the pins in
    force: two machines whose fingerprints agree run those kernels to the same bits. ``*_rows_equal``
    says whether a product's rows (or a convolution's images) come out the same when computed in a
    smaller batch, which chunked evaluation relies on (`experiments.transfer`)."""
    import torch  # not at the top: experiments/__init__ imports this module to pin the kernels first
    F = torch.nn.functional

    torch.set_num_threads(1)

    def fixed(*shape, seed=0, dtype=torch.float32):  # no RNG: the same inputs in every torch version
        n = math.prod(shape)
        v = ((torch.arange(n, dtype=torch.float64) * 7919 + seed * 104729) % 1009) / 1009 - 0.5
        return v.reshape(shape).to(dtype)

    def h(*tensors):
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:12]

    a, w = fixed(64, 256), fixed(100, 256, seed=1)
    s = fixed(40, 40, seed=3, dtype=torch.float64)
    x, k = fixed(16, 16, 16, 16, seed=4), fixed(32, 16, 3, 3, seed=5)
    v = fixed(1000, 37, seed=6)
    xg, kg = x.clone().requires_grad_(), k.clone().requires_grad_()
    F.conv2d(xg, kg, padding=1).square().sum().backward()
    conv = F.conv2d(x, k, padding=1)
    return {
        "mkl_sgemm": h(*(F.linear(a[:m], w) for m in (1, 3, 6, 64))),
        "mkl_sgemm_rows_equal": all(torch.equal(F.linear(a[:m], w), F.linear(a, w)[:m]) for m in (3, 6, 16)),
        "mkl_dgemm": h(a.double() @ a.double().T),
        "mkl_lapack": h(*torch.linalg.qr(fixed(64, 32, seed=2, dtype=torch.float64)),
                        torch.linalg.eigvalsh(s + s.T)),
        "exp_log": h(v.exp().log_softmax(1)),
        "aten_sum": h(v.sum(0), v.sum(1)),
        "onednn_conv": h(conv, xg.grad, kg.grad),
        "onednn_conv_rows_equal": all(torch.equal(F.conv2d(x[:n], k, padding=1), conv[:n])
                                      for n in (2, 5, 8)),
    }


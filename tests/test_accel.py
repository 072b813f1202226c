"""The GPU speed options keep TrainStep's saving: a fast step keeps no activations of the slow part.

"Saved" = the elements autograd saves for the backward pass during one step (counted with
saved_tensors_hooks): a fast step that records no graph through the backbone saves only what the
head needs, far less than a slow step.
"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.core import accel
from experiments.core.config import RunConfig
from multirate import Multirate, TrainStep, partition

CPU = torch.device("cpu")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()),
                         nn.Linear(64, 4))


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                         nn.Linear(8, 4))


def batches(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def train(model, cfg, data, k=3):
    """Multirate (fast = the head) through accel and TrainStep: the elements saved per step."""
    accel.prepare_model(model, cfg, CPU, compile_backend="aot_eager")
    opt = Multirate(partition.layerwise(model, ["1"]), lr=0.05, k=k, momentum=0.9)
    step = accel.make_train_step(model, opt, accel.grad_scaler(cfg, CPU))
    saved = []
    for x, y in data:
        count = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t.numel()) or t, lambda t: t):
            step(accel.autocast_loss(lambda: F.cross_entropy(model(x), y), cfg, CPU))
        saved.append(sum(count))
    step.remove()
    return saved


def reference(model, cfg, data, k=3):
    """The same training with a full forward and backward every step (no pruning), under autocast."""
    opt = Multirate(partition.layerwise(model, ["1"]), lr=0.05, k=k, momentum=0.9)
    for x, y in data:
        opt.zero_grad()
        with accel.autocast(cfg, CPU):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def assert_fast_steps_save_only_the_head(saved, k=3):
    # Steps: slow, fast (first of its kind: unpruned), fast, slow, fast, fast
    slow, pruned = saved[0], [s for i, s in enumerate(saved) if i % k and i > 1]
    assert all(s == saved[0] for s in saved[::k])
    assert pruned and all(s == pruned[0] for s in pruned)
    assert pruned[0] < slow / 4


def test_bf16_autocast_keeps_the_saving_and_the_iterates():
    cfg = RunConfig(amp="bf16")
    models = [mlp(), mlp()]
    data = batches((16,))
    saved = train(models[0], cfg, data)
    reference(models[1], cfg, data)
    assert_fast_steps_save_only_the_head(saved)
    for a, b in zip(*(m.state_dict().values() for m in models)):
        assert torch.equal(a, b)
    # The forward really ran in bf16
    with accel.autocast(cfg, CPU):
        assert models[0](data[0][0]).dtype == torch.bfloat16


def test_channels_last_keeps_the_saving_and_the_iterates():
    cfg = RunConfig(channels_last=True)
    models = [cnn(), cnn()]
    data = batches((3, 8, 8))
    saved = train(models[0], cfg, data)
    assert models[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    reference(models[1], RunConfig(), data)
    assert_fast_steps_save_only_the_head(saved)
    for a, b in zip(*(m.state_dict().values() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # NHWC kernels sum in another order


def check_compiled(backend):
    cfg = RunConfig(compile=True)
    compiled, eager = mlp(), mlp()
    data = batches((16,))
    accel.prepare_model(compiled, cfg, CPU, compile_backend=backend)
    saved = train(compiled, RunConfig(), data)  # already compiled: train() must not compile again
    saved_eager = train(eager, RunConfig(), data)
    assert_fast_steps_save_only_the_head(saved)
    assert saved[2] == saved_eager[2]  # the fast step keeps exactly what the eager one keeps
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compiled in place: same names
    for a, b in zip(compiled.state_dict().values(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.is_grad_enabled()


def test_compile_keeps_the_saving():
    check_compiled("aot_eager")  # dynamo + AOTAutograd, as inductor, without compiling kernels


@pytest.mark.slow
def test_compile_inductor_keeps_the_saving():
    check_compiled("inductor")  # compiles C++ kernels: about a minute


def test_grad_scaler_only_for_fp16():
    assert accel.grad_scaler(RunConfig(amp="none"), CPU) is None
    assert accel.grad_scaler(RunConfig(amp="bf16"), CPU) is None
    assert isinstance(accel.grad_scaler(RunConfig(amp="fp16"), CPU), torch.amp.GradScaler)


def test_fp16_autocast_with_scaler_keeps_the_saving_and_the_iterates():
    """amp="fp16": TrainStep drives the scaler; the iterates equal torch's GradScaler recipe."""
    cfg = RunConfig(amp="fp16")
    models = [mlp(), mlp()]
    data = batches((16,))
    saved = train(models[0], cfg, data)
    opt = Multirate(partition.layerwise(models[1], ["1"]), lr=0.05, k=3, momentum=0.9)
    scaler = accel.grad_scaler(cfg, CPU)
    for x, y in data:  # the recipe of torch.amp's docs, full forward and backward every step
        opt.zero_grad()
        with accel.autocast(cfg, CPU):
            loss = F.cross_entropy(models[1](x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert opt.param_groups[0]["step"] == len(data)
    assert_fast_steps_save_only_the_head(saved)
    for a, b in zip(*(m.state_dict().values() for m in models)):
        assert torch.equal(a, b)
    with accel.autocast(cfg, CPU):
        assert models[0](data[0][0]).dtype == torch.float16


def test_no_options_change_nothing():
    cfg = RunConfig()
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    assert accel.prepare_model(model, cfg, CPU) is model
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))
    loss = lambda: torch.ones(())  # noqa: E731
    assert accel.autocast_loss(loss, cfg, CPU) is loss
    assert isinstance(accel.make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1)), TrainStep)


def test_cudnn_benchmark_and_deterministic_conflict():
    with pytest.raises(ValueError, match="cudnn_benchmark"):
        accel.configure_backends(RunConfig(cudnn_benchmark=True, deterministic=True), CPU)
    before = torch.backends.cudnn.benchmark
    accel.configure_backends(RunConfig(cudnn_benchmark=True), CPU)  # CUDA only
    assert torch.backends.cudnn.benchmark == before


def test_to_device_on_cpu():
    tensors = (torch.arange(6), torch.ones(2, 3))
    moved = accel.to_device(tensors, CPU)
    assert all(torch.equal(a, b) for a, b in zip(tensors, moved))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory and non-blocking copies need CUDA")
def test_to_device_cuda_pinned_non_blocking():
    device = torch.device("cuda")
    tensors = (torch.arange(1000), torch.randn(10, 10))
    moved = accel.to_device(tensors, device)
    torch.cuda.synchronize()
    assert all(m.is_cuda and torch.equal(m.cpu(), t) for m, t in zip(moved, tensors))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cudnn.benchmark is a CUDA setting")
def test_cudnn_benchmark_on_cuda():
    before = torch.backends.cudnn.benchmark
    try:
        accel.configure_backends(RunConfig(cudnn_benchmark=True), torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


FAULTS_PER_STEP = """
import resource, sys, torch
from experiments.core import accel
kept = accel.keep_freed_host_memory() if sys.argv[1] == "keep" else False
def step():  # a training step's pattern: tensors of a few sizes made, every page touched, all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(n_bytes // 4) for n_bytes in (40 << 20, 8 << 20, 40 << 20)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, accel.host_memory_kept(), *[step() for _ in range(8)])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator on Linux")
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_host_memory_stops_steps_faulting_their_pages_in_again(mode, monkeypatch):
    # A fresh process: the setting is process-wide and for good. A step touches 88 MiB = 22,528
    # pages of 4 KiB; glibc unmaps blocks over 32 MiB when they are freed.
    monkeypatch.delenv("MULTIRATE_KEEP_HOST_MEMORY", raising=False)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1]).stdout.split()
    kept, reported, faults = out[0] == "True", out[1] == "True", [int(n) for n in out[2:]]
    assert kept == reported == (mode == "keep")
    later = faults[4:]  # once the heap has grown to the step's size
    if mode == "keep":
        assert sum(later) < 1000, faults
    else:
        assert min(later) > 10000, faults


def test_keep_freed_host_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MULTIRATE_KEEP_HOST_MEMORY", "0")
    monkeypatch.setattr(accel, "_host_memory_kept", False)
    assert accel.keep_freed_host_memory() is False
    assert accel.host_memory_kept() is False


def test_amp_auto_is_none_on_a_cpu_and_bf16_only_on_a_gpu_that_runs_it_natively(monkeypatch):
    """A CPU runs bf16 autocast far slower than float32 (the paper profile's language model 16x):
    "auto" leaves it off there, and the loss function is the plain one."""
    cfg = RunConfig(amp="auto")
    assert accel.resolve_amp("auto", CPU) == "none" and accel.resolved_options(cfg, CPU) == {"amp": "none"}
    loss = lambda: torch.ones(())  # noqa: E731
    assert accel.autocast_loss(loss, cfg, CPU) is loss and accel.grad_scaler(cfg, CPU) is None
    for setting in ("none", "bf16", "fp16"):  # an explicit choice is kept, on any device
        assert accel.resolve_amp(setting, CPU) == setting
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = torch.device("cuda")
    for capability, expected in (((7, 5), "none"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert accel.resolve_amp("auto", gpu) == expected


def test_the_paper_profile_resolves_amp_by_device():
    """The paper profile's TOMLs say amp = "auto"; the other profiles keep amp = "none", so their
    runs keep their names and bits."""
    from experiments import patch, regularization_lm, regularization_mlp, transfer, transfer_text
    from experiments.core.config import experiment_config, list_methods, load_config

    for module in (patch, regularization_lm, regularization_mlp, transfer, transfer_text):
        cls, toml = experiment_config(module)
        method = list_methods(toml)[0]
        assert load_config(cls, toml, "paper", method).amp == "auto", module.__name__
        for profile in ("quick", "cpu"):
            assert load_config(cls, toml, profile, method).amp == "none", (module.__name__, profile)

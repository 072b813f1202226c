"""Speed-up of multirate over full fine-tuning, per training step, with random weights.

    python -m benchmarks.speedup --model resnet34 --image-size 32 --batch-size 128 --k 5 \
        --steps 10 --repeats 5 --threads 1 --json /tmp/speedup/resnet34.json

Three methods train the same model (three copies of one random initialisation) on one fixed
random minibatch, each step through :class:`multirate.TrainStep`:

- ``train_all``: SGD with momentum over every parameter;
- ``multirate``: Multirate with linear drift, fast = the head, slow = the rest;
- ``head_only``: SGD with momentum over the head, the rest frozen (``requires_grad_(False)``).

The head is ``fc`` for the ResNets and ``pre_classifier`` + ``classifier`` for DistilBERT (the two
linear layers on top of the transformer, which a sequence-classification fine-tune adds).

Timing: after a warm-up window, each repeat times ``--steps`` steps of every method, the methods
taking turns (round robin) so that load from other processes hits all of them alike; a method's
time per step is the median over repeats. The same rounds also time the phases of a step --
forward F and full backward B of a train-all step, and the head-only backward b after a forward
whose backbone recorded no graph (what a fast step does) -- which give the best speed-up the
paper's cost model allows, k(F+B) / (kF + B + (k-1)b).

The phases are timed as the steps really run: F and B on a train-all step, and on a fast step its
forward f (autograd off until the head, so no graph through the slow part) and backward b, so the
limit is k(F+B) / (F + B + (k-1)(f+b)), with f = F the paper's formula. Each time is the median
of the same interleaved repeats, reported with its spread (min-max); a speed-up above 100 % of the
limit is flagged (it means the timings are noise, not that the bound is beaten).

Each repeat also times every single step by kind (train_all, multirate's slow and fast steps,
head_only) and, through torch's optimizer step hooks, every ``optimizer.step()`` inside them: on a
GPU with CUDA events, so the windows are not synchronised step by step. Their medians say where
multirate loses against the limit: a slow step dearer than a train-all step, a fast step dearer
than a head-only one, or the optimizer (linear drift moves every slow parameter on every step).

    python -m benchmarks.speedup --optimizer-only --threads 1

times the optimizer step alone (fixed random gradients, 784-1024-10 perceptron) of
torch.optim.SGD(foreach=True), Multirate random subgroups (the regularisation experiment's k = 2,
slow_fraction = 0.2) and layer-wise Multirate (k = 5, drift), and the whole training step
(forward, backward, step; 784-512-10, batch 50) of SGD and random subgroups, interleaved.

Settings can also come from a TOML file (``--config file.toml``, keys = the fields of
``Settings``); flags given on the command line override it.

On a CPU shared with other jobs use ``--threads 1``: with one thread per core, OpenMP threads wait
for each other whenever another process holds a core, and step times swing 10-40x. ``--clock
process`` (with one thread) times the CPU this process gets, so the load of others drops out.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

try:
    import resource  # the process's page-fault counts
except ImportError:  # Windows
    resource = None

from experiments.core.accel import host_memory_kept, keep_freed_host_memory
from experiments.core.config import check_fields, read_toml, require
from experiments.core.errors import one_line
from experiments.core.files import write_json
from multirate import Multirate, TrainStep, partition

MODELS = ("resnet34", "resnet50", "distilbert")
METHODS = ("train_all", "multirate", "head_only")
HEADS = {"resnet34": ["fc"], "resnet50": ["fc"], "distilbert": ["pre_classifier", "classifier"]}
# "process": CPU seconds of this process, which leaves out the time other processes take from it on
# a shared machine; it measures compute only with --threads 1 (idle OpenMP threads spin).
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
LR, MOMENTUM = 1e-3, 0.9  # speed does not depend on them; small enough that the loss stays finite


@dataclass
class Settings:
    model: str = "resnet34"
    image_size: int = 32
    seq_len: int = 128
    batch_size: int = 128
    k: int = 5
    steps: int = 10  # steps per timed window; a multiple of k
    repeats: int = 5
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # ResNets in NHWC: the layout oneDNN/cuDNN convolutions are fastest in, for every method alike
    # (on this 2-core CPU it cut ResNet-50's F by ~25 % and B by ~8 %).
    channels_last: bool = True
    # glibc keeps freed host memory (experiments.core.accel.keep_freed_host_memory): otherwise, at these
    # models' sizes, multirate's slow steps fault their graph's pages in again every cycle.
    keep_host_memory: bool = True
    clock: str = "wall"
    json: str | None = None
    optimizer_only: bool = False  # time the optimizer step alone (and the perceptron training step)
    # Overrides of DistilBertConfig() (tests use a tiny one); not on the command line.
    distilbert_config: dict = field(default_factory=dict)


def build(s: Settings) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """A randomly initialised model on the device and a function: model -> loss on a fixed batch."""
    torch.manual_seed(0)
    device = torch.device(s.device)
    if s.model == "distilbert":
        from transformers import DistilBertConfig, DistilBertForSequenceClassification

        config = DistilBertConfig(num_labels=2, **s.distilbert_config)
        model = DistilBertForSequenceClassification(config).to(device)
        ids = torch.randint(0, config.vocab_size, (s.batch_size, s.seq_len), device=device)
        mask = torch.ones_like(ids)
        y = torch.randint(0, 2, (s.batch_size,), device=device)
        return model, lambda m: F.cross_entropy(m(input_ids=ids, attention_mask=mask).logits, y)
    import torchvision

    model = getattr(torchvision.models, s.model)(num_classes=100).to(device)
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (s.batch_size,), device=device)
    return model, lambda m: F.cross_entropy(m(x), y)


def head_params(model: nn.Module, head: list[str]) -> list[nn.Parameter]:
    return [p for name, module in model.named_children() if name in head for p in module.parameters()]


def make_steps(model: nn.Module, loss_fn, head: list[str], k: int, clock: Callable,
               calls: PerCall) -> dict[str, Callable]:
    """One callable per method that trains its own copy of ``model`` on one minibatch; ``calls``
    records every step and every ``optimizer.step()`` by kind (multirate's slow and fast apart)."""
    models = {name: copy.deepcopy(model) for name in METHODS}
    frozen = models["head_only"]
    frozen.requires_grad_(False)  # once, before TrainStep: the backbone then never records a graph
    for p in head_params(frozen, head):
        p.requires_grad_(True)
    optimizers = {
        "train_all": torch.optim.SGD(models["train_all"].parameters(), lr=LR, momentum=MOMENTUM),
        "multirate": Multirate(partition.layerwise(models["multirate"], head), lr=LR, k=k,
                               momentum=MOMENTUM),  # linear drift is the default
        "head_only": torch.optim.SGD(head_params(frozen, head), lr=LR, momentum=MOMENTUM),
    }
    steps = {}
    for name in METHODS:
        train_step, m, opt = TrainStep(models[name], optimizers[name]), models[name], optimizers[name]
        kind = ((lambda opt=opt: "multirate slow" if opt.is_slow_step else "multirate fast")
                if name == "multirate" else (lambda name=name: name))
        steps[name] = calls.timed(lambda train_step=train_step, m=m: train_step(lambda: loss_fn(m)), kind)
        calls.time_optimizer(opt, kind)
    # The phases run on the train_all copy (full graph) and the head_only copy (no backbone graph).
    steps["phases"] = lambda: measure_phases(models["train_all"], models["head_only"], loss_fn, clock)
    return steps


class PerCall:
    """Seconds of single calls by kind -- whole steps, and ``optimizer.step()`` through torch's step
    hooks -- timed inside the benchmark's windows without synchronising there: with CUDA events on
    a GPU (read after the window's synchronize, :meth:`collect`), with the benchmark's clock on a
    CPU. They say where multirate's steps lose against the limit's phases."""

    def __init__(self, device: str, clock: Callable):
        self.cuda, self.clock = device == "cuda", clock
        self.steps: dict[str, list[float]] = {}
        self.optimizer_steps: dict[str, list[float]] = {}
        self.page_faults: dict[str, list[int]] = {}  # minor faults of the process per step, on a CPU
        self._pending = []  # (times, kind, start event, end event) on a GPU

    def _start(self):
        if not self.cuda:
            return self.clock()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _stop(self, times: dict, kind: str, start) -> None:
        if not self.cuda:
            times.setdefault(kind, []).append(self.clock() - start)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((times, kind, start, end))

    def timed(self, step: Callable, kind: Callable[[], str]) -> Callable:
        def run():
            label = kind()  # the kind before the step: it changes the cycle
            faults = None if self.cuda else minor_page_faults()
            start = self._start()
            out = step()
            self._stop(self.steps, label, start)
            if faults is not None:
                self.page_faults.setdefault(label, []).append(minor_page_faults() - faults)
            return out
        return run

    def time_optimizer(self, optimizer: torch.optim.Optimizer, kind: Callable[[], str]) -> None:
        started = []
        optimizer.register_step_pre_hook(lambda *_: started.append((kind(), self._start())))
        optimizer.register_step_post_hook(lambda *_: self._stop(self.optimizer_steps, *started.pop()))

    def collect(self) -> None:
        """Read the GPU events of the calls so far (after a synchronize)."""
        for times, kind, start, end in self._pending:
            times.setdefault(kind, []).append(start.elapsed_time(end) / 1e3)
        self._pending.clear()

    def clear(self) -> None:
        self.steps.clear()
        self.optimizer_steps.clear()
        self.page_faults.clear()
        self._pending.clear()

    def medians(self) -> dict[str, dict[str, float]]:
        return {what: {kind: statistics.median(t) for kind, t in getattr(self, what).items()}
                for what in ("steps", "optimizer_steps", "page_faults")}


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (None where the platform does not count them)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_phases(full: nn.Module, frozen: nn.Module, loss_fn, clock: Callable) -> tuple[float, ...]:
    """Seconds of (F, B, f, b): forward and backward of a train-all step, forward and backward of
    a fast step (the backbone records no graph, as under TrainStep's pruning)."""
    sync = torch.cuda.synchronize if next(full.parameters()).is_cuda else (lambda: None)
    full.zero_grad(set_to_none=True)
    sync()
    t0 = clock()
    loss = loss_fn(full)
    sync()
    t1 = clock()
    loss.backward()
    sync()
    t2 = clock()
    full.zero_grad(set_to_none=True)  # free the gradients before the next forward
    sync()
    t2 = clock()
    loss = loss_fn(frozen)  # the backbone has no trainable parameters: no graph before the head
    sync()
    t3 = clock()
    loss.backward()
    sync()
    t4 = clock()
    frozen.zero_grad(set_to_none=True)
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def window(step: Callable, n: int, sync: Callable, clock: Callable) -> float | tuple[float, ...]:
    """Mean seconds per call of ``step`` over ``n`` calls (per component if it returns times)."""
    sync()
    start = clock()
    parts = [step() for _ in range(n)]
    sync()
    if isinstance(parts[0], tuple):
        return tuple(sum(c) / n for c in zip(*parts, strict=True))
    return (clock() - start) / n


def limit(k: int, F: float, B: float, b: float, f: float | None = None) -> float:
    """Best speed-up of multirate over train-all when a fast step costs f + b (paper notes: f = F)."""
    f = F if f is None else f
    return k * (F + B) / (F + B + (k - 1) * (f + b))


def benchmark(s: Settings) -> dict:
    if s.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {s.model!r}")
    if s.k < 1 or s.steps < 1 or s.repeats < 1 or s.steps % s.k:
        # Every timed window then holds the same number (steps / k) of slow steps.
        raise ValueError(f"need k, steps, repeats >= 1 and steps a multiple of k; got "
                         f"k={s.k}, steps={s.steps}, repeats={s.repeats}")
    if s.clock == "process" and s.device == "cuda":
        raise ValueError("the process clock does not see GPU time; use --clock wall on cuda")
    return measured(_benchmark, s)


def measured(measure: Callable[[Settings], dict], s: Settings) -> dict:
    """``measure(s)`` under the benchmark's process settings: freed host memory kept on a CPU (for
    good), ``s.threads`` for its duration; the result says whether the memory setting holds."""
    if s.device == "cpu" and s.keep_host_memory:
        keep_freed_host_memory()
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return {**measure(s), "host_memory_kept": host_memory_kept()}
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: leave it as found (tests share it)


def _benchmark(s: Settings) -> dict:
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    model, loss_fn = build(s)
    model.train()
    clock = CLOCKS[s.clock]
    calls = PerCall(s.device, clock)
    steps = make_steps(model, loss_fn, HEADS[s.model], s.k, clock, calls)
    del model
    for step in steps.values():  # warm-up: allocator, kernels, TrainStep's first unpruned steps
        window(step, s.steps, sync, clock)
    calls.clear()
    times = {name: [] for name in steps}
    for _ in range(s.repeats):
        for name, step in steps.items():  # round robin
            times[name].append(window(step, s.steps, sync, clock))
            calls.collect()
    methods = {name: {"s_per_step": statistics.median(times[name]), "all": times[name]}
               for name in METHODS}
    phases = {name: [t[i] for t in times["phases"]] for i, name in enumerate(("F", "B", "f", "b"))}
    F_, B, f, b = (statistics.median(phases[name]) for name in ("F", "B", "f", "b"))
    speedup = methods["train_all"]["s_per_step"] / methods["multirate"]["s_per_step"]
    result = dict(model=s.model, device=s.device, image_size=s.image_size, seq_len=s.seq_len,
                  batch_size=s.batch_size, k=s.k, steps=s.steps, repeats=s.repeats,
                  threads=torch.get_num_threads(), torch=torch.__version__, head=HEADS[s.model],
                  channels_last=s.channels_last and s.model != "distilbert", clock=s.clock,
                  methods=methods, speedup=speedup,
                  head_only_speedup=methods["train_all"]["s_per_step"] / methods["head_only"]["s_per_step"],
                  F=F_, B=B, f=f, b=b, phases=phases, limit=limit(s.k, F_, B, b, f),
                  per_call=calls.medians())
    result["fraction_of_limit"] = speedup / result["limit"]
    return result


def report(r: dict) -> str:
    base = r["methods"]["train_all"]["s_per_step"]
    lines = [f"{r['model']} on {r['device']} ({r['threads']} threads, {r['clock']} clock), "
             f"batch {r['batch_size']}, k={r['k']}, {r['steps']} steps x {r['repeats']} repeats",
             f"{'method':<10} {'s/step':>9} {'speed-up':>9}"]
    for name, m in r["methods"].items():
        lines.append(f"{name:<10} {m['s_per_step']:9.4f} {base / m['s_per_step']:8.2f}x")
        lines[-1] += f"   ({spread(m['all'])})"
    for name in ("F", "B", "f", "b"):
        lines.append(f"{name} = {r[name]:.4f}s ({spread(r['phases'][name])})")
    lines.append(f"limit k(F+B)/(F+B+(k-1)(f+b)) = {r['limit']:.2f}x; "
                 f"multirate reaches {100 * r['fraction_of_limit']:.0f}% of it")
    for what, label in (("steps", "single steps (median)"), ("optimizer_steps", "of which optimizer.step()")):
        lines.append(f"{label}: " + ", ".join(f"{kind} {t:.4f}s" for kind, t in r["per_call"][what].items()))
    if r["per_call"].get("page_faults"):
        lines.append("minor page faults per step (median): " + ", ".join(
            f"{kind} {n:.0f}" for kind, n in r["per_call"]["page_faults"].items())
            + ("" if r.get("host_memory_kept") else " (freed host memory not kept: --keep-host-memory)"))
    if r["fraction_of_limit"] > 1:
        lines.append("WARNING: above 100 % of the limit: the timings are noise (another process, "
                     "an outlier repeat); rerun with more --repeats or on an idle machine")
    return "\n".join(lines)


def spread(times: list[float]) -> str:
    return f"spread {min(times):.4f}-{max(times):.4f}s over {len(times)}"


def optimizer_benchmark(s: Settings) -> dict:
    """Seconds per optimizer step alone and per perceptron training step, interleaved repeats."""
    return measured(_optimizer_benchmark, s)


def perceptron(hidden: int, device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)


OPTIMIZERS = {  # the regularisation experiment's random subgroups; a head-fast layer-wise split
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, foreach=True),
    "random_subgroups": lambda m: Multirate(partition.random_subgroups(m, 0.2), lr=2 * LR, k=2,
                                            momentum=MOMENTUM, linear_drift=False),
    "layerwise": lambda m: Multirate(partition.layerwise(m, ["3"]), lr=5 * LR, k=5, momentum=MOMENTUM),
}


def _optimizer_benchmark(s: Settings) -> dict:
    if s.steps % 10:
        raise ValueError(f"--optimizer-only needs steps a multiple of 10 (k = 2 and 5), got {s.steps}")
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    clock = CLOCKS[s.clock]
    runs = {}
    for name, make in OPTIMIZERS.items():  # the optimizer step alone, on fixed random gradients
        model = perceptron(1024, s.device)
        opt = make(model)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        runs["step:" + name] = opt.step
    x = torch.randn(50, 1, 28, 28, device=s.device)
    y = torch.randint(0, 10, (50,), device=s.device)
    for name in ("sgd", "random_subgroups"):  # forward, backward and step, as the experiment trains
        model = perceptron(512, s.device)
        train_step = TrainStep(model, OPTIMIZERS[name](model))
        runs["train:" + name] = lambda t=train_step, m=model: t(lambda: F.cross_entropy(m(x), y))
    for run in runs.values():  # warm-up
        window(run, s.steps, sync, clock)
    times = {name: [] for name in runs}
    for _ in range(s.repeats):
        for name, run in runs.items():  # round robin
            times[name].append(window(run, s.steps, sync, clock))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {"step:random_subgroups / step:sgd": medians["step:random_subgroups"] / medians["step:sgd"],
              "step:layerwise / step:sgd": medians["step:layerwise"] / medians["step:sgd"],
              "train:random_subgroups / train:sgd": medians["train:random_subgroups"] / medians["train:sgd"]}
    return dict(device=s.device, threads=torch.get_num_threads(), clock=s.clock, steps=s.steps,
                repeats=s.repeats, torch=torch.__version__, s_per_step=medians, all=times, ratios=ratios)


def optimizer_report(r: dict) -> str:
    lines = [f"optimizer step alone (784-1024-10, fixed random gradients) and training step (784-512-10, "
             f"batch 50) on {r['device']}, {r['threads']} threads, {r['clock']} clock, "
             f"{r['steps']} steps x {r['repeats']} repeats", f"{'':<24} {'ms/step':>8}"]
    for name, t in r["s_per_step"].items():
        lines.append(f"{name:<24} {1e3 * t:8.3f}   ({spread(r['all'][name])})")
    lines += [f"{name:<36} {ratio:5.2f}x" for name, ratio in r["ratios"].items()]
    return "\n".join(lines)


def check_settings(s: Settings) -> None:
    """Raise ValueError naming the first setting (a --config TOML file's or a flag's) that is not
    possible: its type, a choice, a count < 1."""
    check_fields(s)
    require(s, [("model", s.model in MODELS, f"one of {MODELS}"),
                ("device", s.device in ("cpu", "cuda"), "cpu or cuda"),
                ("clock", s.clock in CLOCKS, f"one of {tuple(CLOCKS)}"),
                *((name, getattr(s, name) >= 1, ">= 1")
                  for name in ("image_size", "seq_len", "batch_size", "k", "steps", "repeats")),
                ("threads", s.threads is None or s.threads >= 1, ">= 1 (or unset: torch's default)")])


def parse_args(argv=None) -> Settings:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config_path = pre.parse_known_args(argv)[0].config
    defaults = {}
    if config_path:
        known = {f.name for f in fields(Settings)}
        try:
            defaults = read_toml(config_path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{config_path}: cannot read it as TOML ({one_line(e)})") from None
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise SystemExit(f"{config_path}: unknown key(s) {unknown}; known: {sorted(known)}")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default=Settings.model)
    for name in ("image_size", "seq_len", "batch_size", "k", "steps", "repeats"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(Settings, name))
    p.add_argument("--device", choices=("cpu", "cuda"), default=Settings.device)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="ResNets in NHWC memory format (default: on)")
    p.add_argument("--keep-host-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU, glibc keeps freed memory (default: on; the runner does not)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default=Settings.clock,
                   help="wall time (default) or this process's CPU time (for a shared CPU, with --threads 1)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--optimizer-only", action="store_true",
                   help="time the optimizer step alone against torch SGD (and the perceptron training step)")
    p.add_argument("--config", default=None, help="a TOML file of settings (keys: the flags' names with _)")
    p.set_defaults(**defaults)
    args = vars(p.parse_args(argv))
    del args["config"]
    s = Settings(**args)
    try:
        check_settings(s)
    except ValueError as err:
        raise SystemExit(f"{config_path or 'command line'}: {err}") from None
    if s.steps % s.k:
        p.error(f"--steps ({s.steps}) must be a multiple of --k ({s.k})")
    return s


def main(argv=None) -> dict:
    s = parse_args(argv)
    if s.optimizer_only:
        result = optimizer_benchmark(s)
        print(optimizer_report(result))
    else:
        result = benchmark(s)
        print(report(result))
    if s.json:
        write_json(s.json, result)
    return result


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

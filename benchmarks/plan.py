"""Cost plan of a paper run before booking a cluster: a few real training steps of every method.

    python -m benchmarks.plan transfer --profile paper [steps=N] [--json FILE]   # ResNet-50, CIFAR-100
    python -m benchmarks.plan transfer --profile paper model=resnet34            # ResNet-34, CIFAR-10
    python -m benchmarks.plan all --profile paper steps=2 --json results/paper/plan.json

Experiments: every entry point of ``experiments/core/registry.py`` with ``plan=True`` (transfer,
transfer_text, patch, regularization_lm, regularization_mlp; ``all``: each of them, the transfer
module once per torchvision model of the profile, as the registry's override sets say). Options:
``--method a,b``, ``--seeds 0,1,2`` (the figure's seed count, default 3), ``--measure-batch M``,
``--json FILE``, ``key=value`` overrides of the config.

For each method the plan runs the task's own code, as `experiments.core.runner.run` does: ``Task(cfg)``,
``train_tensors`` (the whole training set on the device), ``build_model``, ``apply_train``,
``build_optimizer``, the `experiments.core.accel` options of the config, ``TrainStep``, and per step
``task.batch`` (augmentation on the device) and ``task.loss``. It prints per method: seconds per
step (multirate: its slow and its fast steps apart, and their mean over a cycle of k), peak memory
(CPU: the process's resident-set high-water mark during the steps, via ``resource.getrusage``
after resetting it; CUDA: ``torch.cuda.max_memory_allocated``), steps per run (epochs x
training-set size // batch size), and the projected training hours per run and for the figure
(every method x seeds). Evaluation, checkpointing and start-up are not included.

Timing: the first step of each kind (slow, fast) is not timed (TrainStep runs it unpruned to learn
which parameters get gradients; lazy allocations, cuDNN autotuning and compilation happen there);
the next ``steps`` (default 3) of each kind are, and their median is used. A multirate run's next
slow step comes after k - 1 fast ones; to time it without running those, the plan moves the
optimizer's cycle position to the cycle's end (a ``state_dict`` round trip), which changes the
iterates (of no consequence here) but not the cost of a step. With ``--measure-batch M`` (< the
batch size B) the steps run on minibatches of M examples and the times are scaled by B / M (linear
in the batch, which a CPU is and a GPU at small M is not: there it over-estimates); peak memory
is then the one at M.

Weights and data: pretrained weights are used when they are in the local cache
(``torch.hub.get_dir()``, the Hugging Face cache); otherwise the model is built at its real size
with random weights. A data set that is not under `experiments.datasets.data.data_root()` (SST-2: neither
in the Hugging Face ``datasets`` cache, read with the hub's offline flags on, nor there) is replaced
by stand-in tensors of the real shapes, dtypes and sizes (random uint8 images 3x32x32 or 1x28x28,
labels in the class range, token ids in the vocabulary range). This works by handing the task,
for the plan only, wrappers of the loaders it calls (``experiments.datasets.data.fetch_*``/``load_*``,
``experiments.transfer.imagenet_resnet``, ``experiments.transfer_text.load_classifier`` etc.) that
use the real file where it is there and the stand-in where not; the output says which, plainly.
Nothing is downloaded.

On a GPU machine, the plan of every paper run and the speed-up table as one short script::

    make setup && . .venv/bin/activate
    python -m benchmarks.plan all --profile paper device=cuda amp=bf16 channels_last=true \\
        cudnn_benchmark=true steps=5 --json results/paper/plan-cuda.json | tee plan-cuda.md
    make speedup DEVICE=cuda | tee speedup-cuda.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.core import accel, determinism, registry, runner
from experiments.core.config import (
    PROFILES,
    RunConfig,
    experiment_config,
    list_methods,
    load_config,
    run_selection,
)
from experiments.core.files import write_json
from experiments.core.optimizers import apply_train, build_optimizer
from experiments.datasets import data

DEFAULT_STEPS = 3
DEFAULT_SEEDS = 3  # the figures' seeds: `make figures SEEDS=0,1,2`
GIB = 2**30

# The real data sets' sizes (what the stand-ins reproduce): training / test examples.
CIFAR_SIZES = (50_000, 10_000)
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
MNIST_SIZES = (60_000, 10_000)
PTB_TOKENS = (929_589, 73_760, 82_430)  # train, valid, test words with <eos> (Mikolov's files)
PTB_VOCAB = 10_000
SST2_SIZES = (67_349, 872)  # GLUE train, dev
BERT_CLS, BERT_SEP, BERT_FIRST_WORD, BERT_VOCAB = 101, 102, 1996, 30_522  # bert-base-uncased ids
STAND_IN = Path("/multirate-plan-stand-in")  # what a stand-in fetch_* returns: no such folder exists
SST2_STAND_IN = {"train": ([], torch.zeros(0, dtype=torch.int64)),  # what a stand-in load_sst2 returns
                 "dev": ([], torch.zeros(0, dtype=torch.int64))}    # (sst2_tensors then stands in)


# ----------------------------------------------------------------------------- loaders: real or stand-in

class Sources:
    """The wrappers the plan hands the tasks in place of their loaders, and what they used.

    `notes` collects one line per data set or model: from the local files, or stood in for.
    """

    def __init__(self):
        self.notes: list[str] = []

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)

    def wrappers(self) -> dict[str, Callable[[Callable], Callable]]:
        """Loader name -> function(original) -> its replacement."""
        return {"fetch_cifar": self._fetch_cifar, "load_cifar": self._load_cifar,
                "fetch_mnist": self._fetch_mnist, "load_mnist": self._load_mnist,
                "fetch_ptb": self._fetch_ptb, "load_ptb": self._load_ptb,
                "load_sst2": self._load_sst2, "sst2_tensors": self._sst2_tensors,
                "load_tokenizer": self._load_tokenizer, "load_classifier": self._load_classifier,
                "imagenet_resnet": self._imagenet_resnet}

    # -- data
    def _fetch_cifar(self, original):
        def fetch_cifar(root=None, name="cifar10"):
            root = Path(root) if root is not None else data.data_root()
            if (root / data.CIFAR[name][1]).is_dir():
                self.note(f"data: {name} from {root / data.CIFAR[name][1]}")
                return original(root, name)
            return STAND_IN / name
        return fetch_cifar

    def _load_cifar(self, original):
        def load_cifar(root, name="cifar10", train=True):
            if not _stand_in(root):
                return original(root, name, train)
            n, classes = CIFAR_SIZES[0 if train else 1], CIFAR_CLASSES[name]
            self.note(f"data: {name} not found under {data.data_root()}: stand-in of its shapes, "
                      f"random uint8 images {CIFAR_SIZES[0]}x3x32x32 (test {CIFAR_SIZES[1]}), "
                      f"labels in [0, {classes})")
            g = torch.Generator().manual_seed(int(train))
            return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, classes, (n,), generator=g))
        return load_cifar

    def _fetch_mnist(self, original):
        def fetch_mnist(root=None):
            folder = (Path(root) if root is not None else data.data_root()) / "mnist"
            if all((folder / file).exists() for file in data.MNIST_MD5):
                self.note(f"data: MNIST from {folder}")
                return original(root)
            return STAND_IN / "mnist"
        return fetch_mnist

    def _load_mnist(self, original):
        def load_mnist(root, train=True):
            if not _stand_in(root):
                return original(root, train)
            n = MNIST_SIZES[0 if train else 1]
            self.note(f"data: MNIST not found under {data.data_root()}: stand-in of its shapes, random "
                      f"uint8 images {MNIST_SIZES[0]}x1x28x28 (test {MNIST_SIZES[1]}), labels in [0, 10)")
            g = torch.Generator().manual_seed(int(train))
            return (torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g))
        return load_mnist

    def _fetch_ptb(self, original):
        def fetch_ptb(root=None):
            folder = (Path(root) if root is not None else data.data_root()) / "ptb"
            if all((folder / file).exists() for file in data.PTB_FILES):
                self.note(f"data: Penn Treebank from {folder}")
                return original(root)
            return STAND_IN / "ptb"
        return fetch_ptb

    def _load_ptb(self, original):
        def load_ptb(root):
            if not _stand_in(root):
                return original(root)
            self.note(f"data: Penn Treebank not found under {data.data_root()}: stand-in of its sizes, "
                      f"random token ids in [0, {PTB_VOCAB}), {'/'.join(map(str, PTB_TOKENS))} "
                      f"train/valid/test tokens")
            g = torch.Generator().manual_seed(0)
            train, valid, test = (torch.randint(0, PTB_VOCAB, (n,), generator=g) for n in PTB_TOKENS)
            return data.Corpus([f"w{i}" for i in range(PTB_VOCAB)], train, valid, test)
        return load_ptb

    def _load_sst2(self, original):
        def load_sst2(root=None, hub=True):
            if hub:
                try:
                    with hub_cache_only():
                        splits = data.load_sst2_hub()
                    self.note("data: SST-2 from the Hugging Face datasets cache")
                    return splits
                except Exception:  # not installed, or not in the cache: the data root, else a stand-in
                    pass
            folder = (Path(root) if root is not None else data.data_root()) / "SST-2"
            if folder.is_dir():
                self.note(f"data: SST-2 from {folder}")
                return original(root, hub=False)
            self.note(f"data: SST-2 in neither the Hugging Face datasets cache nor {folder}")
            return SST2_STAND_IN
        return load_sst2

    def _load_tokenizer(self, original):
        def load_tokenizer(name):
            from transformers import AutoTokenizer

            try:
                return AutoTokenizer.from_pretrained(name, local_files_only=True)
            except OSError:
                self.note(f"tokenizer: {name} not in the Hugging Face cache")
                return None
        return load_tokenizer

    def _sst2_tensors(self, original):
        def sst2_tensors(splits, tokenizer, max_length):
            if splits is not SST2_STAND_IN and tokenizer is not None:
                return original(splits, tokenizer, max_length)
            self.note(f"data: SST-2 stand-in of its sizes ({SST2_SIZES[0]} train, {SST2_SIZES[1]} dev "
                      f"sentences): random token ids in [{BERT_FIRST_WORD}, {BERT_VOCAB}) between [CLS] "
                      f"and [SEP], every sentence {max_length} tokens long (an upper bound: the runner "
                      f"trims each batch to its longest sentence)")
            g = torch.Generator().manual_seed(0)
            out = {}
            for split, n in zip(("train", "test"), SST2_SIZES):
                ids = torch.randint(BERT_FIRST_WORD, BERT_VOCAB, (n, max_length), generator=g)
                ids[:, 0], ids[:, -1] = BERT_CLS, BERT_SEP
                out[split] = (ids, torch.ones_like(ids), torch.randint(0, 2, (n,), generator=g))
            return out
        return sst2_tensors

    # -- weights
    def _load_classifier(self, original):
        def load_classifier(name, init="pretrained"):
            from transformers import DistilBertConfig, DistilBertForSequenceClassification

            try:
                if init == "scratch":
                    config = DistilBertConfig.from_pretrained(name, num_labels=2, local_files_only=True)
                    return DistilBertForSequenceClassification(config)
                model = DistilBertForSequenceClassification.from_pretrained(name, num_labels=2,
                                                                            local_files_only=True)
                self.note(f"weights: {name} from the Hugging Face cache")
                return model
            except OSError:
                self.note(f"weights: {name} not in the Hugging Face cache: random weights of "
                          f"DistilBertConfig() (distilbert-base's size: dim 768, 6 layers, vocabulary "
                          f"{BERT_VOCAB})")
                return DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
        return load_classifier

    def _imagenet_resnet(self, original):
        def imagenet_resnet(name):
            import torchvision

            weights = torchvision.models.get_weight(_torchvision_weights(original, name))
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            if cached.exists():
                self.note(f"weights: {weights} from {cached}")
                return original(name)
            self.note(f"weights: {weights} not cached at {cached}: {name} with random weights")
            return getattr(torchvision.models, name)(weights=None)
        return imagenet_resnet

    @contextlib.contextmanager
    def installed(self):
        """Within the block, every ``experiments`` module (and ``__main__``) that holds one of the
        loaders holds its wrapper instead; the originals are put back after."""
        modules = [m for name, m in list(sys.modules.items())
                   if name == "experiments" or name.startswith("experiments.") or name == "__main__"]
        wrapped: dict[int, Callable] = {}
        swapped = []
        for module in modules:
            for name, make in self.wrappers().items():
                original = vars(module).get(name)
                if not inspect.isfunction(original):
                    continue
                if id(original) not in wrapped:
                    wrapped[id(original)] = make(original)
                setattr(module, name, wrapped[id(original)])
                swapped.append((module, name, original))
        try:
            yield self
        finally:
            for module, name, original in swapped:
                setattr(module, name, original)


def _stand_in(path) -> bool:
    return Path(path).is_relative_to(STAND_IN)


@contextlib.contextmanager
def hub_cache_only():
    """Hugging Face ``datasets`` and ``huggingface_hub`` offline within the block: their caches only.

    Both read ``HF_HUB_OFFLINE`` once, at import, into the module flags they consult on every call;
    the block sets those flags (an ImportError without ``datasets``).
    """
    import datasets
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _torchvision_weights(imagenet_resnet: Callable, name: str) -> str:
    """The weights enum name ("ResNet50_Weights.IMAGENET1K_V2") the experiment uses for `name`."""
    table = imagenet_resnet.__globals__.get("TORCHVISION", {})
    if name not in table:
        raise ValueError(f"no ImageNet weights known for {name!r}")
    return table[name][0]


# ----------------------------------------------------------------------------- one method

def _call(method: Callable, cfg: RunConfig, *args):
    """A Task method under either API: ``build_model(cfg)``/``train_tensors(cfg, device)`` or,
    the config being the task's own, ``build_model()``/``train_tensors(device)``."""
    params = list(inspect.signature(method).parameters)
    return method(cfg, *args) if params[:1] == ["cfg"] else method(*args)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> bool:
    """Reset the peak-memory counters; False where the CPU high-water mark cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:  # Linux: "5" resets the resident-set high-water mark that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """The process's resident-set high-water mark, GiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if platform.system() == "Darwin" else peak / 2**20


def skip_to_slow_step(optimizer: torch.optim.Optimizer) -> bool:
    """Move a multirate optimizer's cycle position to the end of its cycle, so that the next step is
    a slow one (for timing only: it drops the cycle's remaining fast steps). False if it cannot."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if not isinstance(group.get("step"), int) or not isinstance(group.get("k"), int):
            return False
        group["step"] += -group["step"] % group["k"]
    optimizer.load_state_dict(state)
    return bool(getattr(optimizer, "is_slow_step", False))


def measure(cfg: RunConfig, task_factory: Callable, steps: int, measure_batch: int | None) -> dict:
    """Time `steps` training steps of each kind of one method (see the module docstring)."""
    device = runner.resolve_device(cfg.device)
    determinism.apply(cfg)  # threads and deterministic kernels, as the runner sets them
    accel.configure_backends(cfg, device)
    runner.seed_everything(cfg.seed)
    resettable = _reset_peak_memory(device)  # the peak from here: data, model, optimizer, steps
    rss_start = peak_rss_gib()

    # Data, model, optimizer and train step, as the runner builds them
    task = task_factory(cfg)
    tensors = _call(task.train_tensors, cfg, device)
    n, bs = len(tensors[0]), cfg.batch_size
    mb = min(measure_batch or bs, bs)
    model = _call(task.build_model, cfg).to(device)
    apply_train(model, cfg.train)
    accel.prepare_model(model, cfg, device)
    optimizer = build_optimizer(cfg, model)
    train_step = accel.make_train_step(model, optimizer, accel.grad_scaler(cfg, device))
    model.train()
    data_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    def one_step() -> float:
        _sync(device)
        start = time.perf_counter()
        rows = torch.randint(0, n, (mb,), generator=data_gen).to(device)
        batch = task.batch(tuple(t[rows] for t in tensors), aug_gen)
        loss = train_step(accel.autocast_loss(functools.partial(task.loss, model, batch), cfg, device))
        _sync(device)
        seconds = time.perf_counter() - start
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"{cfg.method}: the loss is {loss.item()} after a planned step")
        return seconds

    # Warm-up (the first step of each kind), then `steps` timed steps of each kind
    multirate = getattr(optimizer, "is_slow_step", None) is not None and cfg.k > 1
    kinds = ("slow", "fast") if multirate else ("slow",)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    warm: set[str] = set()
    taken = 0
    try:
        while any(len(times[kind]) < steps for kind in kinds):
            kind = "slow" if getattr(optimizer, "is_slow_step", True) else "fast"
            if kind == "fast" and len(times["fast"]) >= steps and skip_to_slow_step(optimizer):
                continue
            seconds = one_step()
            taken += 1
            if kind in warm and len(times[kind]) < steps:
                times[kind].append(seconds)
            warm.add(kind)
    finally:
        train_step.remove()
    peak_cpu = peak_rss_gib()
    peak_cuda = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None

    # Per step over a cycle, scaled to the real batch; steps and hours of one run
    scale = bs / mb
    slow = statistics.median(times["slow"]) * scale
    fast = statistics.median(times["fast"]) * scale if multirate else None
    per_step = (slow + (cfg.k - 1) * fast) / cfg.k if multirate else slow
    steps_per_run = cfg.epochs * (n // bs)
    return dict(
        method=cfg.method, optimizer=cfg.optimizer, k=cfg.k, train=list(cfg.train),
        fast=list(cfg.fast) if cfg.optimizer.startswith("multirate") else None,
        parameters=sum(p.numel() for p in model.parameters()),
        trained_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        batch_size=bs, measure_batch=mb, steps_taken=taken, times_s=times,
        slow_s=slow, fast_s=fast, s_per_step=per_step,
        peak_rss_gib=peak_cpu, rss_start_gib=rss_start, peak_rss_reset=resettable, peak_cuda_gib=peak_cuda,
        n_train=n, epochs=cfg.epochs, steps_per_run=steps_per_run,
        hours_per_run=steps_per_run * per_step / 3600)


# ----------------------------------------------------------------------------- one experiment

def load_experiment(name: str) -> tuple[type[RunConfig], Path, Callable]:
    """(config class, TOML file, task class) of the experiment module ``experiments.<name>``."""
    module = registry.entry_point(name)
    config_cls, toml = experiment_config(module)
    tasks = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, runner.Task)
             and v.__module__ == module.__name__]
    if len(tasks) != 1:
        raise ValueError(f"{module.__name__}: expected one runner.Task subclass, found "
                         f"{[t.__name__ for t in tasks]}")
    return config_cls, toml, tasks[0]


def plan_experiment(name: str, profile: str, methods: list[str] | None, overrides: list[str],
                    steps: int = DEFAULT_STEPS, seeds: int = DEFAULT_SEEDS,
                    measure_batch: int | None = None) -> dict:
    """Measure every method of experiment `name` (one entry point and override set)."""
    config_cls, toml, task_cls = load_experiment(name)
    methods = methods or list_methods(toml) or [config_cls.__dataclass_fields__["method"].default]
    cfgs = [load_config(config_cls, toml, profile, method, overrides) for method in methods]
    sources = Sources()
    results = []
    with sources.installed():
        for cfg in cfgs:
            print(f"  {name} {' '.join(overrides)} {cfg.method} ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(cfg, task_cls, steps, measure_batch))
            except (ValueError, NotImplementedError) as err:  # this method cannot be built: say so, go on
                results.append(dict(method=cfg.method, error=str(err)))
    first = cfgs[0]
    for r in results:
        if "error" not in r:
            r["hours_all_seeds"] = r["hours_per_run"] * seeds
    return dict(experiment=name, overrides=list(overrides), profile=profile,
                model=getattr(first, "model", None), dataset=getattr(first, "dataset", None),
                device=str(runner.resolve_device(first.device)), notes=sources.notes, seeds=seeds,
                steps=steps, methods=results,
                hours_figure=sum(r["hours_all_seeds"] for r in results if "error" not in r))


def _hours(h: float) -> str:
    return f"{h:.3g}" if h < 1000 else f"{h:,.0f}"


def markdown(plan: dict) -> str:
    """One experiment's plan as a Markdown table, with its notes above."""
    title = " ".join([plan["experiment"], *plan["overrides"]])
    measured = [r for r in plan["methods"] if "error" not in r]
    if not measured:
        return f"**{title}**: no method could be built: " + "; ".join(r["error"] for r in plan["methods"])
    m0 = measured[0]
    factor = m0["batch_size"] / m0["measure_batch"]
    scaled = f"; timed on minibatches of {m0['measure_batch']}, times x{factor:g}" if factor != 1 else ""
    cuda = plan["device"].startswith("cuda")
    lines = [f"**{title}** ({plan['profile']} profile, {plan['device']}, {torch.get_num_threads()} threads, "
             f"batch {m0['batch_size']}{scaled}; {m0['parameters'] / 1e6:.1f}M parameters; "
             f"{m0['n_train']} training examples)", ""]
    lines += [f"- {note}" for note in plan["notes"]]
    mem = "peak GPU GiB | peak RSS GiB" if cuda else "peak RSS GiB"
    lines += ["", f"| method | s/step slow | s/step fast | s/step (cycle) | {mem} | steps/run | h/run "
              f"| h x {plan['seeds']} seeds |",
              "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if cuda else "") + " ---: | ---: | ---: |"]
    for r in plan["methods"]:
        if "error" in r:
            lines.append(f"| {r['method']} | not built: {r['error']} |")
            continue
        fast = f"{r['fast_s']:.3g}" if r["fast_s"] is not None else "-"
        memory = (f"{r['peak_cuda_gib']:.2f} | " if cuda else "") + f"{r['peak_rss_gib']:.2f}"
        lines.append(f"| {r['method']} | {r['slow_s']:.3g} | {fast} | {r['s_per_step']:.3g} | {memory} "
                     f"| {r['steps_per_run']:,} | {_hours(r['hours_per_run'])} "
                     f"| {_hours(r['hours_all_seeds'])} |")
    blank = "| " * (6 if cuda else 5)
    lines.append(f"| **all methods** {blank}| | **{_hours(plan['hours_figure'])}** |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def plan_targets(name: str, profile: str, overrides: list[str] = ()) -> list[tuple[str, list[str]]]:
    """(experiment, override set) pairs for `name` ("all": every planned experiment), from the
    registry's override sets of the profile (the transfer module: once per torchvision model);
    an override set whose keys the command line overrides too is replaced by the command line's."""
    given = {item.partition("=")[0].strip() for item in overrides}
    targets = []
    for n in registry.planned() if name == "all" else [name]:
        variants = registry.part(n).override_sets(profile)
        if any(item.partition("=")[0].strip() in given for variant in variants for item in variant):
            variants = [[]]
        targets += [(n, variant) for variant in variants]
    return targets


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description="Cost plan: time a few training steps of every method at the run's real size.",
        epilog="steps=N (timed steps of each kind, default 3) and key=value config overrides")
    planned = registry.planned()
    parser.add_argument("experiment", help=f"one of {', '.join(planned)}, or all")
    parser.add_argument("--profile", default="paper", choices=PROFILES)
    parser.add_argument("--method", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--seeds", default=None,
                        help="the figure's seeds, for the projection (default 0,1,2)")
    parser.add_argument("--measure-batch", type=int, default=None, metavar="M",
                        help="time minibatches of M examples and scale by batch_size / M")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the plan as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    methods, seed_list = run_selection(parser, args)
    if args.experiment != "all" and args.experiment not in planned:
        parser.error(f"unknown experiment {args.experiment!r}: choose one of {', '.join(planned)}, or all")
    if args.measure_batch is not None and args.measure_batch < 1:
        parser.error("--measure-batch must be >= 1")
    steps, overrides = DEFAULT_STEPS, []
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "steps":
            if not value.strip().isdigit() or int(value) < 1:
                parser.error(f"steps={value!r}: must be an integer >= 1")
            steps = int(value)
        else:
            overrides.append(item)
    seeds = len(seed_list) if seed_list else DEFAULT_SEEDS

    plans = []
    try:
        targets = plan_targets(args.experiment, args.profile, overrides)
        for name, variant in targets:  # every config first: an impossible one fails before any timing
            config_cls, toml, _ = load_experiment(name)
            default = [config_cls.__dataclass_fields__["method"].default]
            for method in methods or list_methods(toml) or default:
                load_config(config_cls, toml, args.profile, method, [*variant, *overrides])
        for name, variant in targets:
            plan = plan_experiment(name, args.profile, methods, [*variant, *overrides], steps, seeds,
                                   args.measure_batch)
            print(markdown(plan) + "\n", flush=True)
            plans.append(plan)
    except (ValueError, data.DownloadError) as err:
        raise SystemExit(f"benchmarks.plan: {err}") from None
    total = sum(p["hours_figure"] for p in plans)
    if len(plans) > 1:
        print(f"All planned runs: {_hours(total)} hours of training on this device.", flush=True)
    if args.json:
        out = dict(torch=torch.__version__, threads=torch.get_num_threads(), host=platform.node(),
                   argv=argv if argv is not None else sys.argv[1:], hours_total=total, plans=plans,
                   cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
        write_json(args.json, out, default=str)
    return plans


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)


__all__ = ["main", "plan_experiment", "measure", "markdown", "Sources", "skip_to_slow_step",
           "peak_rss_gib"]

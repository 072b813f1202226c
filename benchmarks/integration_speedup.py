"""Speed-up of Multirate inside the Hugging Face Trainer and PyTorch Lightning, next to TrainStep's.

    python -m benchmarks.integration_speedup --framework huggingface --threads 1
    python -m benchmarks.integration_speedup --framework lightning --threads 1

Per framework, four methods train copies of one random initialisation on fixed random batches:
SGD with momentum over every parameter and Multirate (k = 5, fast = the head, linear drift), each
in the framework (the plain ``Trainer`` / an automatic-optimisation ``LightningModule`` against
:class:`~multirate.integrations.huggingface.MultirateTrainer` /
:class:`~multirate.integrations.lightning.MultirateModule`) and in the project's own loop
(:class:`multirate.TrainStep`). Models: DistilBERT (default config, head ``pre_classifier`` +
``classifier``) for Hugging Face, torchvision's ResNet-18 (head ``fc``) for Lightning.

Each repeat runs every method in turn (round robin, so load from other processes hits all alike):
a fresh run of ``--warmup`` steps (at least one cycle: the first step of each kind runs unpruned)
and then ``--steps`` timed steps (a multiple of k: the same share of slow steps); a method's time
per step is the median over repeats. Gradient clipping is off (``max_grad_norm=0``) in the
``Trainer``, as in the TrainStep loop.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from experiments.core.files import write_json
from multirate import Multirate, TrainStep, partition

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
LR, MOMENTUM = 1e-3, 0.9  # speed does not depend on them; small enough that the loss stays finite
METHODS = ("framework_sgd", "framework_multirate", "trainstep_sgd", "trainstep_multirate")


def trainstep_timer(model, batch, loss_fn, head, k, multirate, clock):
    """A function (warmup, steps) -> seconds per step of a TrainStep loop on its own model copy."""
    def run(warmup, steps):
        m = copy.deepcopy(model)
        m.train()
        opt = (Multirate(partition.layerwise(m, head), lr=LR, k=k, momentum=MOMENTUM) if multirate
               else torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM))
        step = TrainStep(m, opt)
        for _ in range(warmup):
            step(lambda: loss_fn(m, batch))
        start = clock()
        for _ in range(steps):
            step(lambda: loss_fn(m, batch))
        return (clock() - start) / steps
    return run


# ---- Hugging Face ----------------------------------------------------------------------------

def huggingface_timers(s):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from multirate.integrations.huggingface import MultirateTrainer  # imports transformers

    torch.manual_seed(0)
    config = DistilBertConfig(num_labels=2)
    model = DistilBertForSequenceClassification(config)
    ids = torch.randint(0, config.vocab_size, (s.batch_size, s.seq_len))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 labels=torch.randint(0, 2, (s.batch_size,)))
    examples = [{key: value[i] for key, value in batch.items()} for i in range(s.batch_size)]
    clock = CLOCKS[s.clock]

    class Timer(TrainerCallback):
        def __init__(self, warmup, steps):
            self.warmup, self.steps, self.start, self.seconds = warmup, steps, None, None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.warmup:
                self.start = clock()
            elif state.global_step == self.warmup + self.steps:
                self.seconds = (clock() - self.start) / self.steps

    def trainer_timer(multirate):
        def run(warmup, steps):
            m = copy.deepcopy(model)
            args = TrainingArguments("/tmp/integration_speedup", per_device_train_batch_size=s.batch_size,
                                     max_steps=warmup + steps, learning_rate=LR, max_grad_norm=0.0,
                                     lr_scheduler_type="constant", save_strategy="no",
                                     logging_strategy="no", report_to="none", use_cpu=True,
                                     disable_tqdm=True, train_sampling_strategy="sequential")
            timer = Timer(warmup, steps)
            data = examples * (warmup + steps)  # every step sees the same batch
            if multirate:
                t = MultirateTrainer(m, args, train_dataset=data, k=s.k, base="sgd", momentum=MOMENTUM,
                                     callbacks=[timer])
            else:
                sgd = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
                t = Trainer(m, args, train_dataset=data, optimizers=(sgd, None), callbacks=[timer])
            t.train()
            return timer.seconds
        return run

    def loss_fn(m, b):
        return m(**b).loss

    head = ["pre_classifier", "classifier"]
    return {"framework_sgd": trainer_timer(False), "framework_multirate": trainer_timer(True),
            "trainstep_sgd": trainstep_timer(model, batch, loss_fn, head, s.k, False, clock),
            "trainstep_multirate": trainstep_timer(model, batch, loss_fn, head, s.k, True, clock)}


# ---- Lightning -------------------------------------------------------------------------------

def lightning_timers(s):
    import lightning as L
    import torchvision

    from multirate.integrations.lightning import MultirateModule  # imports lightning

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size)
    y = torch.randint(0, 10, (s.batch_size,))
    clock = CLOCKS[s.clock]

    class Plain(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    class WithMultirate(MultirateModule, Plain):
        def training_loss(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return Multirate(partition.layerwise(self.net, ["fc"]), lr=LR, k=s.k, momentum=MOMENTUM)

    class Timer(L.Callback):
        def __init__(self, warmup, steps):
            self.warmup, self.steps, self.start, self.seconds = warmup, steps, None, None

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.warmup:
                self.start = clock()
            elif trainer.global_step == self.warmup + self.steps:
                self.seconds = (clock() - self.start) / self.steps

    def lightning_timer(module_class):
        def run(warmup, steps):
            n = warmup + steps
            loader = DataLoader(TensorDataset(x.repeat(n, 1, 1, 1), y.repeat(n)), batch_size=s.batch_size)
            timer = Timer(warmup, steps)
            trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=n, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[timer])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(module_class(copy.deepcopy(model)), loader)
            return timer.seconds
        return run

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    return {"framework_sgd": lightning_timer(Plain), "framework_multirate": lightning_timer(WithMultirate),
            "trainstep_sgd": trainstep_timer(model, (x, y), loss_fn, ["fc"], s.k, False, clock),
            "trainstep_multirate": trainstep_timer(model, (x, y), loss_fn, ["fc"], s.k, True, clock)}


def benchmark(s) -> dict:
    if s.warmup < s.k or s.steps % s.k:
        raise ValueError(f"need --warmup >= k and --steps a multiple of k; got warmup={s.warmup}, "
                         f"steps={s.steps}, k={s.k}")
    if s.threads:
        torch.set_num_threads(s.threads)
    timers = huggingface_timers(s) if s.framework == "huggingface" else lightning_timers(s)
    times = {name: [] for name in METHODS}
    for _ in range(s.repeats):
        for name in METHODS:  # round robin
            times[name].append(timers[name](s.warmup, s.steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    return dict(vars(s), threads=torch.get_num_threads(), torch=torch.__version__,
                s_per_step=median, all=times,
                framework_speedup=median["framework_sgd"] / median["framework_multirate"],
                trainstep_speedup=median["trainstep_sgd"] / median["trainstep_multirate"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=("huggingface", "lightning"), required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64, help="DistilBERT tokens per example")
    p.add_argument("--image-size", type=int, default=32, help="ResNet-18 input size")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    p.add_argument("--json", default=None, help="write the results here")
    s = p.parse_args(argv)
    result = benchmark(s)
    for name in METHODS:
        print(f"{name:<20} {result['s_per_step'][name]:8.4f} s/step")
    print(f"speed-up in the framework {result['framework_speedup']:.2f}x, "
          f"in the TrainStep loop {result['trainstep_speedup']:.2f}x")
    if s.json:
        write_json(s.json, result)
    return result


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

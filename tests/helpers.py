"""Helpers that several test files share (so that no test file imports another).

- `Blobs` (with its `Net`), `make_cfg`, `MULTIRATE`: the runner's tiny real task, four Gaussian
  clusters in 8-D, trained in a second or so; `write_toml` writes its experiment TOML (methods
  train_all and multirate) for tests that run it through ``runner.main`` in a child process.
- `TRANSFER_TINY`: overrides that make the transfer experiment's quick profile a test-sized run.

Child processes import this module as ``helpers`` (they put ``tests/`` on ``sys.path``).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from experiments.config import RunConfig
from experiments.runner import Task


class Net(nn.Module):
    def __init__(self, dim=8, hidden=32, classes=4):
        super().__init__()
        # Dropout draws from the global torch RNG, so resume must restore it.
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.body(x))


class Blobs(Task):
    """Four Gaussian clusters in 8-D; 256 training points, 8 minibatches of 32 per epoch."""

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.loss_calls = 0

    def data(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        centres = 2.0 * torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        y = torch.arange(n) % 4
        return centres[y] + torch.randn(n, 8, generator=g), y

    def build_model(self):
        model = Net()
        self.initial = copy.deepcopy(model.state_dict())
        return model

    def train_tensors(self, device):
        return tuple(t.to(device) for t in self.data(256, seed=1))

    def batch(self, tensors, generator):
        x, y = tensors  # noise augmentation: exercises the augmentation generator
        return x + 0.1 * torch.randn(x.shape, generator=generator, device=x.device), y

    def loss(self, model, batch):
        self.loss_calls += 1
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, device):
        x, y = (t.to(device) for t in self.data(200, seed=2))
        logits = model(x)
        return {"accuracy": (logits.argmax(1) == y).float().mean().item(),
                "test_loss": F.cross_entropy(logits, y).item()}


def make_cfg(tmp_path, **kw):
    base = dict(experiment="blobs", results_dir=str(tmp_path), epochs=4, batch_size=32, lr=0.05,
                momentum=0.9, wandb="disabled", device="cpu")
    return RunConfig(**{**base, **kw})


MULTIRATE = dict(optimizer="multirate", k=3, fast=["fc"])


def write_toml(path):
    path.write_text('experiment = "blobs"\nbatch_size = 32\nlr = 0.05\nwandb = "disabled"\ndevice = "cpu"\n'
                    "[quick]\nepochs = 4\n[methods.train_all]\n"
                    '[methods.multirate]\noptimizer = "multirate"\nk = 3\n')
    return path


# A transfer network and data sets small enough for a test: a few hundred milliseconds per run.
TRANSFER_TINY = ["widths=4,8,8,8", "blocks=1,1,1,1", "target_train=64", "target_test=32", "source_train=64",
                 "source_test=32", "pretrain_epochs=1", "pretrain_batch_size=32", "batch_size=32", "epochs=1",
                 "eval_batch_size=16", "wandb=disabled", "device=cpu"]

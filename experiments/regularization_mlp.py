"""Regularisation by random subgroups (the paper's experiment 3, earlier version): a one-hidden-layer
perceptron on MNIST.

    python -m experiments.regularization_mlp [--profile quick|paper] [--method a,b] [--seeds 0,1,2] [k=v]

Methods (``[methods.*]`` in ``experiments/configs/regularization_mlp.toml``), as for the language
model: ``sgd``; ``dropout`` (the paper's "drop every step": dropout of rate ``cfg.dropout`` on the
hidden units); ``multirate`` with the random-subgroups partition (both weight matrices are random
groups, the biases fast).

Profiles:

- ``paper``: MNIST (``experiments.datasets.data.fetch_mnist``), 60,000 training and 10,000 test images, 200
  epochs.
- ``quick`` (offline, CPU, minutes): generated grey images (`generated_images`) of the same kind --
  ``classes`` classes, each a few random smooth prototypes, drawn with a random prototype, contrast
  and shift plus pixel noise -- with a small training set that the network can memorise.

Images are uint8 on the device and are scaled to [0, 1] and standardised per minibatch with the
mean and std of the training images (MNIST: the usual 0.1307 and 0.3081). Every epoch logs
``train_loss``, ``test_accuracy`` (in %) and ``test_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.core import errors, runner
from experiments.core.config import RunConfig, require
from experiments.datasets.data import fetch_mnist, holdout_split, load_mnist

TOML = Path(__file__).with_name("configs") / "regularization_mlp.toml"
DATASETS = ("generated", "mnist")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of MNIST's training images in [0, 1]


@dataclass
class MLPConfig(RunConfig):
    dataset: str = "generated"  # "generated" (quick profile) or "mnist"
    hidden: int = 1024  # width of the hidden layer
    dropout: float = 0.0  # on the hidden units
    eval_batch_size: int = 2000
    # --- quick profile: the generated images
    image_size: int = 28
    classes: int = 10
    prototypes: int = 4  # per class
    noise: float = 0.35  # pixel noise (std, in units of the prototypes' std)
    max_shift: int = 2  # pixels, in each direction
    n_train: int = 1000
    n_test: int = 5000
    data_seed: int = 0  # the prototypes and the images (the same for every run seed, as MNIST is)

    def validate(self) -> None:
        super().validate()
        checks = [
            ("dataset", self.dataset in DATASETS, f"one of {DATASETS}"),
            ("hidden", self.hidden >= 1, ">= 1"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("image_size", self.image_size >= 4, ">= 4"),
            ("classes", self.classes >= 2, ">= 2"),
            ("prototypes", self.prototypes >= 1, ">= 1"),
            ("noise", self.noise >= 0, ">= 0"),
            ("max_shift", 0 <= self.max_shift < self.image_size, "in [0, image_size)"),
            ("n_train", self.n_train >= 1, ">= 1"),
            ("n_test", self.n_test >= 1, ">= 1"),
        ]
        require(self, checks)


# ----------------------------------------------------------------------------- generated images

def prototypes(classes: int, per_class: int, size: int, seed: int) -> Tensor:
    """(classes, per_class, size, size) random smooth patterns: Gaussian noise on a quarter-size grid,
    upsampled bilinearly, scaled to zero mean and unit std each."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes * per_class, 1, max(size // 4, 2), max(size // 4, 2), generator=g)
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    fine = (fine - fine.mean((2, 3), keepdim=True)) / fine.std((2, 3), keepdim=True)
    return fine.view(classes, per_class, size, size)


def generated_images(n: int, protos: Tensor, noise: float, max_shift: int,
                     seed: int) -> tuple[Tensor, Tensor]:
    """n images (uint8 n x 1 x S x S) and labels (int64): a random prototype of a random class, times
    a contrast in [0.7, 1.3], shifted by up to ``max_shift`` pixels (cyclically), plus Gaussian noise
    of std ``noise``; mapped to bytes as 128 + 40 * value. Deterministic in its arguments."""
    g = torch.Generator().manual_seed(seed)
    classes, per_class, size, _ = protos.shape
    y = torch.randint(0, classes, (n,), generator=g)
    which = torch.randint(0, per_class, (n,), generator=g)
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, generator=g)
    x = protos[y, which] * contrast
    # A cyclic shift per image, as one gather: row r of image i is row (r - dy_i) mod S.
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (n, 1), generator=g) for _ in range(2))
    rows = (torch.arange(size) - dy) % size  # n x S
    cols = (torch.arange(size) - dx) % size
    x = x[torch.arange(n).view(n, 1, 1), rows.view(n, size, 1), cols.view(n, 1, size)]
    x = x + noise * torch.randn(n, size, size, generator=g)
    return (128 + 40 * x).clamp(0, 255).round().to(torch.uint8).unsqueeze(1), y


def generated_data(cfg: MLPConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test) of the quick profile: one set of prototypes, disjoint draws."""
    protos = prototypes(cfg.classes, cfg.prototypes, cfg.image_size, seed=cfg.data_seed)
    train = generated_images(cfg.n_train, protos, cfg.noise, cfg.max_shift, seed=3 * cfg.data_seed + 1)
    test = generated_images(cfg.n_test, protos, cfg.noise, cfg.max_shift, seed=3 * cfg.data_seed + 2)
    return *train, *test


# ----------------------------------------------------------------------------- model and task

class MLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Dropout -> Linear: (N, C, H, W) floats -> (N, classes) logits."""

    def __init__(self, inputs: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(F.relu(self.hidden(x.flatten(1)))))


def prepare(images: Tensor, mean: float, std: float) -> Tensor:
    """uint8 images -> float, scaled to [0, 1] and normalised: (x / 255 - mean) / std."""
    return (images.float() / 255 - mean) / std


class MLPTask(runner.Task):
    """The perceptron task: the images are read (or generated) once, in the constructor."""

    def __init__(self, cfg: MLPConfig):
        super().__init__(cfg)
        if cfg.dataset == "mnist":
            folder = fetch_mnist()
            self.x, self.y = load_mnist(folder, train=True)
            # A tuning run never reads the test set (its evaluation is the held-out part, below).
            self.x_test, self.y_test = (None, None) if cfg.holdout else load_mnist(folder, train=False)
            self.classes, self.mean, self.std = 10, MNIST_MEAN, MNIST_STD
        else:
            self.x, self.y, self.x_test, self.y_test = generated_data(cfg)
        if cfg.holdout:  # a tuning run: train on the kept part, evaluate on the held-out part
            kept, held = holdout_split(len(self.y), cfg.holdout)
            self.x, self.y, self.x_test, self.y_test = self.x[kept], self.y[kept], self.x[held], self.y[held]
        if cfg.dataset != "mnist":
            # Standardised as MNIST is: with the training images' own mean and std.
            pixels = self.x.float() / 255
            self.classes, self.mean, self.std = cfg.classes, pixels.mean().item(), pixels.std().item()

    def build_model(self) -> nn.Module:
        return MLP(self.x[0].numel(), self.cfg.hidden, self.classes, self.cfg.dropout)

    def train_tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        return self.x.to(device), self.y.to(device)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(prepare(x, self.mean, self.std)), y)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        correct, loss, size = 0, 0.0, self.cfg.eval_batch_size
        for i in range(0, len(self.x_test), size):
            x = self.x_test[i:i + size].to(device)
            y = self.y_test[i:i + size].to(device)
            logits = model(prepare(x, self.mean, self.std))
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        n = len(self.x_test)
        return {"test_accuracy": 100 * correct / n, "test_loss": loss / n}


def main(argv=None):
    return runner.main(argv, MLPConfig, TOML, MLPTask)


if __name__ == "__main__":
    errors.cli(main)

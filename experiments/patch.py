"""Latent time scales (the paper's experiment 1): a WideResNet-16 on patch-augmented images.

    python -m experiments.patch [--profile quick|paper] [--method a,b] [--seeds 0,1,2] [key=value ...]

The data set of Li, Wei & Ma (2019): a 7x7 patch at the image centre carries the label through a
faint class pattern whose sign is redrawn on every access, so it is easy to generalise but hard to
fit; the image itself is easy to fit but hard to generalise. A small step size memorises the patch
and generalises worse on clean images; a large one generalises better but misses the patch; the
paper's claim is that multirate (fast part with h/k = 0.004, slow part with h = 0.1, k = 25) gets
both. Methods (``[methods.*]`` in ``experiments/configs/patch.toml``): ``small_lr`` (h = 0.004),
``large_lr`` (h = 0.1), ``multirate`` and variants with other fast parts.

The patch construction (`make_patches`, `assign_patched`, `apply_patches`), as Li, Wei & Ma's code
builds it (cwein3/large-lr-code, ``data_util.py``: ``FixedAugmentDataset``, ``PatchAugmentFixed``,
``TransformOnlyDataset``; ``train_patches.py``):

- whether a training image carries a patch is fixed once per image, with probability
  ``patch_prob`` = 0.8 (``FixedAugmentDataset.should_transform``); everything else is drawn again on
  every access (``PatchAugmentFixed.__call__``): with probability ``patch_only_prob`` = 0.2 a patched
  image is patch-only this time, so per access 20 % of the images are clean, 64 % image + patch and
  16 % patch-only, and no image loses its content for good;
- a ``patch_size`` x ``patch_size`` x 3 patch at the centre (rows and columns 12-18 of 32), written
  after normalisation; z = ``z_scale`` * N(0, 1) (3 x 7 x 7) shared by all classes, and one pattern
  zeta_c ~ U[-``zeta_range``, ``zeta_range``] (3 x 7 x 7) per class;
- image + patch: patch = z + s * zeta_y, with a random sign s;
- patch-only: the whole (normalised) image is 0 and patch = z + s * ``patch_only_scale`` * u * zeta_y,
  with a scalar u ~ U(0, 1);
- no crop or flip. Evaluation, as Li et al. evaluate: the clean test set; the test set "with patch",
  which goes through the training set's construction (a fixed 80 % of the images patched, and of
  those 20 % patch-only: the 20/64/16 mixture); and ``patch_only_test`` = 1,000 zero images with
  random labels through the same patch draw (80 % z + s zeta_y, 20 % z + s 1.75 u zeta_y; the
  ``sample_patch = False`` that ``train_patches.py`` sets is read nowhere). Each evaluation set is
  drawn once, so every epoch and every run sees the same images.
- SGD with Nesterov momentum 0.9 for every method (``train_util.py``: ``nesterov=True``).

Where this still differs from Li et al.: the quick and cpu profiles use generated 16 x 16 images and
a narrow WRN-16 instead of CIFAR-10 and WRN-16-10 (no data set can be downloaded offline, and the
paper's network does not fit a CPU budget); Li et al. redraw the evaluation sets' signs on every
pass, we draw them once (the same distribution, reproducible); the constant step sizes are the
multirate paper's (Li et al. decay the large one early).

The patches, which images get them and the evaluation draws depend only on ``patch_seed``: like the
data set itself they are the same for every run seed and method. Training draws the signs from the
runner's augmentation generator, so a run is reproducible and resumes to the same bits.

Profiles: ``paper`` uses CIFAR-10 and WRN-16-10; ``quick`` (offline, CPU) uses a generated
10-class data set of shapes on cluttered backgrounds (`generated_images`, the renderer of the
transfer experiment) with the same patch construction on top, and a narrow WRN-16.

Every epoch logs ``train_loss`` and ``clean_accuracy``, ``patched_accuracy``,
``patch_only_accuracy`` (in %).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.core import errors, runner
from experiments.core.config import RunConfig, require
from experiments.datasets.data import fetch_cifar, load_cifar, normalize
from experiments.datasets.synthetic_images import N_COLOURS, N_SHAPES, N_TEXTURES, render

TOML = Path(__file__).with_name("configs") / "patch.toml"
DATASETS = ("generated", "cifar10")
# CIFAR-10's channel statistics, as Li et al. normalise; the generated images use round numbers
# near their own (measured mean 0.35-0.38, std 0.20-0.22), so the patch has the same scale
# relative to the image in both profiles.
CIFAR_MEAN, CIFAR_STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
GENERATED_MEAN, GENERATED_STD = (0.37, 0.37, 0.37), (0.21, 0.21, 0.21)


@dataclass
class PatchConfig(RunConfig):
    dataset: str = "generated"  # "generated" (quick profile) or "cifar10"
    widen_factor: int = 10  # WRN-16-<widen_factor>
    eval_batch_size: int = 1000
    # --- the patch construction (Li, Wei & Ma 2019)
    patch_size: int = 7
    patch_prob: float = 0.8  # a training image gets a patch
    patch_only_prob: float = 0.2  # a patched training image is patch-only
    z_scale: float = 1.25
    zeta_range: float = 0.1
    patch_only_scale: float = 1.75
    patch_only_test: int = 1000
    patch_seed: int = 0  # patterns, patched images and evaluation draws: part of the data set, not the run
    # Which construction made the run: part of its identity (hashed into its name), so that runs of the
    # earlier construction (patch-only fixed per image, an all-patched "with patch" set) never pass
    # for runs of this one. Only "li2019" (the module docstring) is built.
    construction: str = "li2019"
    # --- the generated base data set (quick profile)
    gen_size: int = 16
    gen_train: int = 5000
    gen_test: int = 2000
    gen_seed: int = 1

    def validate(self) -> None:
        super().validate()
        size = self.gen_size if self.dataset == "generated" else 32
        checks = [
            ("dataset", self.dataset in DATASETS, f"one of {DATASETS}"),
            ("construction", self.construction == "li2019", '"li2019" (the only construction built)'),
            ("widen_factor", self.widen_factor >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("patch_size", 1 <= self.patch_size <= size, f"in [1, {size}] (the image side)"),
            ("patch_prob", 0 <= self.patch_prob <= 1, "in [0, 1]"),
            ("patch_only_prob", 0 <= self.patch_only_prob <= 1, "in [0, 1]"),
            ("z_scale", self.z_scale >= 0, ">= 0"),
            ("zeta_range", self.zeta_range >= 0, ">= 0"),
            ("patch_only_scale", self.patch_only_scale >= 0, ">= 0"),
            ("patch_only_test", self.patch_only_test >= 1, ">= 1"),
            ("gen_size", self.gen_size >= 8, ">= 8"),
            ("gen_train", self.gen_train >= 1, ">= 1"),
            ("gen_test", self.gen_test >= 1, ">= 1"),
        ]
        require(self, checks)


# ----------------------------------------------------------------------------- the patches

@dataclass
class Patches:
    """The shared pattern ``z`` (3 x P x P), one pattern per class ``zeta`` (C x 3 x P x P), and the
    row (= column) ``top`` where the patch starts."""

    z: Tensor
    zeta: Tensor
    top: int

    @property
    def size(self) -> int:
        return self.z.shape[-1]

    def to(self, device) -> Patches:
        return Patches(self.z.to(device), self.zeta.to(device), self.top)


def make_patches(num_classes: int, image_size: int, patch_size: int, z_scale: float, zeta_range: float,
                 generator: torch.Generator) -> Patches:
    """z = z_scale N(0, 1) and zeta_c ~ U[-zeta_range, zeta_range], placed at the centre
    (top = (image_size - patch_size) // 2: rows and columns 12-18 for 7 of 32)."""
    shape = (3, patch_size, patch_size)
    z = z_scale * torch.randn(shape, generator=generator)
    zeta = zeta_range * (2 * torch.rand((num_classes, *shape), generator=generator) - 1)
    return Patches(z, zeta, (image_size - patch_size) // 2)


def assign_patched(n: int, patch_prob: float, generator: torch.Generator) -> Tensor:
    """Which of n images carry a patch (bool), drawn once: Li et al.'s fixed ``should_transform``."""
    return torch.rand(n, generator=generator) < patch_prob


def apply_patches(images: Tensor, labels: Tensor, patched: Tensor, patches: Patches, patch_only_prob: float,
                  patch_only_scale: float, generator: torch.Generator) -> Tensor:
    """Normalised images (N x 3 x H x W) with their patches, one access of Li et al.'s
    ``PatchAugmentFixed``: for every image a fresh sign s, patch-only coin and scale u from
    `generator` (on the images' device). Returns a new tensor.

    A patched image is patch-only with probability patch_only_prob (image = 0, patch = z + s
    patch_only_scale u zeta_y), else image + patch (patch = z + s zeta_y); an image with
    ``patched`` False is unchanged. Every image consumes the same draws whatever it gets, so the
    stream of random numbers does not depend on which images are patched.
    """
    n, device = len(images), images.device
    sign = 2 * torch.randint(0, 2, (n,), generator=generator, device=device) - 1
    only = patched & (torch.rand(n, generator=generator, device=device) < patch_only_prob)
    u = torch.rand(n, generator=generator, device=device)
    scale = sign * torch.where(only, patch_only_scale * u, 1.0)
    patch = patches.z + scale.view(n, 1, 1, 1).to(images.dtype) * patches.zeta[labels]
    out = torch.where(only.view(n, 1, 1, 1), 0.0, images)
    top, size = patches.top, patches.size
    region = out[:, :, top:top + size, top:top + size]
    out[:, :, top:top + size, top:top + size] = torch.where(patched.view(n, 1, 1, 1), patch, region)
    return out


# ----------------------------------------------------------------------------- generated base data

GENERATED_CLASSES = 10
# A class is one of 10 (shape, texture) pairs; colour, position, scale and clutter are nuisances.
# Shape and texture have to be read together, so the images take some fitting to generalise from.
GENERATED_PAIRS = tuple((i % N_SHAPES, (3 * i) % N_TEXTURES) for i in range(GENERATED_CLASSES))


def generated_images(n: int, seed: int, size: int) -> tuple[Tensor, Tensor]:
    """n uint8 images (N x 3 x size x size) and labels of the quick profile's 10-class task."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, GENERATED_CLASSES, (n,), generator=g)
    pairs = torch.tensor(GENERATED_PAIRS)[y]
    colours = torch.randint(0, N_COLOURS, (n,), generator=g)
    return render(pairs[:, 0], pairs[:, 1], colours, size, g, world_seed=0), y


# ----------------------------------------------------------------------------- WideResNet-16

class WideBasic(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1
    convolution on the shortcut where the shape changes."""

    def __init__(self, planes_in: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(planes_in)
        self.conv1 = nn.Conv2d(planes_in, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or planes_in != planes:
            self.shortcut = nn.Conv2d(planes_in, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen: ``conv1``, stages ``block1..3`` of (depth - 4) / 6 blocks with 16w, 32w, 64w
    channels (strides 1, 2, 2), ``bn``, average pooling, ``fc``."""

    def __init__(self, num_classes: int, depth: int = 16, widen_factor: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, not {depth}")
        blocks, widths = (depth - 4) // 6, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        planes = 16
        for i, width in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(WideBasic(planes, width, (1 if i == 0 else 2) if j == 0 else 1))
                planes = width
            setattr(self, f"block{i + 1}", nn.Sequential(*stage))
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------------------- the task

class PatchTask(runner.Task):
    """A WideResNet-16 on patch-augmented images; see the module docstring."""

    cfg: PatchConfig

    def __init__(self, cfg: PatchConfig | None = None):
        super().__init__(cfg)
        self._data: dict | None = None
        self._eval_sets: dict | None = None

    @property
    def num_classes(self) -> int:
        return GENERATED_CLASSES if self.cfg.dataset == "generated" else 10

    def _stats(self):
        return (GENERATED_MEAN, GENERATED_STD) if self.cfg.dataset == "generated" else (CIFAR_MEAN, CIFAR_STD)

    def data(self) -> dict:
        """Train/test images (uint8) and labels, the patches, which training images are patched and the three
        evaluation sets (normalised, patched once), all on the CPU; built once per task."""
        if self._data is not None:
            return self._data
        cfg = self.cfg
        if cfg.dataset == "generated":
            x, y = generated_images(cfg.gen_train, 2 * cfg.gen_seed, cfg.gen_size)
            x_test, y_test = generated_images(cfg.gen_test, 2 * cfg.gen_seed + 1, cfg.gen_size)
        else:
            root = fetch_cifar(name="cifar10")
            (x, y), (x_test, y_test) = load_cifar(root, "cifar10", True), load_cifar(root, "cifar10", False)
        g = torch.Generator().manual_seed(cfg.patch_seed)
        patches = make_patches(self.num_classes, x.shape[-1], cfg.patch_size, cfg.z_scale, cfg.zeta_range, g)
        patched = assign_patched(len(x), cfg.patch_prob, g)
        clean = normalize(x_test, *self._stats())
        with_patch = apply_patches(clean, y_test, assign_patched(len(x_test), cfg.patch_prob, g), patches,
                                   cfg.patch_only_prob, cfg.patch_only_scale, g)
        y_only = torch.randint(0, self.num_classes, (cfg.patch_only_test,), generator=g)
        only = apply_patches(torch.zeros(cfg.patch_only_test, *clean.shape[1:]), y_only,
                             torch.ones_like(y_only, dtype=torch.bool), patches, cfg.patch_only_prob,
                             cfg.patch_only_scale, g)
        self._data = dict(x=x, y=y, patched=patched, patches=patches, eval={
            "clean": (clean, y_test), "patched": (with_patch, y_test), "patch_only": (only, y_only)})
        return self._data

    def build_model(self) -> nn.Module:
        return WideResNet(self.num_classes, 16, self.cfg.widen_factor)

    def train_tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        d = self.data()
        self._patches = d["patches"].to(device)
        return d["x"].to(device), d["y"].to(device), d["patched"].to(device)

    def batch(self, tensors: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        x, y, patched = tensors
        images = apply_patches(normalize(x, *self._stats()), y, patched, self._patches,
                               self.cfg.patch_only_prob, self.cfg.patch_only_scale, generator)
        return images, y

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        images, y = batch
        return F.cross_entropy(model(images), y)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        cfg = self.cfg
        if self._eval_sets is None:  # moved to the device once, like the training set
            self._eval_sets = {name: (x.to(device), y.to(device))
                               for name, (x, y) in self.data()["eval"].items()}
        metrics = {}
        for name, (images, labels) in self._eval_sets.items():
            correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in
                          zip(images.split(cfg.eval_batch_size), labels.split(cfg.eval_batch_size)))
            metrics[f"{name}_accuracy"] = 100.0 * correct.item() / len(images)
        return metrics


def main(argv: list[str] | None = None) -> list[dict]:
    return runner.main(argv, PatchConfig, TOML, PatchTask)


if __name__ == "__main__":
    errors.cli(main)

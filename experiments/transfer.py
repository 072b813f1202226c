"""Transfer learning (the paper's experiment 2): fine-tune a pretrained ResNet, fast part = the head.

    python -m experiments.transfer [--profile quick|paper] [--method a,b] [--seeds 0,1,2] [key=value ...]
    python -m experiments.transfer --profile paper model=resnet34      # ResNet-34 on CIFAR-10

Methods (``[methods.*]`` in ``experiments/configs/transfer_resnet.toml``), all with the same h,
momentum, weight decay, batch size and schedule:

- ``train_all``: SGD over every parameter;
- ``multirate``: Multirate with linear drift, fast = ``fc``, k = 5 (on fast steps only the head's
  backward runs and the backbone records no graph: see :class:`multirate.TrainStep`);
- ``layer2+3+4+fc``, ``layer3+4+fc``, ``layer4+fc``, ``fc``: SGD over those stages only, the rest
  frozen (``cfg.train``).

Batch norm: the BN layers of a frozen part run in eval mode (their running statistics stay those
of pretraining); every trained part, fast or slow, keeps its BN in train mode. So "frozen" means a
fixed function, head-only training is a linear probe of fixed features, and the frozen features
are the same in training and in evaluation. The rule is the same for every method (train_all and
multirate freeze nothing).

Profiles:

- ``paper``: torchvision's ResNet-50 (``IMAGENET1K_V2`` weights) on CIFAR-100, or ResNet-34
  (``IMAGENET1K_V1``) on CIFAR-10 with ``model=resnet34``. The 32x32 images live on the device as
  uint8; each minibatch is cropped and flipped there (random crop with 4 pixels of zero padding,
  horizontal flip, drawn from the runner's augmentation generator), normalised with the ImageNet
  statistics and resized to 224x224 with ``F.interpolate`` (bilinear), as the pretrained model
  expects. Test images get the same normalisation and resize.
- ``quick`` (the default; offline, CPU, minutes): no pretrained weights can be downloaded, so a
  narrow ResNet of the same family (torchvision's ``BasicBlock``, stages ``layer1..4``, head
  ``fc``) is first pretrained on a generated SOURCE task and cached under
  ``results/quick/transfer/pretrained/<hash>.pt`` (keyed by everything that determines the
  weights), then fine-tuned on a different generated TARGET task. Both tasks draw 16x16 images
  from the same primitives -- 8 shapes, 6 oriented gratings (textures) and 6 hues, one object on a
  cluttered, noisy background -- but label them by different combinations: a source class (96) is
  (shape, texture, warm or cool hue), a target class (12) is (shape, one of two neighbouring hues)
  with the texture a nuisance. The pretrained shape features carry over; the fine hue distinction
  the target needs is only partly in the pretrained features, so the backbone has to adapt and
  head-only training falls short. ``pretrained=false``
  trains the same network from scratch on the target, to check that the transfer is real.

Every epoch logs ``train_loss``, ``test_accuracy`` (in %) and ``test_loss``. The CSV columns are
fixed; ``model`` and ``dataset`` are config fields, so they are in each run's JSON beside its CSV.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

from experiments.core import errors, runner
from experiments.core.config import RunConfig, require
from experiments.core.determinism import code_key
from experiments.datasets import pretraining
from experiments.datasets.data import DownloadError, fetch_cifar, holdout_split, load_cifar, normalize
from experiments.datasets.pretrained_cache import check_hub_weights
from experiments.datasets.synthetic_images import (
    GENERATOR_VERSION,
    SOURCE_CLASSES,
    TARGET_CLASSES,
    TARGET_PAIRS,
    source_task,
    target_task,
)

TOML = Path(__file__).with_name("configs") / "transfer_resnet.toml"

# model -> (torchvision weights enum name, dataset it is fine-tuned on by default)
TORCHVISION = {"resnet50": ("ResNet50_Weights.IMAGENET1K_V2", "cifar100"),
               "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", "cifar10")}
MODELS = ("small_resnet", *TORCHVISION)
DATASETS = {"generated": "small_resnet", "cifar10": None, "cifar100": None}
CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Round numbers near the generated images' channel statistics (measured: mean 0.35-0.38, std
# 0.20-0.22); pretraining and fine-tuning normalise with the same constants, as ImageNet's
# statistics are used for CIFAR.
GENERATED_MEAN, GENERATED_STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)


@dataclass
class TransferConfig(RunConfig):
    model: str = "small_resnet"  # "small_resnet" (quick profile), "resnet50", "resnet34"
    dataset: str = ""  # "" = the model's default: generated / cifar100 / cifar10
    pretrained: bool = True  # false: the same network from a random initialisation
    image_size: int = 0  # side the network sees; images are resized to it on the device (0: as stored)
    crop_padding: int = 4  # random crop of the stored size after zero padding; 0: no crop
    flip: bool = True  # random horizontal flip
    eval_batch_size: int = 1000
    # Images per forward pass within an evaluation batch (0: the whole batch at once). The loss is
    # still summed per evaluation batch, and a convolution computes each image alone, so the same
    # bits (tests/test_transfer.py); on a CPU, chunks that fit its caches evaluate faster.
    eval_chunk: int = 0
    # --- quick profile: the narrow ResNet, the generated tasks and the pretraining
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # channels of layer1..4
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # BasicBlocks per stage
    gen_size: int = 16  # side of the generated images
    target_train: int = 3000  # generated target task: training and test images
    target_test: int = 3000
    target_seed: int = 1  # the target data set (the same for every run seed, as CIFAR is)
    source_train: int = 20000  # generated source task (the "ImageNet" of the quick profile)
    source_test: int = 2000
    pretrain_seed: int = 0  # the source data set, the primitives and the pretraining run
    pretrain_epochs: int = 8
    pretrain_lr: float = 0.1
    pretrain_batch_size: int = 128
    # The generator's version, so that runs on another version of the generated tasks get
    # another run name (it is part of the hash) and are not taken for these.
    generator_version: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if not self.dataset:
            self.dataset = "generated" if self.model == "small_resnet" else TORCHVISION.get(
                self.model, (None, ""))[1]
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        checks = [
            ("model", self.model in MODELS, f"one of {MODELS}"),
            ("dataset", self.dataset in DATASETS, f"one of {tuple(DATASETS)}"),
            ("dataset", (self.dataset == "generated") == (self.model == "small_resnet"),
             "'generated' exactly when model='small_resnet' (the torchvision models fine-tune on CIFAR)"),
            ("image_size", self.image_size >= 0, ">= 0"),
            ("crop_padding", self.crop_padding >= 0, ">= 0"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("eval_chunk", self.eval_chunk >= 0, ">= 0 (0: the whole evaluation batch)"),
            ("widths", len(self.widths) == 4 and min(self.widths) >= 1, "4 positive channel counts"),
            ("blocks", len(self.blocks) == 4 and min(self.blocks) >= 1, "4 positive block counts"),
            ("gen_size", self.gen_size >= 8, ">= 8"),
            ("target_train", self.target_train >= 1, ">= 1"),
            ("target_test", self.target_test >= 1, ">= 1"),
            ("source_train", self.source_train >= self.pretrain_batch_size, ">= pretrain_batch_size"),
            ("source_test", self.source_test >= 1, ">= 1"),
            ("pretrain_epochs", self.pretrain_epochs >= 1, ">= 1"),
            ("pretrain_lr", self.pretrain_lr > 0, "> 0"),
            ("pretrain_batch_size", self.pretrain_batch_size >= 1, ">= 1"),
            ("generator_version", self.generator_version == GENERATOR_VERSION,
             f"{GENERATOR_VERSION}, this code's version (older generated tasks cannot be rebuilt)"),
        ]
        require(self, checks)


# ----------------------------------------------------------------------------- models

class SmallResNet(nn.Module):
    """A narrow torchvision-style ResNet for small images: the module names of torchvision's ResNet.

    Stem: 3x3 convolution, stride 1, no max-pool (``maxpool`` is an identity), then ``layer1..4``
    of torchvision's ``BasicBlock`` with the given widths (strides 1, 2, 2, 2), average pooling and
    ``fc``. Initialised as torchvision initialises its ResNets.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128),
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        planes = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(count):
                down = None
                if j == 0 and (stride != 1 or planes != width):
                    down = nn.Sequential(conv1x1(planes, width, stride), nn.BatchNorm2d(width))
                layers.append(BasicBlock(planes, width, stride if j == 0 else 1, down))
                planes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return x

    def stages(self) -> list[tuple[tuple[str, ...], Callable[[Tensor], Tensor]]]:
        """`forward` as a sequence of stages, each with the names of the modules it runs."""
        layers = [((f"layer{i}",), getattr(self, f"layer{i}")) for i in range(1, 5)]
        return [(("conv1", "bn1"), self._stem), *layers, (("fc",), self._head)]

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def frozen_stages(self) -> int:
        """How many leading stages cannot change in training: no trained parameter, and every batch
        norm on its pretraining statistics (`freeze_bn_statistics`)."""
        count = 0
        for names, _ in self.stages():
            modules = [getattr(self, name) for name in names]
            if any(p.requires_grad for m in modules for p in m.parameters()) or any(
                    isinstance(n, nn.BatchNorm2d) and type(n) is not FrozenStatsBatchNorm2d
                    for m in modules for n in m.modules()):
                break
            count += 1
        return count


class WeightsUnavailable(errors.UserError, RuntimeError):
    """torchvision's pretrained weights could not be downloaded."""


def imagenet_resnet(name: str) -> nn.Module:
    """torchvision's ResNet ``name`` with its ImageNet weights (downloaded once; torch.hub checks the
    SHA-256 prefix in the file's name when it downloads it, `check_hub_weights` before every load). A
    network failure raises `WeightsUnavailable` with a one-line message."""
    import torchvision

    enum_name, member = TORCHVISION[name][0].split(".")
    weights = getattr(getattr(torchvision.models, enum_name), member)
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    check_hub_weights(target)  # torch.hub loads a file already in its cache unchecked
    try:
        return getattr(torchvision.models, name)(weights=weights)
    except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, refused connections
        reason = getattr(err, "reason", err) if isinstance(err, urllib.error.URLError) else err
        raise WeightsUnavailable(
            f"could not download the ImageNet weights {TORCHVISION[name][0]} for {name} from "
            f"{weights.url}: {reason}. If this machine has no internet, download the file elsewhere "
            f"and place it at {target}") from None


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode (running statistics used, never updated)."""

    def train(self, mode: bool = True):
        return super().train(False)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_bn_statistics(model: nn.Module, trained: Sequence[str]) -> list[str]:
    """Put every BatchNorm2d outside the trained modules into permanent eval mode; return their names.

    ``trained`` is ``cfg.train`` (module-name prefixes, or ``["all"]``: nothing is frozen).
    """
    if "all" in trained:
        return []
    frozen = []
    for name, module in model.named_modules():
        if type(module) is nn.BatchNorm2d and not _under(name, trained):
            module.__class__ = FrozenStatsBatchNorm2d
            module.eval()
            frozen.append(name)
    return frozen


# ----------------------------------------------------------------------------- pretraining cache

def pretrain_spec(cfg: TransferConfig) -> dict:
    """Everything that determines the pretrained weights of the quick profile."""
    return dict(generator_version=GENERATOR_VERSION, model=cfg.model, widths=list(cfg.widths),
                blocks=list(cfg.blocks), gen_size=cfg.gen_size, source_train=cfg.source_train,
                source_test=cfg.source_test, seed=cfg.pretrain_seed, epochs=cfg.pretrain_epochs,
                lr=cfg.pretrain_lr, batch_size=cfg.pretrain_batch_size, momentum=0.9,
                weight_decay=5e-4, schedule="cosine", crop_padding=cfg.crop_padding, flip=cfg.flip,
                # The code that produces the weights: changed code never reuses an old cache.
                code=code_key(pretrain_spec, source_task, normalize, pretraining))


def pretrained_path(cfg: TransferConfig) -> Path:
    """``<results>/<profile>/<experiment>/pretrained/<hash of pretrain_spec>.pt``"""
    return pretraining.cache_path(cfg.run_dir, pretrain_spec(cfg))


def pretrained_state(cfg: TransferConfig, device: torch.device) -> dict[str, Tensor]:
    """The pretrained small ResNet's state dict: from the cache, else pretrained now and cached.

    Pretraining draws from its own seeded RNG, so the caller's RNG state is the same either way.
    """
    path = pretrained_path(cfg)

    def pretrain() -> dict:
        spec = pretrain_spec(cfg)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            state, accuracy, seconds = _pretrain(spec, device)
        print(f"pretrained small_resnet on the generated source task: {accuracy:.1f}% source test "
              f"accuracy after {seconds:.0f} s; cached at {path}", file=sys.stderr, flush=True)
        return dict(spec=spec, state_dict=state, source_test_accuracy=accuracy)

    return pretraining.cached(path, pretrain)["state_dict"]


def _pretrain(spec: dict, device: torch.device) -> tuple[dict[str, Tensor], float, float]:
    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    x, y = (t.to(device) for t in source_task(spec["source_train"], 2 * spec["seed"], spec["gen_size"],
                                              world_seed=spec["seed"]))
    x_test, y_test = (t.to(device) for t in source_task(spec["source_test"], 2 * spec["seed"] + 1,
                                                        spec["gen_size"], world_seed=spec["seed"]))
    model = SmallResNet(SOURCE_CLASSES, spec["widths"], spec["blocks"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec["epochs"])
    order_gen = torch.Generator().manual_seed(spec["seed"])
    aug_gen = torch.Generator(device=device).manual_seed(spec["seed"] + 1)
    bs = spec["batch_size"]

    def epochs():  # each epoch a fresh order, its full minibatches of indices
        for _ in range(spec["epochs"]):
            perm = torch.randperm(len(x), generator=order_gen).to(device)
            yield perm.split(bs)[: len(x) // bs]

    def loss(model: nn.Module, idx: Tensor) -> dict[str, Tensor]:
        xb = augment(x[idx], aug_gen, spec["crop_padding"], spec["flip"])
        return {"loss": F.cross_entropy(model(normalize(xb, GENERATED_MEAN, GENERATED_STD)), y[idx])}

    steps_per_epoch = len(x) // bs

    def progress(step: int, losses: dict[str, Tensor]) -> None:  # a line per epoch, for Slurm logs
        if step % steps_per_epoch == 0:
            print(f"pretraining small_resnet: epoch {step // steps_per_epoch}/{spec['epochs']}, loss "
                  f"{losses['loss'].item():.3f}, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)

    pretraining.fit(model, opt, epochs(), loss, schedule=sched, schedule_every="epoch", on_step=progress)
    with torch.no_grad():
        correct = sum(int((model(normalize(xb, GENERATED_MEAN, GENERATED_STD)).argmax(1) == yb).sum())
                      for xb, yb in zip(x_test.split(1000), y_test.split(1000)))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, 100.0 * correct / len(x_test), time.perf_counter() - start


# ----------------------------------------------------------------------------- the task

def augment(x: Tensor, generator: torch.Generator, padding: int, flip: bool) -> Tensor:
    """Random crop (after zero padding by ``padding``) and horizontal flip of a batch of images,
    each image its own draw, all from ``generator`` (on the images' device)."""
    n, c, h, w = x.shape
    device = x.device
    if padding:
        padded = F.pad(x, (padding,) * 4)
        oy, ox = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=device)
        rows = (oy + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (ox + torch.arange(w, device=device)).view(n, 1, 1, w)
        x = padded[torch.arange(n, device=device).view(n, 1, 1, 1),
                   torch.arange(c, device=device).view(1, c, 1, 1), rows, cols]
    if flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
        x = torch.where(flipped.view(n, 1, 1, 1), x.flip(3), x)
    return x


class TransferTask(runner.Task):
    """Fine-tuning a pretrained ResNet; see the module docstring for the two profiles."""

    cfg: TransferConfig

    def __init__(self, cfg: TransferConfig | None = None):
        super().__init__(cfg)
        self._test: tuple[Tensor, Tensor] | None = None
        # (stages, batches): the evaluation batches through the frozen leading stages (`_eval_batches`),
        # so a frozen backbone is not evaluated again every epoch
        self._frozen_features: tuple[int, list[list[Tensor]]] | None = None

    # -- data
    def _load(self, cfg: TransferConfig, train: bool) -> tuple[Tensor, Tensor]:
        if cfg.dataset == "generated":
            n, offset = (cfg.target_train, 0) if train else (cfg.target_test, 1)
            return target_task(n, 2 * cfg.target_seed + offset, cfg.gen_size, world_seed=cfg.pretrain_seed)
        return load_cifar(fetch_cifar(name=cfg.dataset), cfg.dataset, train=train)

    @property
    def num_classes(self) -> int:
        return TARGET_CLASSES if self.cfg.dataset == "generated" else CLASSES[self.cfg.dataset]

    def train_tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        images, labels = self._load(self.cfg, train=True)
        if self.cfg.holdout:  # a tuning run: evaluate on the held-out part, never on the test set
            kept, held = holdout_split(len(labels), self.cfg.holdout)
            self._test = images[held].to(device), labels[held].to(device)
            images, labels = images[kept], labels[kept]
        return images.to(device), labels.to(device)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images -> normalised float input at the network's size."""
        cfg = self.cfg
        mean, std = ((GENERATED_MEAN, GENERATED_STD) if cfg.dataset == "generated"
                     else (IMAGENET_MEAN, IMAGENET_STD))
        x = normalize(images, mean, std)
        if cfg.image_size and cfg.image_size != x.shape[-1]:
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                              align_corners=False)
        return x

    def batch(self, tensors: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        images, labels = tensors
        images = augment(images, generator, self.cfg.crop_padding, self.cfg.flip)
        return self.prepare(images), labels

    # -- model
    def build_model(self) -> nn.Module:
        cfg = self.cfg
        device = runner.resolve_device(cfg.device)
        if cfg.model == "small_resnet":
            model = SmallResNet(self.num_classes, cfg.widths, cfg.blocks)
            if cfg.pretrained:
                state = pretrained_state(cfg, device)
                head = {k for k in state if _under(k, ["fc"])}
                missing, unexpected = model.load_state_dict(
                    {k: v for k, v in state.items() if k not in head}, strict=False)
                if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
                    raise RuntimeError(f"{pretrained_path(cfg)} does not fit the model: missing "
                                       f"{missing}, unexpected {unexpected}")
        else:
            if cfg.pretrained:
                model = imagenet_resnet(cfg.model)
            else:
                import torchvision

                model = getattr(torchvision.models, cfg.model)(weights=None)
            model.fc = nn.Linear(model.fc.in_features, self.num_classes)  # a new head, seeded by the run
        freeze_bn_statistics(model, cfg.train)
        return model

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        cfg = self.cfg
        if self._test is None:
            self._test = tuple(t.to(device) for t in self._load(cfg, train=False))
        images, labels = self._test
        correct, loss_sum = 0, 0.0
        start, batches = self._eval_batches(model, images)
        for chunks, yb in zip(batches, labels.split(cfg.eval_batch_size)):
            logits = self._forward_chunks(model, start, chunks)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        return {"test_accuracy": 100.0 * correct / len(labels), "test_loss": loss_sum / len(labels)}

    def _eval_batches(self, model: nn.Module, images: Tensor) -> tuple[int, list[list[Tensor]]]:
        """(start, batches): each evaluation batch as its chunks (`eval_chunk`), after the model's
        first `start` stages, those that cannot change in training; computed once a run, then
        reused. The same operations on the same images as the whole forward, so the same bits."""
        cfg = self.cfg
        # Chunks of equal size (at most eval_chunk): a chunk of one or two images can take another
        # convolution kernel, with other bits, so no short remainder.
        batches = [xb.tensor_split(-(-len(xb) // (cfg.eval_chunk or len(xb))))
                   for xb in images.split(cfg.eval_batch_size)]
        # The head is never precomputed: it runs on the whole batch (_forward_chunks).
        start = min(model.frozen_stages(), len(model.stages()) - 1) if isinstance(model, SmallResNet) else 0
        if not start:
            return 0, [[self.prepare(x) for x in chunks] for chunks in batches]
        if self._frozen_features is None or self._frozen_features[0] != start:
            features = []
            for chunks in batches:
                features.append([])
                for x in chunks:
                    x = self.prepare(x)
                    for _, stage in model.stages()[:start]:
                        x = stage(x)
                    features[-1].append(x)
            self._frozen_features = (start, features)
        return self._frozen_features

    @staticmethod
    def _forward_chunks(model: nn.Module, start: int, chunks: list[Tensor]) -> Tensor:
        """Logits of one evaluation batch given as chunks, after the model's first `start` stages.
        A SmallResNet's head (pooling and the fc product) runs on the whole batch, as in the whole
        forward: MKL's matrix product on Intel CPUs can round a row differently when the row count
        differs (docs/determinism.md), the convolutions here do not (chunks of two or more)."""
        if not isinstance(model, SmallResNet):
            return torch.cat([model(x) for x in chunks])
        *trunk, (_, head) = model.stages()
        features = []
        for x in chunks:
            for _, stage in trunk[start:]:
                x = stage(x)
            features.append(x)
        return head(torch.cat(features))


# ----------------------------------------------------------------------------- entry point

def summarize(results: list[dict]) -> str:
    """Per method: mean +- sd over seeds of the final test accuracy, and mean training time."""
    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        rows = [row for row in r["rows"] if row["metric"] == "test_accuracy"]
        if rows:
            by_method.setdefault(rows[-1]["method"], []).append((rows[-1]["value"], rows[-1]["time_s"]))
    if not by_method:
        return ""
    lines = [f"{'method':<16} {'seeds':>5} {'test acc %':>14} {'time_s':>8}"]
    for method, runs in by_method.items():
        acc, secs = [a for a, _ in runs], [s for _, s in runs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"{method:<16} {len(runs):>5} {statistics.mean(acc):>8.2f} ± {sd:<4.2f} "
                     f"{statistics.mean(secs):>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """`python -m experiments.transfer`: every method x seed through the shared runner."""
    try:
        results = runner.main(argv, TransferConfig, TOML, TransferTask)
    except (WeightsUnavailable, DownloadError) as err:
        raise SystemExit(f"experiments.transfer: {err}") from None
    table = summarize(results)
    if table:
        print(table, flush=True)
    return results


if __name__ == "__main__":
    errors.cli(main)


__all__ = ["TransferConfig", "TransferTask", "SmallResNet", "source_task", "target_task", "TARGET_PAIRS",
           "augment", "freeze_bn_statistics", "imagenet_resnet", "pretrained_state", "WeightsUnavailable",
           "main"]

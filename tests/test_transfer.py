"""Transfer-learning experiment: generated tasks, pretraining cache, models, freezing, offline errors.

Everything runs offline and small: tiny networks and data sets for the quick profile, and the
torchvision ResNets without their weights (the download is monkeypatched) on miniature CIFAR files.
"""

import json
import socket
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from experiments import transfer
from experiments.core.config import list_methods, load_config
from experiments.core.optimizers import apply_train
from experiments.core.runner import run
from experiments.transfer import (
    SOURCE_CLASSES,
    TARGET_CLASSES,
    TARGET_PAIRS,
    TOML,
    FrozenStatsBatchNorm2d,
    TransferConfig,
    TransferTask,
    WeightsUnavailable,
    augment,
    source_task,
    target_task,
)
from tests.helpers import TRANSFER_TINY as TINY
from tests.test_data import make_cifar10, make_cifar100

METHODS = {"train_all": ["all"], "multirate": ["all"], "layer2+3+4+fc": ["layer2", "layer3", "layer4", "fc"],
           "layer3+4+fc": ["layer3", "layer4", "fc"], "layer4+fc": ["layer4", "fc"], "fc": ["fc"]}
# A network and data sets small enough for a test: a few hundred milliseconds per run.


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights


def quick_cfg(tmp_path, method="train_all", *overrides):
    return load_config(TransferConfig, TOML, "quick", method,
                       [f"results_dir={tmp_path / 'results'}", *TINY, *overrides])


def paper_cfg(tmp_path, method="train_all", *overrides):
    return load_config(TransferConfig, TOML, "paper", method,
                       [f"results_dir={tmp_path / 'results'}", "wandb=disabled", "device=cpu", "epochs=1",
                        "batch_size=4", "image_size=32", "eval_batch_size=4", *overrides])


# ----------------------------------------------------------------------------- generated tasks

@pytest.mark.parametrize("make, classes", [(source_task, SOURCE_CLASSES), (target_task, TARGET_CLASSES)],
                         ids=["source", "target"])
def test_generated_tasks_are_deterministic_with_the_stated_shapes(make, classes):
    x, y = make(200, seed=3, size=16)
    assert x.shape == (200, 3, 16, 16) and x.dtype == torch.uint8
    assert y.shape == (200,) and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) < classes and len(y.unique()) > classes // 2
    x2, y2 = make(200, seed=3, size=16)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = make(200, seed=4, size=16)
    assert not torch.equal(x, x3)
    assert make(5, seed=0, size=24)[0].shape == (5, 3, 24, 24)
    assert x.float().std() > 20  # images, not a constant


def test_task_classes():
    assert SOURCE_CLASSES == 96 and TARGET_CLASSES == 12
    assert len(set(TARGET_PAIRS)) == TARGET_CLASSES  # distinct (shape, colour) pairs
    shapes = [s for s, _ in TARGET_PAIRS]
    colours = [c for _, c in TARGET_PAIRS]
    assert all(shapes.count(s) == 2 for s in shapes) and all(colours.count(c) == 2 for c in colours)


def test_augment_is_seeded_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0), padding=2, flip=True)
    b = augment(x, torch.Generator().manual_seed(0), padding=2, flip=True)
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(augment(x, torch.Generator(), padding=0, flip=False), x)
    padded = nn.functional.pad(x, (2,) * 4)
    for _ in range(20):  # every image is a crop of its padded self, flipped or not
        out = augment(x, torch.Generator().manual_seed(_), padding=2, flip=True)
        for i in range(2):
            crops = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
            assert any(torch.equal(out[i], t) or torch.equal(out[i], t.flip(2)) for t in crops)


# ----------------------------------------------------------------------------- pretraining cache

def test_pretrained_weights_are_cached_once_and_reused(tmp_path, monkeypatch):
    calls = []
    original = transfer._pretrain

    def counting(spec, device):
        calls.append(spec)
        return original(spec, device)

    monkeypatch.setattr(transfer, "_pretrain", counting)
    cfg = quick_cfg(tmp_path)
    path = transfer.pretrained_path(cfg)
    assert path.parent == tmp_path / "results" / "quick" / "transfer" / "pretrained"
    assert not path.exists()

    torch.manual_seed(0)
    first = TransferTask(cfg).build_model()
    assert len(calls) == 1 and path.exists()
    saved = torch.load(path, weights_only=True)
    assert saved["spec"] == transfer.pretrain_spec(cfg) and 0 <= saved["source_test_accuracy"] <= 100

    torch.manual_seed(0)
    second = TransferTask(cfg).build_model()
    assert len(calls) == 1  # read from the cache, not pretrained again
    # Pretraining does not touch the caller's RNG: the new head is the same either way.
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    backbone = {k: v for k, v in saved["state_dict"].items() if not k.startswith("fc.")}
    for name, value in backbone.items():
        assert torch.equal(second.state_dict()[name], value), name
    assert second.fc.out_features == TARGET_CLASSES

    # A different pretraining config is a different cache entry; the run seed is not part of it.
    assert transfer.pretrained_path(quick_cfg(tmp_path, "train_all", "seed=5")) == path
    assert transfer.pretrained_path(quick_cfg(tmp_path, "train_all", "pretrain_lr=0.2")) != path


def test_pretraining_prints_a_line_per_epoch_then_where_it_cached(tmp_path, capsys):
    # Slurm .out files show the one-off pretraining moving: a line per epoch, then the cache path.
    cfg = quick_cfg(tmp_path, "train_all", "pretrain_epochs=3")  # 64 images of batch 32: 2 steps an epoch
    transfer.pretrained_state(cfg, torch.device("cpu"))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines[:-1]] == [
        f"pretraining small_resnet: epoch {epoch}/3" for epoch in (1, 2, 3)]
    assert all(" loss " in line and line.endswith(" s") for line in lines[:-1])
    assert lines[-1].startswith("pretrained small_resnet on the generated source task: ")
    assert lines[-1].endswith(f"cached at {transfer.pretrained_path(cfg)}")
    transfer.pretrained_state(cfg, torch.device("cpu"))  # from the cache: silent
    assert capsys.readouterr().err == ""


def test_scratch_does_not_pretrain(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "_pretrain", lambda *a: pytest.fail("pretrained"))
    cfg = quick_cfg(tmp_path, "train_all", "pretrained=false")
    assert isinstance(TransferTask(cfg).build_model(), transfer.SmallResNet)


def test_quick_profile_end_to_end(tmp_path, capsys):
    results = transfer.main(["--method", "multirate,fc", "--seeds", "0,1", f"results_dir={tmp_path}",
                             *TINY, "epochs=2"])
    assert [r["status"] for r in results] == ["complete"] * 4
    folder = tmp_path / "quick" / "transfer"
    assert len(list((folder / "pretrained").glob("*.pt"))) == 1  # shared by every method and seed
    for r in results:
        metrics = {row["metric"] for row in r["rows"]}
        assert metrics == {"train_loss", "test_accuracy", "test_loss"}
        assert {row["experiment"] for row in r["rows"]} == {"transfer"}
        accuracy = [row["value"] for row in r["rows"] if row["metric"] == "test_accuracy"]
        assert len(accuracy) == 2 and all(0 <= a <= 100 for a in accuracy)
        record = json.loads((folder / f"{r['run_name']}.json").read_text())
        assert record["config"]["model"] == "small_resnet" and record["config"]["dataset"] == "generated"
    out = capsys.readouterr().out
    assert "multirate" in out and "test acc %" in out  # the summary table


# ----------------------------------------------------------------------------- paper profile

@pytest.mark.parametrize("model, dataset, classes",
                         [("resnet50", "cifar100", 100), ("resnet34", "cifar10", 10)])
def test_paper_task_builds_torchvision_model_and_trains(tmp_path, monkeypatch, model, dataset, classes):
    make = make_cifar100 if dataset == "cifar100" else make_cifar10
    make(tmp_path / "data", n=8)
    built = []

    def without_weights(name):
        built.append(name)
        return getattr(torchvision.models, name)(weights=None)

    monkeypatch.setattr(transfer, "imagenet_resnet", without_weights)
    cfg = paper_cfg(tmp_path, "multirate", f"model={model}")
    assert cfg.dataset == dataset and cfg.image_size == 32
    task = TransferTask(cfg)
    net = task.build_model()
    assert built == [model] and isinstance(net, torchvision.models.ResNet)
    assert net.fc.out_features == classes and net.fc.in_features == (2048 if model == "resnet50" else 512)

    x, y = task.train_tensors(torch.device("cpu"))
    assert x.shape == ((8 if dataset == "cifar100" else 40), 3, 32, 32) and x.dtype == torch.uint8
    xb, yb = task.batch((x[:4], y[:4]), torch.Generator().manual_seed(0))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32
    cfg224 = paper_cfg(tmp_path, "multirate", f"model={model}", "image_size=224")
    assert TransferTask(cfg224).prepare(x[:2]).shape == (2, 3, 224, 224)

    result = run(cfg, TransferTask(cfg))  # one epoch: a slow step, then fast ones
    assert result["status"] == "complete"
    last = {r["metric"]: r["value"] for r in result["rows"]}
    assert torch.isfinite(torch.tensor(last["train_loss"])) and 0 <= last["test_accuracy"] <= 100


def test_config_checks_model_and_dataset(tmp_path):
    assert paper_cfg(tmp_path).model == "resnet50" and paper_cfg(tmp_path).dataset == "cifar100"
    assert quick_cfg(tmp_path).dataset == "generated"
    with pytest.raises(ValueError, match="dataset"):
        paper_cfg(tmp_path, "train_all", "dataset=generated")
    with pytest.raises(ValueError, match="model"):
        paper_cfg(tmp_path, "train_all", "model=vgg16")


def test_methods_share_the_hyperparameters(tmp_path):
    for profile in ("quick", "paper"):
        cfgs = {m: load_config(TransferConfig, TOML, profile, m) for m in METHODS}
        assert list(cfgs) == list_methods(TOML)
        shared = {(c.momentum, c.weight_decay, c.batch_size, c.schedule, c.epochs) for c in cfgs.values()}
        assert len(shared) == 1
        if profile == "paper":  # untuned: one step size (quick: the protocol's, tests/test_protocol.py)
            assert len({c.lr for c in cfgs.values()}) == 1
        assert cfgs["multirate"].optimizer == "multirate" and cfgs["multirate"].k == 5
        assert cfgs["multirate"].fast == ["fc"] and cfgs["multirate"].linear_drift
        assert all(c.optimizer == "sgd" for m, c in cfgs.items() if m != "multirate")
        assert {m: c.train for m, c in cfgs.items()} == METHODS


# ----------------------------------------------------------------------------- freezing

@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model", ["small_resnet", "resnet34"])
def test_partial_methods_freeze_exactly_the_intended_stages(tmp_path, monkeypatch, method, model):
    monkeypatch.setattr(transfer, "imagenet_resnet", lambda name: getattr(torchvision.models, name)())
    overrides = ["pretrained=false"] if model == "small_resnet" else []
    cfg = (quick_cfg if model == "small_resnet" else paper_cfg)(tmp_path, method, *overrides)
    net = TransferTask(cfg).build_model()
    apply_train(net, cfg.train)
    stages = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    trained_stages = stages if METHODS[method] == ["all"] else METHODS[method]
    for name, p in net.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in trained_stages), name
    net.train()  # what the runner does, and after every evaluation
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            trained = name.split(".")[0] in trained_stages
            assert module.training == trained, name
            assert isinstance(module, FrozenStatsBatchNorm2d) == (not trained), name


def test_frozen_stages_keep_their_statistics(tmp_path):
    cfg = quick_cfg(tmp_path, "layer4+fc", "pretrained=false")
    task = TransferTask(cfg)
    result = run(cfg, task)
    net = result["model"]
    assert torch.equal(net.layer1[0].bn1.running_mean, torch.zeros(4))  # never updated
    assert not torch.equal(net.layer4[0].bn1.running_mean, torch.zeros(8))  # trained: updated


@pytest.mark.parametrize("method,frozen", [("train_all", 0), ("multirate", 0), ("layer2+3+4+fc", 2),
                                           ("layer4+fc", 4), ("fc", 5)])
@pytest.mark.parametrize("eval_chunk", [0, 6])
def test_evaluation_reuses_the_frozen_stages_with_the_same_bits(tmp_path, method, frozen, eval_chunk):
    # The test set through the frozen leading stages is computed once a run, in chunks of
    # eval_chunk images; every evaluation must still equal the whole forward of each evaluation
    # batch bit for bit, after the trained stages have moved.
    cfg = quick_cfg(tmp_path, method, "pretrained=false", "target_test=40", "eval_batch_size=16",
                    f"eval_chunk={eval_chunk}")
    task = TransferTask(cfg)
    net = task.build_model()
    apply_train(net, cfg.train)
    assert net.frozen_stages() == frozen

    def whole_forward() -> dict:  # evaluate as it was before the frozen stages were reused
        images, labels = task._test
        correct, loss_sum = 0, 0.0
        for xb, yb in zip(images.split(cfg.eval_batch_size), labels.split(cfg.eval_batch_size)):
            logits = net(task.prepare(xb))
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        return {"test_accuracy": 100.0 * correct / len(labels), "test_loss": loss_sum / len(labels)}

    net.eval()
    with torch.no_grad():
        for _ in range(2):
            staged = task.evaluate(net, torch.device("cpu"))
            assert staged == whole_forward()
            assert task._frozen_features is None if not frozen else task._frozen_features[0] == frozen
            chunks = [len(c) for c in task._eval_batches(net, task._test[0])[1]]
            assert chunks == ([3, 3, 2] if eval_chunk else [1, 1, 1])  # 16, 16, 8 images, equal chunks
            for p in net.parameters():  # what training does to the trained stages
                if p.requires_grad:
                    p.add_(0.1)
    x = torch.randn(3, 3, 8, 8)
    staged = x
    for _, stage in net.stages():
        staged = stage(staged)
    assert torch.equal(staged, net(x))


# ----------------------------------------------------------------------------- offline errors

def test_unreachable_network_gives_a_one_line_error(tmp_path, monkeypatch, capsys):
    make_cifar10(tmp_path / "data", n=8)

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "urlopen", unreachable)
    with pytest.raises(WeightsUnavailable, match="could not download the ImageNet weights"):
        transfer.imagenet_resnet("resnet34")

    with pytest.raises(SystemExit) as exit_info:
        transfer.main(["--profile", "paper", "--method", "fc", f"results_dir={tmp_path}", "model=resnet34",
                       "wandb=disabled", "device=cpu", "epochs=1", "batch_size=4", "image_size=32"])
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in message
    assert "ResNet34_Weights.IMAGENET1K_V1" in message and "name resolution" in message
    assert str(tmp_path / "torch-home") in message  # where to put the file by hand


def test_damaged_imagenet_weights_in_the_cache_are_refused_before_loading():
    """torch.hub checks the SHA-256 prefix in the file's name only when it downloads the file."""
    from pathlib import Path

    from experiments.core.errors import UserError

    name = Path(torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url).name  # resnet34-b627a593.pth
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, cached)  # loadable, but not the published file
    with pytest.raises(UserError, match=f"{cached} is damaged: its SHA-256 does not start with the "):
        transfer.imagenet_resnet("resnet34")

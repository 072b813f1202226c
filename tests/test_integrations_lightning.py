"""MultirateModule: a Lightning module with Multirate gives TrainStep's iterates and saving."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from multirate import Multirate, TrainStep, partition  # noqa: E402
from multirate.integrations.lightning import MultirateModule  # noqa: E402

K, BATCH, BATCHES = 3, 4, 7  # 7 batches an epoch: epochs end mid-cycle (and mid-accumulation)


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Block(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


def network():
    torch.manual_seed(0)
    return TinyResNet()


def optimizer_and_scheduler(net):
    opt = Multirate(partition.layerwise(net, ["fc"]), lr=0.1, k=K, momentum=0.9, weight_decay=1e-3)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


class Classifier(MultirateModule, L.LightningModule):
    def __init__(self, net, accumulation=1, interval="step"):
        super().__init__()
        self.net, self.accumulate_grad_batches, self.interval = net, accumulation, interval

    def training_loss(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt, sched = optimizer_and_scheduler(self.net)
        return dict(optimizer=opt, lr_scheduler=dict(scheduler=sched, interval=self.interval))


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCHES * BATCH, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (BATCHES * BATCH,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fit(module, epochs, ckpt_path=None, **kwargs):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer


def reference(net, epochs, accumulation, autocast=False, interval="step"):
    """The project's own loop: TrainStep over the same batches, the scheduler stepped per step
    (or per epoch)."""
    opt, sched = optimizer_and_scheduler(net)
    step = TrainStep(net, opt)
    net.train()
    batches = list(loader())
    for _ in range(epochs):
        for start in range(0, len(batches), accumulation):
            micro = batches[start:start + accumulation]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                # One graph over the micro-batches: the engine adds their gradients as the mixin's
                # second backward adds into .grad; a + b == b + a, so bit-equal for two.
                step(lambda: sum(F.cross_entropy(net(x), y) / len(micro) for x, y in micro))
            if interval == "step":
                sched.step()
        if interval == "epoch":
            sched.step()
    return net


def assert_equal_models(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("accumulation,interval", [(1, "step"), (2, "step"), (2, "epoch")])
def test_iterates_equal_train_step_loop(accumulation, interval):
    net = network()
    expected = reference(copy.deepcopy(net), 2, accumulation, interval=interval)
    module = Classifier(net, accumulation, interval)
    trainer = fit(module, 2)
    steps = 2 * -(-BATCHES // accumulation)
    assert trainer.global_step == steps and module.optimizers().optimizer.param_groups[0]["step"] == steps
    assert_equal_models(net, expected)


def test_second_fit_follows_its_new_optimizer():
    net = network()
    expected = reference(reference(copy.deepcopy(net), 1, 1), 1, 1)  # a fresh optimizer each time
    module = Classifier(net)
    fit(module, 1)
    fit(module, 1)  # configure_optimizers runs again: a new cycle from a slow step
    assert_equal_models(net, expected)


def test_bf16_mixed_equals_train_step_under_autocast():
    net = network()
    expected = reference(copy.deepcopy(net), 1, 1, autocast=True)
    fit(Classifier(net), 1, precision="bf16-mixed")
    assert_equal_models(net, expected)


class RecordGradients(L.Callback):
    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {rate: [p.grad is not None for g in optimizer.param_groups if g["rate"] == rate
                        for p in g["params"]] for rate in ("slow", "fast")}
        self.seen.append((optimizer.is_slow_step, all(grads["slow"]), any(grads["slow"]), all(grads["fast"])))


def test_fast_steps_compute_no_slow_gradient_and_no_backbone_graph():
    net = network()
    graph = []
    net.layer1.register_forward_hook(lambda m, args, out: graph.append(out.requires_grad))
    record = RecordGradients()
    fit(Classifier(net), 1, callbacks=[record])
    slow_steps = [s % K == 0 for s in range(BATCHES)]
    assert [seen[0] for seen in record.seen] == slow_steps
    for slow, all_slow, any_slow, all_fast in record.seen:
        assert all_fast and (all_slow if slow else not any_slow)
    # The first fast step runs unpruned (the check); after it no fast step records a graph.
    assert graph == [slow or i == 1 for i, slow in enumerate(slow_steps)]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_mid_cycle_equals_uninterrupted_run(tmp_path, accumulation):
    full = network()
    fit(Classifier(full, accumulation), 2)
    first = Classifier(network(), accumulation)
    trainer = fit(first, 1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    steps = -(-BATCHES // accumulation)  # 7 or 4 steps: mid-cycle for k = 3
    saved = torch.load(tmp_path / "epoch1.ckpt", weights_only=False)["optimizer_states"][0]
    assert saved["param_groups"][0]["step"] == steps and steps % K != 0
    resumed = network()
    with torch.no_grad():  # the checkpoint must bring the weights back, not the initialisation
        for p in resumed.parameters():
            p.zero_()
    fit(Classifier(resumed, accumulation), 2, ckpt_path=tmp_path / "epoch1.ckpt")
    assert_equal_models(resumed, full)

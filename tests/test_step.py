import pytest
import torch
from torch import nn
from torch.nn import functional as F

from multirate import Multirate, TrainStep, partition


def backbone_and_head(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(32, 16), nn.ReLU())
    return nn.Sequential(backbone, nn.Linear(16, 4))


def data(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(10, 6, generator=g), torch.randint(0, 4, (10,), generator=g)) for _ in range(n)]


def naive_step(model, opt, x, y):
    """Full forward and full backward every step: the reference the pruned step must equal."""
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_fast_steps_skip_slow_gradients_and_graph():
    model = backbone_and_head()
    opt = Multirate(partition.layerwise(model, ["1"]), lr=0.1, k=3, momentum=0.9)
    step = TrainStep(model, opt)
    recorded = []
    model[0].register_forward_hook(lambda m, args, out: recorded.append(out.requires_grad))
    slow_grads_present = []
    for x, y in data(6):
        step(lambda: F.cross_entropy(model(x), y))
        slow_grads_present.append(all(p.grad is not None for p in model[0].parameters()))
    # Steps: slow, fast, fast, slow, fast, fast. The first step of each kind runs unpruned to learn
    # which parameters get gradients; after that a fast step builds no graph through the backbone.
    assert slow_grads_present == [True, False, False, True, False, False]
    assert recorded == [True, True, False, True, False, False]
    assert all(p.grad is not None for p in model[1].parameters())


@pytest.mark.parametrize("fast", [["1"], ["0.4", "1"], ["0.0"]])
def test_pruned_steps_equal_full_backward(fast):
    models = [backbone_and_head(), backbone_and_head()]
    opts = [Multirate(partition.layerwise(m, fast), lr=0.1, k=3, momentum=0.9, weight_decay=1e-3)
            for m in models]
    step = TrainStep(models[0], opts[0])
    for i, (x, y) in enumerate(data()):
        torch.manual_seed(i)  # same dropout masks for both
        step(lambda: F.cross_entropy(models[0](x), y))
        torch.manual_seed(i)
        naive_step(models[1], opts[1], x, y)
        for a, b in zip(*(m.state_dict().values() for m in models)):
            assert torch.equal(a, b)


def test_plain_optimizer_with_frozen_backbone():
    models = [backbone_and_head(), backbone_and_head()]
    for m in models:
        m[0].requires_grad_(False)
    opts = [torch.optim.SGD(m[1].parameters(), lr=0.1, momentum=0.9) for m in models]
    step = TrainStep(models[0], opts[0])
    recorded = []
    models[0][0].register_forward_hook(lambda m, args, out: recorded.append(out.requires_grad))
    for i, (x, y) in enumerate(data(4)):
        torch.manual_seed(i)
        step(lambda: F.cross_entropy(models[0](x), y))
        torch.manual_seed(i)
        naive_step(models[1], opts[1], x, y)
    assert recorded == [False] * 4  # a frozen backbone never records a graph
    for a, b in zip(*(m.state_dict().values() for m in models)):
        assert torch.equal(a, b)


class HeadUsedOutsideItsModule(nn.Module):
    def __init__(self, also_call_a_fast_module):
        super().__init__()
        self.body, self.head, self.post = nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 4)
        self.also_call = also_call_a_fast_module

    def forward(self, x):
        out = F.linear(self.body(x), self.head.weight, self.head.bias)  # bypasses self.head's hooks
        return self.post(out) if self.also_call else out


@pytest.mark.parametrize("also_call,message", [(False, "does not depend"), (True, "got no gradient")])
def test_misuse_fails_loudly(also_call, message):
    model = HeadUsedOutsideItsModule(also_call)
    opt = Multirate(partition.layerwise(model, ["head", "post"]), lr=0.1, k=4)
    step = TrainStep(model, opt)
    x, y = data(1)[0]
    step(lambda: F.cross_entropy(model(x), y))  # slow, unpruned
    step(lambda: F.cross_entropy(model(x), y))  # fast, unpruned
    with pytest.raises(RuntimeError, match=message):
        step(lambda: F.cross_entropy(model(x), y))


def test_random_subgroups_train_step():
    model = backbone_and_head()
    opt = Multirate(partition.random_subgroups(model, 0.5), lr=0.1, k=3, momentum=0.9)
    step = TrainStep(model, opt)
    losses = [step(lambda: F.cross_entropy(model(x), y)).item() for x, y in data()]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_grad_scaler_drives_multirate():
    """A power-of-two loss scale is exact, so scaled training equals unscaled training."""
    models = [backbone_and_head(), backbone_and_head()]
    opts = [Multirate(partition.layerwise(m, ["1"]), lr=0.1, k=3, momentum=0.9) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = TrainStep(models[1], opts[1])
    for i, (x, y) in enumerate(data(6)):
        torch.manual_seed(i)
        opts[0].zero_grad()
        scaler.scale(F.cross_entropy(models[0](x), y)).backward()
        scaler.step(opts[0])
        scaler.update()
        torch.manual_seed(i)
        step(lambda: F.cross_entropy(models[1](x), y))
    assert opts[0].param_groups[0]["step"] == 6
    for a, b in zip(*(m.state_dict().values() for m in models)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_groups", [lambda m: partition.layerwise(m, ["1"]),
                                         lambda m: partition.random_subgroups(m, 0.5)])
@pytest.mark.parametrize("init_scale", [1.0, 1024.0])
def test_train_step_with_scaler_equals_unscaled(make_groups, init_scale):
    """Scale 1, or a power of two (exact), and no inf: the iterates and what ``reduce_grads`` sees
    (the true gradients, unscaled before it) equal those of the unscaled step."""
    models = [backbone_and_head(), backbone_and_head()]
    opts = [Multirate(make_groups(m), lr=0.1, k=3, momentum=0.9, weight_decay=1e-3) for m in models]
    seen = [[], []]
    scalers = [None, torch.amp.GradScaler("cpu", init_scale=init_scale)]
    steps = [TrainStep(m, o, reduce_grads=lambda ps, s=s: s.append([p.grad.clone() for p in ps]), scaler=sc)
             for m, o, s, sc in zip(models, opts, seen, scalers)]
    for i, (x, y) in enumerate(data()):
        for m, step in zip(models, steps):
            torch.manual_seed(i)
            step(lambda: F.cross_entropy(m(x), y))
        for a, b in zip(*(m.state_dict().values() for m in models)):
            assert torch.equal(a, b)
    assert len(seen[0]) == len(seen[1]) == len(data())
    for a, b in zip(*seen):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("make_groups", [lambda m: partition.layerwise(m, ["1"]),
                                         lambda m: partition.random_subgroups(m, 0.5)])
def test_scaler_skipped_step_keeps_the_cycle(make_groups):
    """An inf loss: the scaler skips ``optimizer.step()``, so nothing moves, the cycle stays where it
    was and the scale halves; training goes on as if that minibatch had only been run forward
    (which updates the batch-norm statistics)."""
    models = [backbone_and_head(), backbone_and_head()]
    opts = [Multirate(make_groups(m), lr=0.1, k=3, momentum=0.9) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    steps = [TrainStep(models[0], opts[0], scaler=scaler), TrainStep(models[1], opts[1])]
    batches = data(7)
    for i, (x, y) in enumerate(batches):
        if i == 4:  # a fast step (slow, fast, fast, slow, fast, ...)
            before = [p.clone() for p in models[0].parameters()]
            assert not opts[0].is_slow_step
            step_count = opts[0].param_groups[0]["step"]
            loss = steps[0](lambda: F.cross_entropy(models[0](x), y) * float("inf"))
            assert not torch.isfinite(loss)
            assert opts[0].param_groups[0]["step"] == step_count and not opts[0].is_slow_step
            assert all(torch.equal(a, b) for a, b in zip(before, models[0].parameters()))
            assert scaler.get_scale() == 2.0 ** 9
            with torch.no_grad():
                models[1](x)  # the batch-norm statistics that the skipped step's forward updated
            continue
        for m, step in zip(models, steps):
            torch.manual_seed(i)
            step(lambda: F.cross_entropy(m(x), y))
        for a, b in zip(*(m.state_dict().values() for m in models)):
            assert torch.equal(a, b)
    assert opts[0].param_groups[0]["step"] == opts[1].param_groups[0]["step"] == len(batches) - 1

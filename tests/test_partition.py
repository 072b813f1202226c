import pytest
import torch
import torchvision
from torch import nn

from multirate import Multirate, partition
from tests.helpers import algorithm_1, assert_lockstep, batches, quadratic_grads, small_net, train


@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18(num_classes=10)


def ids(params):
    return {id(p) for p in params}


def test_layerwise_head(resnet):
    slow, fast = partition.layerwise(resnet, ["fc"])
    assert (slow["rate"], fast["rate"]) == ("slow", "fast")
    assert ids(fast["params"]) == ids(resnet.fc.parameters())
    assert ids(slow["params"]) | ids(fast["params"]) == ids(resnet.parameters())
    assert not ids(slow["params"]) & ids(fast["params"])
    Multirate([slow, fast], lr=0.1, k=5)


def test_layerwise_matches_whole_names_only():
    model = nn.ModuleDict({"layer4": nn.Linear(2, 2), "layer40": nn.Linear(2, 2)})
    slow, fast = partition.layerwise(model, "layer4")
    assert ids(fast["params"]) == ids(model["layer4"].parameters())
    assert ids(slow["params"]) == ids(model["layer40"].parameters())


def test_layerwise_unknown_name(resnet):
    with pytest.raises(ValueError, match=r"no trainable parameters under \['head'\].*'fc'"):
        partition.layerwise(resnet, ["head"])


def test_layerwise_skips_frozen():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    slow, fast = partition.layerwise(model, ["2"])
    assert ids(slow["params"]) == ids(model[1].parameters())
    only_fast = partition.layerwise(model, ["1", "2"])
    assert [g["rate"] for g in only_fast] == ["fast"]


def test_last_modules(resnet):
    assert partition.last_modules(resnet, 1) == ["fc"]
    assert partition.last_modules(resnet, 3) == ["layer3", "layer4", "fc"]
    with pytest.raises(ValueError, match="n must be in"):
        partition.last_modules(resnet, 0)


def test_weights_and_biases():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    slow, fast = partition.weights_and_biases(model)
    assert ids(fast["params"]) == {id(model[0].bias), id(model[1].bias)}
    slow, fast = partition.weights_and_biases(model, fast="weights")
    assert ids(fast["params"]) == {id(model[0].weight), id(model[1].weight)}
    with pytest.raises(ValueError, match="'biases' or 'weights'"):
        partition.weights_and_biases(model, fast="norms")


def test_random_subgroups(resnet):
    groups = partition.random_subgroups(resnet, slow_fraction=0.2, seed=7)
    random, fast = groups
    assert random["rate"] == "random" and random["slow_fraction"] == 0.2 and random["seed"] == 7
    assert all(p.dim() >= 2 for p in random["params"])
    assert all(p.dim() == 1 for p in fast["params"])
    assert ids(random["params"]) | ids(fast["params"]) == ids(resnet.parameters())
    Multirate(groups, lr=0.1, k=5)


# ------------------------------------------------------------------------ a fixed random elementwise split

def _split_net():
    return small_net()


def test_random_split_exact_fraction_per_tensor_drawn_once():
    net = _split_net()
    opt = Multirate(partition.random_split(net, slow_fraction=0.3, seed=5), lr=0.1, k=3, momentum=0.9)
    train(net, opt, batches(n=1))
    masks = {id(p): opt.state[p]["mask"].clone() for p in net.parameters()}
    for p in net.parameters():
        assert opt.state[p]["mask"].dtype == torch.bool
        assert int(opt.state[p]["mask"].sum()) == round(0.3 * p.numel())
    train(net, opt, batches(n=5))
    assert all(torch.equal(opt.state[p]["mask"], masks[id(p)]) for p in net.parameters())  # never redrawn
    again = Multirate(partition.random_split(_split_net(), slow_fraction=0.3, seed=5), lr=0.1, k=3)
    other = Multirate(partition.random_split(_split_net(), slow_fraction=0.3, seed=6), lr=0.1, k=3)
    for o in (again, other):
        for p in o.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        o.step()
    firsts = [o.state[o.param_groups[0]["params"][0]]["mask"] for o in (again, other)]
    assert torch.equal(firsts[0], masks[id(next(net.parameters()))]) and not torch.equal(firsts[1], firsts[0])


@pytest.mark.parametrize("drift", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_split_entries_follow_algorithm_1(k, drift):
    """Slow entries are slow parameters and fast entries fast ones, elementwise, in one tensor."""
    grad_fn = quadratic_grads(seed=k)
    w = nn.Parameter(torch.linspace(-1, 2, 10, dtype=torch.float64))
    opt = Multirate([dict(params=[w], rate="split", slow_fraction=0.5, seed=1)], lr=0.3, k=k, momentum=0.9,
                    weight_decay=0.01, linear_drift=drift)
    w.grad = torch.zeros_like(w)
    opt.step()  # draws the mask (a zero gradient here, so the reference starts one step later)
    mask = opt.state[w]["mask"]
    assert int(mask.sum()) == 5
    s0, f0 = w.detach()[mask].clone(), w.detach()[~mask].clone()
    opt = Multirate([dict(params=[w], rate="split", slow_fraction=0.5, seed=1)], lr=0.3, k=k, momentum=0.9,
                    weight_decay=0.01, linear_drift=drift)
    for t in range(4 * k):
        g_s, g_f = grad_fn(t, w.detach()[mask], w.detach()[~mask])
        grad = torch.empty_like(w)
        grad[mask], grad[~mask] = g_s, g_f
        w.grad = grad
        opt.step()
    ref_s, ref_f = algorithm_1(s0, f0, grad_fn, h=0.3, k=k, mu=0.9, wd=0.01, cycles=4, drift=drift)
    torch.testing.assert_close(w.detach()[mask], ref_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.detach()[~mask], ref_f, rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_random_split_k1_equals_sgd(foreach):
    net_a, net_b = _split_net(), _split_net()
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3, foreach=foreach)
    mr = Multirate(partition.random_split(net_b), lr=0.1, k=1, momentum=0.9, weight_decay=5e-3,
                   foreach=foreach)
    for batch in batches():
        train(net_a, sgd, [batch])
        train(net_b, mr, [batch])
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("drift", [True, False])
@pytest.mark.parametrize("steps_before_save", [4, 5])
def test_random_split_state_dict_lockstep(drift, steps_before_save):

    assert_lockstep(lambda net: Multirate(partition.random_split(net, 0.5, seed=2), lr=0.1, k=3, momentum=0.9,
                                          weight_decay=1e-3, linear_drift=drift), steps_before_save)

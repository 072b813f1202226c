import pytest
import torchvision
from torch import nn

from multirate import Multirate, partition


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

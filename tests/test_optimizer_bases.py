"""Other base algorithms: MultirateAdamW, and Nesterov momentum for the SGD base."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from multirate import BASES, Multirate, MultirateAdam, MultirateAdamW, TrainStep, partition
from tests import helpers
from tests.helpers import assert_lockstep, cycle_reference, quadratic_grads, train


# Float64 by default here: the k = 1 comparisons with torch's own optimizers are to 1e-13.
def small_net(seed=0, dtype=torch.float64):
    return helpers.small_net(seed, dtype)


def batches(n=12, seed=0, dtype=torch.float64):
    return helpers.batches(n, seed, dtype)


# ----------------------------------------------------------------------------- k = 1: the base itself

# torch applies AdamW's decay as theta * (1 - h lambda) first, and divides Adam's m by its bias
# correction last: equal up to rounding.
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("drift", [True, False])
@pytest.mark.parametrize("torch_cls,multirate_cls", [(torch.optim.AdamW, MultirateAdamW),
                                                     (torch.optim.Adam, MultirateAdam)])
def test_adam_bases_k1_equal_torch(torch_cls, multirate_cls, foreach, drift):
    net_a, net_b = small_net(), small_net()
    ref = torch_cls(net_a.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                    amsgrad=False, foreach=foreach)
    # A slow group too: at k = 1 every step is a slow step and a slow group is the base as well.
    mr = multirate_cls(partition.layerwise(net_b, ["4"]), lr=0.01, k=1, betas=(0.8, 0.99), eps=1e-6,
                       weight_decay=0.1, linear_drift=drift, foreach=foreach)
    for batch in batches():
        train(net_a, ref, [batch])
        train(net_b, mr, [batch])
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert not torch.equal(net_a[0].weight, small_net()[0].weight)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("drift", [True, False])
def test_nesterov_k1_equals_torch_sgd(foreach, drift):
    net_a, net_b = small_net(), small_net()
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True,
                          foreach=foreach)
    mr = Multirate(partition.layerwise(net_b, ["4"]), lr=0.1, k=1, momentum=0.9, weight_decay=5e-3,
                   nesterov=True, linear_drift=drift, foreach=foreach)
    for batch in batches():
        train(net_a, sgd, [batch])
        train(net_b, mr, [batch])
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            assert torch.equal(a, b)


def test_nesterov_random_subgroups_k1_equals_torch_sgd():
    net_a, net_b = small_net(), small_net()
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True)
    mr = Multirate(partition.random_subgroups(net_b, 0.5), lr=0.1, k=1, momentum=0.9, weight_decay=5e-3,
                   nesterov=True)
    train(net_a, sgd, batches())
    train(net_b, mr, batches())
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- k > 1: the definition

def adamw_base(betas, eps, wd):
    """``base`` of `cycle_reference` for AdamW: moments and an update counter per parameter."""
    b1, b2 = betas

    def base():
        m = v = 0.0
        n = 0

        def direction(g, theta):
            nonlocal m, v, n
            n += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            return (m / (1 - b1**n)) / ((v / (1 - b2**n)).sqrt() + eps) + wd * theta
        return direction
    return base


def adam_base(betas, eps, wd):
    """``base`` of `cycle_reference` for Adam with coupled L2 (the decay folded into g)."""
    adam = adamw_base(betas, eps, wd=0.0)

    def base():
        direction = adam()
        return lambda g, theta: direction(g + wd * theta, theta)
    return base


def nesterov_base(mu, wd):
    """``base`` of `cycle_reference` for Nesterov momentum: direction d + mu p, d = g + wd theta."""
    def base():
        p = 0.0

        def direction(g, theta):
            nonlocal p
            d = g + wd * theta
            p = mu * p + d
            return d + mu * p
        return direction
    return base


def run_scalar_pair(opt_cls, grad_fn, k, steps, **kwargs):
    s0, f0 = torch.linspace(-1, 1, 5, dtype=torch.float64), torch.linspace(2, 0, 5, dtype=torch.float64)
    slow, fast = nn.Parameter(s0.clone()), nn.Parameter(f0.clone())
    opt = opt_cls([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}], k=k, **kwargs)
    for t in range(steps):
        slow.grad, fast.grad = grad_fn(t, slow.detach(), fast.detach())
        opt.step()
    return (s0, f0), (slow.detach(), fast.detach())


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("drift", [True, False])
def test_adamw_matches_definition(k, drift, foreach):
    grad_fn = quadratic_grads(seed=k)
    (s0, f0), (s, f) = run_scalar_pair(MultirateAdamW, grad_fn, k, 4 * k, lr=0.05, betas=(0.9, 0.99),
                                       eps=1e-8, weight_decay=0.1, linear_drift=drift, foreach=foreach)
    ref_s, ref_f = cycle_reference(s0, f0, grad_fn, h=0.05, k=k, cycles=4, drift=drift,
                                   base=adamw_base((0.9, 0.99), eps=1e-8, wd=0.1))
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(f, ref_f, rtol=0, atol=1e-12)
    assert not torch.allclose(s, s0)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("drift", [True, False])
def test_nesterov_matches_definition(k, drift, foreach):
    grad_fn = quadratic_grads(seed=10 + k)
    (s0, f0), (s, f) = run_scalar_pair(Multirate, grad_fn, k, 4 * k, lr=0.3, momentum=0.9,
                                       weight_decay=0.01, nesterov=True, linear_drift=drift,
                                       foreach=foreach)
    ref_s, ref_f = cycle_reference(s0, f0, grad_fn, h=0.3, k=k, cycles=4, drift=drift,
                                   base=nesterov_base(mu=0.9, wd=0.01))
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(f, ref_f, rtol=0, atol=1e-12)


def test_adamw_slow_moves_one_adamw_step_per_cycle():
    """Slow scalar at 1, gradients 1 then ignored: with bias correction m_hat = v_hat = 1, so
    d_S = 1 / (1 + eps) + wd * 1 and the cycle moves it by h * d_S, spread evenly with drift."""
    slow = nn.Parameter(torch.ones(1, dtype=torch.float64))
    fast = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = MultirateAdamW([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}],
                         lr=0.3, k=3, eps=0.5, weight_decay=0.2)
    path = []
    for g in [1.0, 100.0, 100.0]:
        slow.grad = torch.tensor([g], dtype=torch.float64)
        fast.grad = torch.zeros(1, dtype=torch.float64)
        opt.step()
        path.append(slow.item())
    d_s = 1 / 1.5 + 0.2
    assert path == pytest.approx([1 - 0.1 * d_s, 1 - 0.2 * d_s, 1 - 0.3 * d_s], abs=1e-15)
    assert opt.state[slow]["step"] == 1 and opt.state[fast]["step"] == 3


# ----------------------------------------------------------------------------- implementation paths

@pytest.mark.parametrize("opt_cls,kwargs", [
    (MultirateAdamW, dict(lr=0.01, weight_decay=0.1)),
    (Multirate, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)),
])
def test_foreach_equals_for_loop(opt_cls, kwargs):
    nets = [small_net(dtype=torch.float32), small_net(dtype=torch.float32)]
    opts = [opt_cls(partition.layerwise(net, ["2", "4"]), k=3, foreach=foreach, **kwargs)
            for net, foreach in zip(nets, [True, False])]
    for net, opt in zip(nets, opts):
        train(net, opt, batches(dtype=torch.float32))
    for a, b in zip(*(net.parameters() for net in nets)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt_cls,kwargs", [
    (MultirateAdamW, dict(lr=0.01, weight_decay=0.1)),
    (MultirateAdamW, dict(lr=0.01, weight_decay=0.1, linear_drift=False)),
    (Multirate, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)),
])
@pytest.mark.parametrize("steps_before_save", [4, 5, 6])
def test_state_dict_lockstep(opt_cls, kwargs, steps_before_save):
    assert_lockstep(lambda net: opt_cls(partition.layerwise(net, ["4"]), k=3, **kwargs), steps_before_save,
                    dtype=torch.float64)


def test_train_step_saves_compute_with_adamw():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU()),
                            nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [MultirateAdamW(partition.layerwise(m, ["1"]), lr=0.01, k=3) for m in models]
    step = TrainStep(models[0], opts[0])
    slow_grads = []
    for x, y in batches(n=6, dtype=torch.float32):
        step(lambda: F.cross_entropy(models[0](x), y))
        slow_grads.append(all(p.grad is not None for p in models[0][0].parameters()))
        train(models[1], opts[1], [(x, y)])  # full backward every step: the same iterates
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a, b)
    assert slow_grads == [True, False, False, True, False, False]


@pytest.mark.parametrize("make,message", [
    (lambda p: MultirateAdamW([{"params": [p], "rate": "random"}]), "random subgroups need the SGD"),
    (lambda p: MultirateAdamW([{"params": [p], "rate": "slow"}]), "needs a param group with rate 'fast'"),
    (lambda p: MultirateAdamW([{"params": [p], "rate": "fast"}], betas=(0.9, 1.0)), "betas"),
    (lambda p: MultirateAdamW([{"params": [p], "rate": "fast"}], eps=-1.0), "eps"),
    (lambda p: MultirateAdamW([{"params": [p], "rate": "fast"}], k=0), "k must be a positive integer"),
    (lambda p: Multirate([{"params": [p], "rate": "fast"}], nesterov=True),
     "nesterov must be False when momentum = 0"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make(nn.Parameter(torch.ones(2)))


# ----------------------------------------------------------------------------- runner config

class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)


@pytest.mark.parametrize("optimizer,kwargs,cls", [
    ("sgd", dict(nesterov=True), torch.optim.SGD),
    ("adamw", dict(betas=[0.8, 0.99], eps=1e-6), torch.optim.AdamW),
    ("multirate", dict(nesterov=True, k=3), Multirate),
    ("multirate_adamw", dict(betas=[0.8, 0.99], eps=1e-6, k=3, linear_drift=False), MultirateAdamW),
])
def test_build_optimizer_from_config(optimizer, kwargs, cls):
    from experiments.core.config import RunConfig
    from experiments.core.optimizers import build_optimizer

    cfg = RunConfig(optimizer=optimizer, lr=0.01, weight_decay=0.1, **kwargs)
    opt = build_optimizer(cfg, Head())
    assert type(opt) is cls
    group = opt.param_groups[-1]
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.1
    for key in kwargs:
        expected = tuple(kwargs[key]) if key == "betas" else kwargs[key]
        assert group[key] == expected, key


def test_new_config_fields_keep_old_run_names():
    import dataclasses
    import hashlib
    import json

    from experiments.core.config import HASHED_IF_CHANGED, NOT_HASHED, RunConfig

    cfg = RunConfig(optimizer="multirate", k=5, lr=0.05)
    # The name as computed before nesterov/betas/eps (and the later fields) existed.
    old = {k: v for k, v in dataclasses.asdict(cfg).items()
           if k not in (*NOT_HASHED, *HASHED_IF_CHANGED)}
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8]
    assert cfg.run_name == f"train_all-seed0-{digest}"
    changed = [dict(nesterov=True), dict(betas=[0.9, 0.99]), dict(eps=1e-6)]
    names = {cfg.run_name, *(dataclasses.replace(cfg, **c).run_name for c in changed)}
    assert len(names) == 4
    random = dataclasses.replace(cfg, partition="random_subgroups")
    assert dataclasses.replace(random, zero_slow_every_step=True).run_name != random.run_name


@pytest.mark.parametrize("kwargs,key", [
    (dict(nesterov=True, momentum=0.0), "nesterov"),
    (dict(optimizer="adamw", betas=[0.9]), "betas"),
    (dict(optimizer="multirate_adamw", betas=[0.9, 1.0]), "betas"),
    (dict(optimizer="adamw", eps=-1.0), "eps"),
    (dict(optimizer="multirate_adamw", partition="random_subgroups"), "partition"),
    (dict(optimizer="multirate_adamw", partition="random_split"), "partition"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(optimizer="multirate", partition="random_subgroups", slow_fraction=1.0), "slow_fraction"),
    (dict(optimizer="multirate", partition="layerwise", zero_slow_every_step=True), "zero_slow_every_step"),
])
def test_bad_config_values(kwargs, key):
    from experiments.core.config import RunConfig

    with pytest.raises(ValueError, match=f"invalid {key}="):
        RunConfig(**kwargs)


@pytest.mark.parametrize("optimizer", ["sgd", "multirate"])
@pytest.mark.parametrize("partition_name", ["layerwise", "random_subgroups", "random_split"])
@pytest.mark.parametrize("field,value", [
    ("slow_fraction", 0.0), ("slow_fraction", 1.0), ("slow_fraction", 0.3), ("momentum", 1.0),
    ("momentum", 0.5), ("k", 0), ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -1e-4),
])
def test_config_refuses_what_the_optimizer_refuses(optimizer, partition_name, field, value):
    """The config calls the optimizer's own checks: the same values pass, the same fail."""
    from experiments.core.config import ELEMENTWISE, RunConfig
    from multirate import check_hyperparameters

    rate = ELEMENTWISE.get(partition_name, "fast")
    try:
        check_hyperparameters("sgd", rate=rate, linear_drift=rate != "random", **{field: value})
    except ValueError:
        with pytest.raises(ValueError, match=f"invalid {field}="):
            RunConfig(optimizer=optimizer, partition=partition_name, **{field: value})
    else:
        RunConfig(optimizer=optimizer, partition=partition_name, **{field: value})


def test_config_passes_zero_slow_every_step_to_the_random_group():
    from experiments.core.config import RunConfig
    from experiments.core.optimizers import build_optimizer

    for literal in (False, True):
        cfg = RunConfig(optimizer="multirate", k=3, partition="random_subgroups",
                        zero_slow_every_step=literal)
        random, fast = build_optimizer(cfg, Head()).param_groups
        assert random["rate"] == "random" and random["zero_slow_every_step"] is literal
        assert fast["zero_slow_every_step"] is False


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_base_in_the_table_is_its_torch_optimizer_at_k1(name):
    """Each row of multirate.BASES: both optimizers take the row's hyperparameters, and with k = 1
    the multirate one follows the torch one (up to rounding: AdamW's decay is written differently)."""
    base = BASES[name]
    values = dict(momentum=0.9, nesterov=True, weight_decay=1e-3, betas=(0.8, 0.99), eps=1e-6)
    hyperparameters = {key: values[key] for key in base.hyperparameters}
    nets = [small_net(dtype=torch.float64), small_net(dtype=torch.float64)]
    reference = base.torch_optimizer(nets[0].parameters(), lr=0.01, **hyperparameters)
    multirate = base.optimizer(partition.layerwise(nets[1], ["4"]), lr=0.01, k=1, **hyperparameters)
    train(nets[0], reference, batches(dtype=torch.float64))
    train(nets[1], multirate, batches(dtype=torch.float64))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("opt", [
    dict(optimizer="adamw", lr=0.01, weight_decay=0.01),
    dict(optimizer="multirate_adamw", lr=0.01, k=3, fast=["fc"], weight_decay=0.01),
    dict(optimizer="multirate", k=3, fast=["fc"], nesterov=True),
], ids=["adamw", "multirate_adamw", "multirate_nesterov"])
def test_runner_learns_and_resumes_bit_for_bit(tmp_path, opt):
    from experiments.core.runner import run
    from tests.helpers import Blobs, make_cfg

    straight = run(make_cfg(tmp_path / "a", **opt), Blobs())
    metric = {(r["epoch"], r["metric"]): r["value"] for r in straight["rows"]}
    assert metric[4, "accuracy"] > 0.8  # chance is 0.25
    cfg = make_cfg(tmp_path / "b", **opt)
    assert run(cfg, Blobs(), stop_at_step=11)["status"] == "interrupted"  # mid-cycle
    resumed = run(cfg, Blobs())
    for name, value in straight["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[name], value), name


def test_checkpoint_from_before_nesterov_loads():
    net = small_net()
    opt = Multirate(partition.layerwise(net, ["4"]), lr=0.1, k=3, momentum=0.9)
    train(net, opt, batches(n=2))
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["nesterov"]
    opt2 = Multirate(partition.layerwise(net, ["4"]), lr=0.1, k=3, momentum=0.9)
    opt2.load_state_dict(old)
    assert all(group["nesterov"] is False for group in opt2.param_groups)
    train(net, opt2, batches(n=2))


@pytest.mark.parametrize("base,kwargs,message", [
    ("sgd", dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
    ("sgd", dict(rate="random", slow_fraction=0.0, linear_drift=False), "slow_fraction"),
    ("sgd", dict(k=0), "k must be a positive integer"),
    ("sgd", dict(nesterov=True), "nesterov must be False when momentum = 0"),
    ("adamw", dict(betas=[0.9, 1.0]), "betas"),
    ("adamw", dict(rate="random"), "random subgroups need the SGD"),
    ("sgd", dict(betas=(0.9, 0.99)), "unknown hyperparameter"),
    ("lion", dict(), "base must be one of"),
])
def test_check_hyperparameters_without_a_model(base, kwargs, message):
    from multirate import check_hyperparameters

    with pytest.raises(ValueError, match=message):
        check_hyperparameters(base, **kwargs)


def test_check_hyperparameters_accepts_what_the_optimizers_accept():
    from multirate import check_hyperparameters

    check_hyperparameters("sgd", k=5, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    check_hyperparameters("sgd", rate="random", slow_fraction=0.2, linear_drift=False, k=2)
    check_hyperparameters("sgd", rate="split", slow_fraction=0.5, k=25)
    check_hyperparameters("adamw", k=3, betas=[0.8, 0.99], eps=1e-6, linear_drift=False)


# ------------------------------------------------------------------------ a third base: Adam (coupled L2)

# (k = 1: test_adam_bases_k1_equal_torch above.)

@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("drift", [True, False])
def test_adam_matches_definition(k, drift, foreach):
    grad_fn = quadratic_grads(seed=20 + k)
    (s0, f0), (s, f) = run_scalar_pair(MultirateAdam, grad_fn, k, 4 * k, lr=0.05, betas=(0.9, 0.99),
                                       eps=1e-8, weight_decay=0.1, linear_drift=drift, foreach=foreach)
    ref_s, ref_f = cycle_reference(s0, f0, grad_fn, h=0.05, k=k, cycles=4, drift=drift,
                                   base=adam_base((0.9, 0.99), eps=1e-8, wd=0.1))
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(f, ref_f, rtol=0, atol=1e-12)
    assert not torch.allclose(s, s0)


def test_adam_state_dict_lockstep():
    assert_lockstep(lambda net: MultirateAdam(partition.layerwise(net, ["4"]), k=3, lr=0.01,
                                              weight_decay=0.1), 5, dtype=torch.float64)


def test_adamw_unused_slow_parameter_takes_no_drift():
    slow = nn.Parameter(torch.ones(1, dtype=torch.float64))
    fast = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = MultirateAdamW([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}],
                         lr=0.3, k=3)
    slow.grad, fast.grad = torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    opt.step()
    for _ in range(2):  # the rest of the cycle: it drifts
        slow.grad, fast.grad = None, torch.ones(1, dtype=torch.float64)
        opt.step()
    before = slow.item()
    for _ in range(3):  # a cycle without a slow gradient: it stays
        slow.grad, fast.grad = None, torch.ones(1, dtype=torch.float64)
        opt.step()
        assert slow.item() == before

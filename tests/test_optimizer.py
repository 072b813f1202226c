import copy

import pytest
import torch
from torch import nn

from multirate import Multirate, partition


def scalar_pair(**kwargs):
    """A slow and a fast scalar parameter, both starting at 1, in float64."""
    slow = nn.Parameter(torch.ones(1, dtype=torch.float64))
    fast = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = Multirate([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}], **kwargs)
    return slow, fast, opt


def run_given_grads(slow, fast, opt, slow_grads, fast_grads):
    """Step with prescribed gradients; returns the (slow, fast) iterates after each step."""
    iterates = []
    for g_s, g_f in zip(slow_grads, fast_grads):
        slow.grad = torch.tensor([g_s], dtype=torch.float64)
        fast.grad = torch.tensor([g_f], dtype=torch.float64)
        opt.step()
        iterates.append((slow.item(), fast.item()))
    return iterates


# Worked by hand: theta_0 = 1, momentum 0.5, weight decay 0.1, fast step size h/k = 0.2.
# Fast part, both k: p = 1.1, theta = 0.78; p = 0.55 + 2.078 = 2.628, theta = 0.2544;
# p = 1.314 + 3.02544 = 4.33944, theta = -0.613488; p = 2.16972 + 3.9386512, theta = -1.83516224.
FAST_BY_HAND = [0.78, 0.2544, -0.613488, -1.83516224]
# Slow gradients on steps that are not slow steps (100) must be ignored.
HAND_CASES = [
    # k = 3, h = 0.6. Slow step 1: p_S = 1.1. Slow step 4: p_S = 0.55 + (2 + 0.1 * 0.34) = 2.584.
    (3, 0.6, True, [1, 100, 100, 2], [0.78, 0.56, 0.34, -0.1768]),
    (3, 0.6, False, [1, 100, 100, 2], [0.34, 0.34, 0.34, -1.2104]),
    # k = 2, h = 0.4. Slow step 3: p_S = 0.55 + (2 + 0.1 * 0.56) = 2.606.
    (2, 0.4, True, [1, 100, 2, 100], [0.78, 0.56, 0.0388, -0.4824]),
    (2, 0.4, False, [1, 100, 2, 100], [0.56, 0.56, -0.4824, -0.4824]),
]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("k,h,drift,slow_grads,slow_by_hand", HAND_CASES)
def test_iterates_match_hand_computation(k, h, drift, slow_grads, slow_by_hand, foreach):
    slow, fast, opt = scalar_pair(lr=h, k=k, momentum=0.5, weight_decay=0.1, linear_drift=drift,
                                  foreach=foreach)
    iterates = run_given_grads(slow, fast, opt, slow_grads, [1, 2, 3, 4])
    assert [s for s, _ in iterates] == pytest.approx(slow_by_hand, abs=1e-12)
    assert [f for _, f in iterates] == pytest.approx(FAST_BY_HAND, abs=1e-12)


def algorithm_1(theta_s, theta_f, grad_fn, h, k, mu, wd, cycles, drift):
    """Algorithm 1 of the paper written in cycle form, as a reference (grad_fn(t, s, f) -> g_s, g_f).

    Without drift the slow jump comes after the cycle's first gradient evaluation, so that one
    backward pass on the cycle's first minibatch serves both parts (the optimizer's contract).
    """
    p_s, p_f, t = torch.zeros_like(theta_s), torch.zeros_like(theta_f), 0
    for _ in range(cycles):
        g_s, _ = grad_fn(t, theta_s, theta_f)
        p_s = mu * p_s + g_s + wd * theta_s
        for i in range(k):
            _, g_f = grad_fn(t, theta_s, theta_f)
            p_f = mu * p_f + g_f + wd * theta_f
            theta_f = theta_f - h / k * p_f
            if drift:
                theta_s = theta_s - h / k * p_s
            elif i == 0:
                theta_s = theta_s - h * p_s
            t += 1
    return theta_s, theta_f


def quadratic_grads(seed, n=5):
    """Minibatch losses 0.5 * |A_t [s; f] - b_t|^2 with a fresh A_t, b_t per step t."""
    g = torch.Generator().manual_seed(seed)
    mats = [(torch.randn(2 * n, 2 * n, generator=g, dtype=torch.float64) / n,
             torch.randn(2 * n, generator=g, dtype=torch.float64)) for _ in range(100)]

    def grad_fn(t, s, f):
        a, b = mats[t]
        grad = a.T @ (a @ torch.cat([s, f]) - b)
        return grad[:n], grad[n:]
    return grad_fn


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("drift", [True, False])
def test_matches_algorithm_1(k, drift):
    grad_fn = quadratic_grads(seed=k)
    s0, f0 = torch.linspace(-1, 1, 5, dtype=torch.float64), torch.linspace(2, 0, 5, dtype=torch.float64)
    ref_s, ref_f = algorithm_1(s0, f0, grad_fn, h=0.3, k=k, mu=0.9, wd=0.01, cycles=4, drift=drift)

    slow, fast = nn.Parameter(s0.clone()), nn.Parameter(f0.clone())
    opt = Multirate([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}],
                    lr=0.3, k=k, momentum=0.9, weight_decay=0.01, linear_drift=drift)
    for t in range(4 * k):
        slow.grad, fast.grad = grad_fn(t, slow.detach(), fast.detach())
        opt.step()
    torch.testing.assert_close(slow.detach(), ref_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.detach(), ref_f, rtol=0, atol=1e-12)


def small_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    return net.to(dtype)


def batches(n=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def train(model, opt, data, closure_per_step=None):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if closure_per_step:
            closure_per_step()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("drift", [True, False])
def test_k1_equals_sgd(foreach, drift):
    data = batches()
    net_a, net_b = small_net(), small_net()
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3, foreach=foreach)
    mr = Multirate(partition.layerwise(net_b, ["4"]), lr=0.1, k=1, momentum=0.9, weight_decay=5e-3,
                   linear_drift=drift, foreach=foreach)
    for batch in data:
        train(net_a, sgd, [batch])
        train(net_b, mr, [batch])
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            assert torch.equal(a, b)


def test_k1_random_subgroups_equals_sgd():
    data = batches()
    net_a, net_b = small_net(), small_net()
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    mr = Multirate(partition.random_subgroups(net_b, 0.5), lr=0.1, k=1, momentum=0.9, weight_decay=5e-3)
    train(net_a, sgd, data)
    train(net_b, mr, data)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("groups", ["layerwise", "random"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_foreach_equals_for_loop(groups, momentum):
    data = batches()
    nets = [small_net(), small_net()]
    opts = []
    for net, foreach in zip(nets, [True, False]):
        parts = (partition.layerwise(net, ["2", "4"]) if groups == "layerwise"
                 else partition.random_subgroups(net, 0.3, seed=1))
        opts.append(Multirate(parts, lr=0.2, k=3, momentum=momentum, weight_decay=1e-3, foreach=foreach))
    for net, opt in zip(nets, opts):
        train(net, opt, data)
    for a, b in zip(*(net.parameters() for net in nets)):
        assert torch.equal(a, b)


def test_is_slow_step_cycle():
    _, _, opt = scalar_pair(lr=0.1, k=3)
    pattern = []
    for _ in range(7):
        pattern.append(opt.is_slow_step)
        opt.step()
    assert pattern == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("groups", ["layerwise", "random"])
@pytest.mark.parametrize("steps_before_save", [4, 5, 6])
def test_state_dict_lockstep(groups, steps_before_save):
    def make(net):
        parts = (partition.layerwise(net, ["4"]) if groups == "layerwise"
                 else partition.random_subgroups(net, 0.4, seed=3))
        drift = groups == "layerwise"
        return Multirate(parts, lr=0.1, k=3, momentum=0.9, weight_decay=1e-3, linear_drift=drift)

    assert_lockstep(make, steps_before_save)


def assert_lockstep(make_optimizer, steps_before_save, dtype=torch.float32):
    """Train, save, load into a fresh copy, then step both and compare at every step."""
    data = batches(n=20, dtype=dtype)
    net = small_net(dtype=dtype)
    opt = make_optimizer(net)
    train(net, opt, data[:steps_before_save])

    net2 = small_net(seed=1, dtype=dtype)
    net2.load_state_dict(copy.deepcopy(net.state_dict()))
    opt2 = make_optimizer(net2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.is_slow_step == opt.is_slow_step
    for batch in data[steps_before_save:]:
        train(net, opt, [batch])
        train(net2, opt2, [batch])
        for a, b in zip(net.parameters(), net2.parameters()):
            assert torch.equal(a, b)


def test_scheduler_scales_both_rates():
    slow, fast, opt = scalar_pair(lr=0.6, k=3, momentum=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run_given_grads(slow, fast, opt, [1, 0, 0], [0, 0, 0])  # one cycle at h = 0.6: slow moves 0.6
    assert slow.item() == pytest.approx(0.4)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == pytest.approx(0.3)
    before = (slow.item(), fast.item())
    run_given_grads(slow, fast, opt, [1], [1])
    assert fast.item() == pytest.approx(before[1] - 0.3 / 3)  # fast step size follows lr / k
    assert slow.item() == pytest.approx(before[0] - 0.3 / 3)  # and so does the slow drift
    run_given_grads(slow, fast, opt, [0, 0], [0, 0])
    assert slow.item() == pytest.approx(before[0] - 0.3)


def test_random_subgroups_zero_and_restore():
    w = nn.Parameter(torch.arange(1.0, 101.0).reshape(10, 10))
    opt = Multirate([{"params": [w], "rate": "random", "slow_fraction": 0.3, "linear_drift": False}],
                    lr=0.3, k=3)
    start = w.detach().clone()
    w.grad = torch.ones_like(w)
    opt.step()  # slow step, no mask yet: every entry takes a fast step of h/k = 0.1
    mask = opt.state[w]["mask"]
    assert 10 < mask.sum() < 50
    after_first = start - 0.1
    assert torch.all(w[mask] == 0)  # slow entries are out of the model during fast steps
    torch.testing.assert_close(w[~mask], after_first[~mask])
    for _ in range(2):  # fast steps: a gradient on the zeroed entries must be ignored
        w.grad = torch.ones_like(w)
        opt.step()
    # Restored before the next slow step, untouched by the fast steps.
    torch.testing.assert_close(w[mask], after_first[mask])
    torch.testing.assert_close(w[~mask], (after_first - 0.2)[~mask])
    before = w.detach().clone()
    w.grad = torch.full_like(w, 2.0)
    opt.step()  # slow step: last cycle's slow entries move h * g = 0.6, the others h / k * g = 0.2
    new_mask = opt.state[w]["mask"]
    expected = torch.where(mask, before - 0.6, before - 0.2)
    torch.testing.assert_close(w[~new_mask], expected[~new_mask])
    with opt.full_weights():
        torch.testing.assert_close(w.detach(), expected)
    assert torch.all(w[new_mask] == 0)
    assert not torch.equal(mask, new_mask)


def test_random_masks_reproducible_from_seed():
    def masks(seed):
        w = nn.Parameter(torch.ones(50, 50))
        opt = Multirate([{"params": [w], "rate": "random", "linear_drift": False}], lr=0.1, k=2, seed=seed,
                        slow_fraction=0.25)
        drawn = []
        for _ in range(6):
            w.grad = torch.zeros_like(w)
            opt.step()
            if opt.state[w]["mask"] is not None and (not drawn or drawn[-1] is not opt.state[w]["mask"]):
                drawn.append(opt.state[w]["mask"])
        return drawn

    first, again, other = masks(0), masks(0), masks(1)
    assert len(first) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert abs(first[0].float().mean().item() - 0.25) < 0.05


def test_added_group_joins_the_cycle():
    slow, fast, opt = scalar_pair(lr=0.1, k=3)
    opt.step()
    extra = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "rate": "fast"})
    assert opt.param_groups[-1]["step"] == 1 and not opt.is_slow_step


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=0), "k must be a positive integer"),
    (dict(k=2.5), "k must be a positive integer"),
    (dict(k=True), "k must be a positive integer"),
    (dict(lr=-0.1), "lr must be non-negative"),
    (dict(weight_decay=-1e-4), "weight_decay must be non-negative"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scalar_pair(**kwargs)


def test_bad_groups():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="rate must be one of"):
        Multirate([{"params": [a], "rate": "medium"}])
    with pytest.raises(ValueError, match="rate must be one of"):
        Multirate([a])  # no rate given
    with pytest.raises(ValueError, match="needs a param group with rate 'fast'"):
        Multirate([{"params": [a], "rate": "slow"}])
    with pytest.raises(ValueError, match="more than one parameter group"):
        Multirate([{"params": [a], "rate": "slow"}, {"params": [a, b], "rate": "fast"}])
    with pytest.raises(ValueError, match="k must be the same"):
        Multirate([{"params": [a], "rate": "slow", "k": 2}, {"params": [b], "rate": "fast"}], k=3)
    with pytest.raises(ValueError, match="slow_fraction"):
        Multirate([{"params": [a], "rate": "random", "linear_drift": False, "slow_fraction": 1.0}])
    with pytest.raises(ValueError, match="set linear_drift=False"):
        Multirate([{"params": [a], "rate": "random"}])

import copy

import pytest
import torch
from torch import nn

from multirate import Multirate, partition
from tests.helpers import algorithm_1, assert_lockstep, batches, quadratic_grads, small_net, train


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
    slow, fast, opt = scalar_pair(lr=0.1, k=3)
    pattern = []
    for _ in range(7):
        pattern.append(opt.is_slow_step)
        slow.grad, fast.grad = torch.zeros_like(slow), torch.zeros_like(fast)  # a step needs gradients
        opt.step()
    assert pattern == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("groups", ["layerwise", "random", "random_zero_every_step"])
@pytest.mark.parametrize("steps_before_save", [4, 5, 6])
def test_state_dict_lockstep(groups, steps_before_save):
    def make(net):
        parts = (partition.layerwise(net, ["4"]) if groups == "layerwise"
                 else partition.random_subgroups(net, 0.4, seed=3,
                                                 zero_slow_every_step=groups == "random_zero_every_step"))
        drift = groups == "layerwise"
        return Multirate(parts, lr=0.1, k=3, momentum=0.9, weight_decay=1e-3, linear_drift=drift)

    assert_lockstep(make, steps_before_save)


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


@pytest.mark.parametrize("zero_slow_every_step", [False, True])
def test_zero_slow_every_step_takes_the_slow_gradient_without_them(zero_slow_every_step):
    """By default the slow entries are zero on the cycle's k - 1 fast steps and back for the slow
    step, whose gradient they consume; with zero_slow_every_step they stay zero on all k steps,
    that gradient included, and come back only inside the slow step's update."""
    w = nn.Parameter(torch.arange(1.0, 101.0).reshape(10, 10))
    start = w.detach().clone()
    opt = Multirate([{"params": [w], "rate": "random", "slow_fraction": 0.3, "linear_drift": False,
                      "zero_slow_every_step": zero_slow_every_step}], lr=0.3, k=3)
    zero = []
    for _ in range(3):  # one cycle; the loss is |w|^2 / 2, so the gradient is w as the model holds it
        w.grad = w.detach().clone()
        opt.step()
        zero.append(bool(torch.all(w[opt.state[w]["mask"]] == 0)))
    mask = opt.state[w]["mask"]
    assert zero == [True, True, zero_slow_every_step]
    with opt.full_weights():  # the slow entries' values, kept aside: 0.9 w after the first step
        torch.testing.assert_close(w[mask], 0.9 * start[mask])
    assert torch.all(w[mask] == 0) == zero_slow_every_step
    w.grad = w.detach().clone()
    opt.step()  # slow step: last cycle's slow entries consume h * g at once
    with opt.full_weights():
        # Default: g = 0.9 w0 at the full network, so 0.9 w0 - 0.3 * 0.9 w0 = 0.63 w0. Literal: the
        # gradient was taken with them at zero, g = 0: they come back where they were.
        expected = 0.63 * start[mask] if not zero_slow_every_step else 0.9 * start[mask]
        torch.testing.assert_close(w[mask], expected)
        torch.testing.assert_close(w[~mask], 0.9**4 * start[~mask])  # h/k = 0.1 on all four steps
    assert torch.all(w[opt.state[w]["mask"]] == 0)  # the next subset is out of the model in both


def test_zero_slow_every_step_is_a_hyperparameter():
    net = small_net()
    opt = Multirate(partition.random_subgroups(net, 0.3, zero_slow_every_step=True), lr=0.1, k=3)
    assert [g["zero_slow_every_step"] for g in opt.state_dict()["param_groups"]] == [True, False]
    default = Multirate(partition.random_subgroups(net, 0.3), lr=0.1, k=3)
    assert default.param_groups[0]["zero_slow_every_step"] is False
    with pytest.raises(ValueError, match="zero_slow_every_step must be True or False"):
        Multirate(partition.random_subgroups(net, 0.3), lr=0.1, k=3, zero_slow_every_step="yes")


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
    slow.grad, fast.grad = torch.zeros_like(slow), torch.zeros_like(fast)  # a step needs gradients
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
    with pytest.raises(ValueError, match="linear_drift must be False in a .random. group"):
        Multirate([{"params": [a], "rate": "random"}])


# ----------------------------------------------------------------------------- the masks' distribution

@pytest.mark.parametrize("fraction", [0.2, 0.5, 1 / 3, 0.5 / 256, 255.5 / 256])
def test_bernoulli_has_exactly_the_fraction_in_expectation(fraction):
    # 0.5/256 and 255.5/256 are decided by the second byte on the 1/256 of entries that tie on the
    # first: a draw that ignored ties would give 0 or 1/256 (or 255/256 and 1).
    from multirate.masks import bernoulli

    n = 2_000_000
    draws = bernoulli(n, fraction, torch.Generator().manual_seed(7), device="cpu")
    assert draws.dtype == torch.bool and draws.shape == (n,)
    sd = (fraction * (1 - fraction) / n) ** 0.5
    assert abs(draws.double().mean().item() - fraction) < 5 * sd


def test_bernoulli_is_seeded_and_resumable():
    from multirate.masks import bernoulli

    def draw(g):
        return bernoulli(1000, 0.3, g, device="cpu")

    g = torch.Generator().manual_seed(3)
    first = draw(g)
    state = g.get_state()
    second = draw(g)
    assert torch.equal(first, draw(torch.Generator().manual_seed(3)))
    assert torch.equal(second, draw(torch.Generator().set_state(state)))
    assert not torch.equal(first, second)


def test_random_masks_are_independent_draws_of_the_fraction():
    w = nn.Parameter(torch.ones(100, 100))
    opt = Multirate([{"params": [w], "rate": "random", "linear_drift": False}], lr=0.1, k=2, seed=0,
                    slow_fraction=0.2)
    masks = []
    for _ in range(20):  # 10 cycles
        w.grad = torch.zeros_like(w)
        opt.step()
        if opt.is_slow_step is False:  # just drawn
            masks.append(opt.state[w]["mask"].clone())
    masks = torch.stack(masks).double()
    assert len(masks) == 10
    n = masks.numel()
    assert abs(masks.mean().item() - 0.2) < 5 * (0.2 * 0.8 / n) ** 0.5
    overlap = (masks[1:] * masks[:-1]).mean().item()  # consecutive cycles independent: 0.2 ** 2
    assert abs(overlap - 0.04) < 5 * (0.04 * 0.96 / (n * 0.9)) ** 0.5
    # Pinned: the masks of seed 0 (a change in how masks are drawn changes every random-subgroups run).
    assert int(masks[0].sum()) == SEED0_FIRST_MASK_SUM


SEED0_FIRST_MASK_SUM = 1963


# ----------------------------------------------------------------------------- strict: no gradient, no step

def test_unused_parameters_k1_equal_sgd_bit_for_bit():
    data = batches()
    net_a, net_b = small_net(), small_net()
    for net in (net_a, net_b):  # two extra parameters that the loss never uses
        net.unused_slow = nn.Parameter(torch.ones(3))
        net.unused_fast = nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD(net_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    slow = [p for n, p in net_b.named_parameters() if not n.startswith(("4", "unused_fast"))]
    fast = [*net_b[4].parameters(), net_b.unused_fast]
    mr = Multirate([{"params": slow, "rate": "slow"}, {"params": fast, "rate": "fast"}], lr=0.1, k=1,
                   momentum=0.9, weight_decay=5e-3)
    # The extra parameters get a gradient on the first step only, then none.
    for t, batch in enumerate(data):
        for net, opt in ((net_a, sgd), (net_b, mr)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(batch[0]), batch[1])
            if t == 0:
                loss = loss + net.unused_slow.sum() + net.unused_fast.sum()
            loss.backward()
            opt.step()
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            assert torch.equal(a, b)
    assert torch.equal(net_b.unused_slow, torch.full((3,), 1 - 0.1 * (1 + 5e-3)))


@pytest.mark.parametrize("drift", [True, False])
def test_slow_parameter_without_gradient_on_its_slow_step_does_not_move(drift):
    slow, fast, opt = scalar_pair(lr=0.6, k=3, momentum=0.5, linear_drift=drift)
    run_given_grads(slow, fast, opt, [1, 0, 0], [1, 1, 1])  # one cycle: slow has momentum now
    before = slow.item()
    for _ in range(6):  # two cycles without a slow gradient: no drift, no jump
        slow.grad, fast.grad = None, torch.ones(1, dtype=torch.float64)
        opt.step()
        assert slow.item() == before
    assert fast.item() != 1
    run_given_grads(slow, fast, opt, [1], [1])  # a gradient again: its momentum resumes (0.5 * 1 + 1)
    assert slow.item() == pytest.approx(before - (0.2 if drift else 0.6) * 1.5)


def test_fast_parameter_without_gradient_takes_no_step():
    slow, fast, opt = scalar_pair(lr=0.6, k=3, momentum=0.5)
    run_given_grads(slow, fast, opt, [1], [1])
    before = fast.item()
    slow.grad, fast.grad = None, None
    extra = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "rate": "fast"})
    extra.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    assert fast.item() == before and extra.item() != 1


@pytest.mark.parametrize("groups", ["layerwise", "random"])
def test_step_without_gradients_changes_nothing(groups):
    net = small_net()
    parts = (partition.layerwise(net, ["4"]) if groups == "layerwise"
             else partition.random_subgroups(net, 0.4, seed=3))
    opt = Multirate(parts, lr=0.1, k=3, momentum=0.9, linear_drift=groups == "layerwise")
    train(net, opt, batches(n=2))  # mid-cycle, slow parameters drifting (or zeroed)
    before = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    opt.zero_grad(set_to_none=True)
    opt.step()
    assert all(torch.equal(v, before[0][n]) for n, v in net.state_dict().items())
    assert [g["step"] for g in opt.param_groups] == [g["step"] for g in before[1]["param_groups"]]


def test_load_state_dict_refuses_another_k():
    _, _, opt3 = scalar_pair(lr=0.1, k=3)
    _, _, opt5 = scalar_pair(lr=0.1, k=5)
    with pytest.raises(ValueError, match="k=3.*k=5"):
        opt5.load_state_dict(opt3.state_dict())


@pytest.mark.parametrize("groups", ["layerwise", "random"])
def test_state_dict_round_trip_is_identical(groups):
    net = small_net()
    def make():
        if groups == "layerwise":
            return Multirate(partition.layerwise(net, ["4"]), lr=0.1, k=3, momentum=0.9)
        return Multirate(partition.random_subgroups(net, 0.4), lr=0.1, k=3, momentum=0.9, linear_drift=False)

    opt = make()
    train(net, opt, batches(n=4))
    saved = copy.deepcopy(opt.state_dict())
    opt2 = make()
    opt2.load_state_dict(copy.deepcopy(saved))
    again = opt2.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    assert again["state"].keys() == saved["state"].keys()
    for i, s in saved["state"].items():
        assert again["state"][i].keys() == s.keys()
        for key, value in s.items():
            new = again["state"][i][key]
            assert torch.equal(new, value) if torch.is_tensor(value) else new == value

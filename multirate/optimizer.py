"""Multirate SGD: parameters trained on a fast and a slow time scale (Vlaar & Leimkuhler, ICML 2022)."""

from collections import defaultdict
from contextlib import contextmanager
from itertools import chain
from numbers import Integral

import torch
from torch import Tensor
from torch.optim import Optimizer

RATES = ("slow", "fast", "random")


class Multirate(Optimizer):
    r"""Multirate heavy-ball SGD, one ``step()`` per minibatch.

    Every param group has a ``rate``: ``"fast"``, ``"slow"`` or ``"random"``. With slow step size
    :math:`h` (``lr``), cycle length :math:`k`, momentum :math:`\mu`, weight decay :math:`\lambda`
    and step counter :math:`t = 0, 1, 2, \dots`, step :math:`t` is a *slow step* when
    :math:`t \bmod k = 0` (calls 1, k+1, 2k+1, ...). With :math:`g = \nabla L_t` the gradient of the
    minibatch loss at the current parameters:

    .. math::
        \text{fast, every step:}\quad
            p_F &\leftarrow \mu p_F + g_F + \lambda\theta_F, \qquad
            \theta_F \leftarrow \theta_F - \tfrac{h}{k} p_F \\
        \text{slow, slow steps only:}\quad
            p_S &\leftarrow \mu p_S + g_S + \lambda\theta_S \\
        \text{slow, with linear drift, every step:}\quad
            \theta_S &\leftarrow \theta_S - \tfrac{h}{k} p_S \\
        \text{slow, without linear drift, slow steps only:}\quad
            \theta_S &\leftarrow \theta_S - h\, p_S

    With ``nesterov=True`` (as in ``torch.optim.SGD``) every parameter moves along
    :math:`d + \mu p` instead of :math:`p`, where :math:`d = g + \lambda\theta` is the decayed
    gradient just folded into :math:`p`: the fast part on every step, the slow part along the
    direction :math:`d_S + \mu p_S` of its slow step, frozen for the cycle's drift or taken in one
    jump.

    This is Algorithm 1 of the paper with the slow gradient and the cycle's first fast gradient
    taken on the same minibatch, so a cycle of k minibatches needs one slow gradient. Slow gradients
    present on fast steps are ignored: ``is_slow_step`` tells the caller whether the next ``step()``
    needs them (:class:`multirate.TrainStep` uses it to skip their computation). Over one cycle the
    slow parameters move :math:`h p_S` with or without drift. Momentum follows PyTorch (no
    dampening, :math:`p \leftarrow d` on first use, which equals starting from :math:`p = 0`); the
    weight decay is coupled L2, applied when a gradient is consumed. With ``k=1`` the iterates equal
    ``torch.optim.SGD(lr, momentum, weight_decay, nesterov=nesterov)``.

    A ``"random"`` group is the paper's random-subgroups regulariser: on each slow step a fresh
    random fraction ``slow_fraction`` of its entries is drawn (per-tensor ``torch.Generator`` seeded
    from ``seed``, its state kept in ``state``). During the cycle's k-1 fast steps those entries are
    zero in the model and frozen (value and momentum kept aside); the others take fast steps. At the
    next slow step they are restored, consume the gradient taken at the full network and move
    :math:`h p` at once, while the other entries move :math:`\tfrac{h}{k} p`; then the next subset
    is drawn. Random groups take no linear drift.

    Args:
        params: param groups, each a dict with ``"params"`` and ``"rate"``; any hyperparameter
            below may be set per group.
        lr: slow step size h; the fast step size is ``lr / k`` (LR schedulers scale both).
        k: fast steps per slow step (a positive integer, the same for every group).
        momentum: heavy-ball momentum in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: coupled L2 penalty.
        linear_drift: slow parameters move with their frozen momentum on every step.
        slow_fraction: fraction of entries of a ``"random"`` group that are slow in each cycle.
        seed: seed for the masks of ``"random"`` groups.
        foreach: use the multi-tensor ``torch._foreach_*`` path (default) or a for-loop; both give
            identical iterates.
    """

    def __init__(self, params, lr=1e-3, k=1, momentum=0.0, weight_decay=0.0, linear_drift=True,
                 slow_fraction=0.5, seed=0, foreach=None, nesterov=False):
        defaults = dict(rate=None, lr=lr, k=k, momentum=momentum, weight_decay=weight_decay,
                        linear_drift=linear_drift, slow_fraction=slow_fraction, seed=seed,
                        foreach=foreach, step=0, nesterov=nesterov)
        super().__init__(params, defaults)
        if not any(group["rate"] in ("fast", "random") for group in self.param_groups):
            raise ValueError("Multirate needs a param group with rate 'fast' (or 'random'); "
                             "with only slow parameters nothing would take fast steps")

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group, index=len(self.param_groups) - 1)
        first = self.param_groups[0]
        if group["k"] != first["k"]:
            raise ValueError(f"k must be the same in every param group: got {group['k']} "
                             f"and {first['k']}")
        # A group added mid-training joins the running cycle.
        group["step"] = first["step"]

    def _check_group(self, group, index):
        """Raise ValueError for an impossible hyperparameter (subclasses with another base override it)."""
        _check_group(group, index)

    def load_state_dict(self, state_dict):
        # torch casts every state tensor to its parameter's dtype: keep masks and RNG states exact.
        state_dict = {**state_dict, "state": {i: dict(s) for i, s in state_dict["state"].items()}}
        exact = {i: {key: s.pop(key) for key in ("mask", "rng_state") if key in s}
                 for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint from before a hyperparameter existed
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        params = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        for i, entries in exact.items():
            for key, value in entries.items():
                self.state[params[i]][key] = value.to(params[i].device) if key == "mask" else value.clone()

    @property
    def is_slow_step(self) -> bool:
        """Whether the next ``step()`` consumes slow gradients (calls 1, k+1, 2k+1, ...)."""
        group = self.param_groups[0]
        return group["step"] % group["k"] == 0

    @contextmanager
    def full_weights(self):
        """Put the zeroed entries of random groups back for a while, e.g. to evaluate mid-cycle."""
        zeroed = not self.is_slow_step
        with torch.no_grad():
            for group in self.param_groups:
                if group["rate"] == "random":
                    _set_masked(self.state, group, zeroed=False)
        try:
            yield
        finally:
            with torch.no_grad():
                for group in self.param_groups:
                    if group["rate"] == "random":
                        _set_masked(self.state, group, zeroed=zeroed)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one multirate step on the current gradients (one minibatch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        slow_step = self.is_slow_step
        for group in self.param_groups:
            if group["rate"] == "random":
                self._random_step(group, slow_step)
            else:
                self._layer_step(group, slow_step)
            group["step"] += 1
        next_slow = self.is_slow_step
        for group in self.param_groups:
            if group["rate"] == "random":
                _set_masked(self.state, group, zeroed=not next_slow)
        return loss

    def _layer_step(self, group, slow_step):
        lr, k, foreach = group["lr"], group["k"], group["foreach"] is not False
        fast = group["rate"] == "fast"
        if fast or slow_step:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            # A slow buffer is kept even without momentum: it is the frozen drift direction.
            keep = group["momentum"] != 0 or not fast
            directions = consume(params, [p.grad for p in params], bufs, momentum=group["momentum"],
                                 weight_decay=group["weight_decay"], keep_buffers=keep,
                                 foreach=foreach, nesterov=group["nesterov"])
            if keep:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
            if not fast and group["nesterov"]:
                # The Nesterov direction is not the buffer: freeze it for the drift.
                for p, d in zip(params, directions):
                    self.state[p]["nesterov_direction"] = d
        if fast:
            move(params, directions, lr / k, foreach=foreach)
        elif group["linear_drift"]:
            key = "nesterov_direction" if group["nesterov"] else "momentum_buffer"
            drifting = [p for p in group["params"] if key in self.state[p]]
            move(drifting, [self.state[p][key] for p in drifting], lr / k, foreach=foreach)
        elif slow_step:
            move(params, directions, lr, foreach=foreach)

    def _random_step(self, group, slow_step):
        lr, k, momentum, weight_decay = group["lr"], group["k"], group["momentum"], group["weight_decay"]
        for index, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            d = p.grad.add(p, alpha=weight_decay) if weight_decay != 0 else p.grad
            buf = state.get("momentum_buffer")
            if momentum == 0:
                direction = d
            else:
                direction = d.clone() if buf is None else buf * momentum + d
            update = d.add(direction, alpha=momentum) if group["nesterov"] else direction
            mask = state.get("mask")  # the slow entries of the cycle that ends here; None at first
            # Masks enter as 0/1 floats: multiplying by 0 or 1 is exact, and it is several times
            # faster than torch.where on a bool mask on CPU.
            slow = mask.to(p.dtype) if mask is not None else None
            if slow_step and slow is not None:
                p.sub_(update * (slow * lr + (1 - slow) * (lr / k)))  # entry-wise h or h/k
            elif slow_step or slow is None:  # no mask: the first cycle, or no gradient on its slow step
                p.add_(update, alpha=-lr / k)
            else:
                # Slow entries sit at zero: their gradient is ignored and their momentum frozen.
                fast = 1 - slow
                p.add_(update * fast, alpha=-lr / k)
                if momentum != 0:
                    direction = (direction * fast).addcmul_(buf, slow)
            if slow_step and k > 1:
                state["mask"] = _draw_mask(state, p, group["slow_fraction"], group["seed"] + index)
            if momentum != 0:
                state["momentum_buffer"] = direction


def _draw_mask(state, p, fraction, seed) -> Tensor:
    generator = torch.Generator(device=p.device)
    if "rng_state" in state:
        generator.set_state(state["rng_state"].cpu())
    else:
        generator.manual_seed(seed)
    mask = torch.rand(p.shape, generator=generator, device=p.device) < fraction
    state["rng_state"] = generator.get_state()
    return mask


def _set_masked(state, group, zeroed):
    """Zero a random group's slow entries (keeping their values aside, zero elsewhere) or put them
    back. Float 0/1 products rather than indexing: exact, and no compaction of the entries."""
    for p in group["params"]:
        s = state[p]
        if "mask" not in s:
            continue
        if zeroed and "stash" not in s:
            slow = s["mask"].to(p.dtype)
            s["stash"] = p * slow
            p.mul_(1 - slow)
        elif not zeroed and "stash" in s:
            stash = s.pop("stash")
            if stash.shape == p.shape:
                p.add_(stash)  # p is zero where the stash is not, and the reverse
            else:  # a checkpoint that kept only the slow entries
                p.masked_scatter_(s["mask"], stash)


def consume(params, grads, momentum_buffer_list, *, momentum, weight_decay, keep_buffers, foreach,
            nesterov=False):
    r"""Fold gradients into momentum: :math:`p \leftarrow \mu p + d` with :math:`d = g + \lambda\theta`.

    Buffers are updated in place; a ``None`` entry of ``momentum_buffer_list`` is replaced by a new
    buffer (the first direction). Without ``keep_buffers`` and without momentum the directions are
    the decayed gradients themselves. Returns the directions: the buffers, or with ``nesterov``
    new tensors :math:`d + \mu p`.
    """
    if not params:
        return []
    if not foreach:
        directions = []
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
            if momentum == 0 and not keep_buffers:
                directions.append(d)
                continue
            buf = momentum_buffer_list[i]
            if buf is None or momentum == 0:
                buf = momentum_buffer_list[i] = d.detach().clone()
            else:
                buf.mul_(momentum).add_(d)
            directions.append(d.add(buf, alpha=momentum) if nesterov else buf)
        return directions

    directions = [None] * len(params)
    for indices in _by_device_and_dtype(params):
        ps, gs = [params[i] for i in indices], [grads[i] for i in indices]
        ds = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay != 0 else gs
        if momentum == 0 and not keep_buffers:
            for i, d in zip(indices, ds):
                directions[i] = d
            continue
        old = [j for j, i in enumerate(indices) if momentum != 0 and momentum_buffer_list[i] is not None]
        if old:
            bufs = [momentum_buffer_list[indices[j]] for j in old]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, [ds[j] for j in old])
        old = set(old)
        for j, i in enumerate(indices):
            if j not in old:
                momentum_buffer_list[i] = ds[j].detach().clone()
            directions[i] = momentum_buffer_list[i]
        if nesterov:
            ahead = torch._foreach_add(list(ds), [directions[i] for i in indices], alpha=momentum)
            for i, d in zip(indices, ahead):
                directions[i] = d
    return directions


def move(params, directions, step_size, *, foreach):
    r""":math:`\theta \leftarrow \theta - \eta\, p` for every parameter."""
    if not params:
        return
    if not foreach:
        for p, d in zip(params, directions):
            p.add_(d, alpha=-step_size)
        return
    for indices in _by_device_and_dtype(params):
        torch._foreach_add_([params[i] for i in indices], [directions[i] for i in indices],
                            alpha=-step_size)


def _by_device_and_dtype(tensors):
    """Indices of ``tensors`` grouped so that each group can go to one ``_foreach`` kernel."""
    groups = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups.values()


def _check_group(group, index):
    where = f"param group {index}"
    if group["rate"] not in RATES:
        raise ValueError(f"{where}: rate must be one of {RATES}, got {group['rate']!r}")
    k = group["k"]
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
    if not group["lr"] >= 0:
        raise ValueError(f"{where}: lr must be non-negative, got {group['lr']!r}")
    if not 0 <= group["momentum"] < 1:
        raise ValueError(f"{where}: momentum must be in [0, 1), got {group['momentum']!r}")
    if not group["weight_decay"] >= 0:
        raise ValueError(f"{where}: weight_decay must be non-negative, got {group['weight_decay']!r}")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError(f"{where}: nesterov needs momentum > 0")
    if group["rate"] == "random":
        if not 0 < group["slow_fraction"] < 1:
            raise ValueError(f"{where}: slow_fraction must be in (0, 1), got {group['slow_fraction']!r}")
        if group["linear_drift"]:
            raise ValueError(f"{where}: a 'random' group's slow entries are frozen during fast steps; "
                             "set linear_drift=False for it")

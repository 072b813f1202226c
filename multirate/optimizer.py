"""Multirate SGD: parameters trained on a fast and a slow time scale (Vlaar & Leimkuhler, ICML 2022)."""

import functools
from collections import defaultdict
from contextlib import contextmanager
from fractions import Fraction
from itertools import chain
from numbers import Integral

import torch
from torch import Tensor
from torch.optim import Optimizer

RATES = ("slow", "fast", "random", "split")


class Multirate(Optimizer):
    r"""Multirate heavy-ball SGD, one ``step()`` per minibatch.

    Every param group has a ``rate``: ``"fast"``, ``"slow"``, ``"random"`` or ``"split"``. With slow step size
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

    A ``"random"`` group is the paper's random-subgroups regulariser: on each slow step every entry
    of its tensors is drawn slow with probability exactly ``slow_fraction``, independently (one
    ``torch.Generator`` per group, seeded from ``seed``, its state kept in the first tensor's
    ``state``; see :func:`bernoulli`). During the cycle's k-1 fast steps those entries are zero in
    the model and frozen (value and momentum kept aside); the others take fast steps. At the next
    slow step they are restored, consume the gradient taken at the full network and move
    :math:`h p` at once, while the other entries move :math:`\tfrac{h}{k} p`; then the next subset
    is drawn. Random groups take no linear drift.

    A ``"split"`` group (:func:`multirate.partition.random_split`) is a fixed elementwise split:
    in each tensor exactly ``round(slow_fraction * n)`` entries are slow, drawn once from ``seed``
    (kept in ``state``) and never zeroed; its fast entries are fast parameters and its slow
    entries slow ones, with or without linear drift, as above.

    A parameter whose ``.grad`` is None on the step that would consume it is skipped, as in torch:
    a fast one takes no step, and a slow one neither starts nor continues a drift (nor jumps) for
    that cycle. A ``step()`` without any gradient changes nothing, not even the cycle.

    Args:
        params: param groups, each a dict with ``"params"`` and ``"rate"``; any hyperparameter
            below may be set per group.
        lr: slow step size h; the fast step size is ``lr / k`` (LR schedulers scale both).
        k: fast steps per slow step (a positive integer, the same for every group).
        momentum: heavy-ball momentum in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: coupled L2 penalty.
        linear_drift: slow parameters move with their frozen momentum on every step.
        slow_fraction: fraction of the entries of a ``"random"`` (``"split"``) group that are
            slow in each cycle (for good).
        seed: seed for the masks of ``"random"`` and ``"split"`` groups.
        foreach: use the multi-tensor ``torch._foreach_*`` path (default) or a for-loop; both give
            identical iterates.
    """

    def __init__(self, params, lr=1e-3, k=1, momentum=0.0, weight_decay=0.0, linear_drift=True,
                 slow_fraction=0.5, seed=0, foreach=None, nesterov=False):
        self._setup(params, dict(lr=lr, k=k, momentum=momentum, weight_decay=weight_decay,
                                 linear_drift=linear_drift, slow_fraction=slow_fraction, seed=seed,
                                 foreach=foreach, nesterov=nesterov))

    def _setup(self, params, hyperparameters):
        """The constructor every base shares: its hyperparameters' defaults, then the checks."""
        self._fast_masks = {}  # param -> float masks of its current mask, see _masks
        Optimizer.__init__(self, params, dict(rate=None, step=0, **hyperparameters))
        if not any(group["rate"] in ("fast", "random", "split") for group in self.param_groups):
            raise ValueError(f"{type(self).__name__} needs a param group with rate 'fast' (or 'random', "
                             "'split'); with only slow parameters nothing would take fast steps")

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
        k, saved_k = self.param_groups[0]["k"], state_dict["param_groups"][0].get("k")
        if saved_k is not None and saved_k != k:
            raise ValueError(f"this optimizer state has k={saved_k}, the optimizer k={k}: build the "
                             f"optimizer with k={saved_k} to resume it, or start without the state")
        had_differentiable = "differentiable" in self.defaults
        super().load_state_dict(state_dict)
        if not had_differentiable:  # torch's __setstate__ adds it: keep state_dict() as it was saved
            self.defaults.pop("differentiable", None)
        self._fast_masks = {}
        for group in self.param_groups:  # a checkpoint from before a hyperparameter existed
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        params = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        for i, entries in exact.items():
            for key, value in entries.items():
                self.state[params[i]][key] = value.to(params[i].device) if key == "mask" else value.clone()

    def __setstate__(self, state):  # unpickling or deepcopy: torch pickles only the state
        super().__setstate__(state)
        self._fast_masks = {}

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
                    self._set_masked(group, zeroed=False)
        try:
            yield
        finally:
            with torch.no_grad():
                for group in self.param_groups:
                    if group["rate"] == "random":
                        self._set_masked(group, zeroed=zeroed)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one multirate step on the current gradients (one minibatch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if all(p.grad is None for group in self.param_groups for p in group["params"]):
            return loss  # nothing to consume: no parameter moves and the cycle waits, as with SGD
        slow_step = self.is_slow_step
        for group in self.param_groups:
            if group["rate"] == "random":
                self._random_step(group, slow_step)
            elif group["rate"] == "split":
                self._split_step(group, slow_step)
            else:
                self._layer_step(group, slow_step)
            group["step"] += 1
        next_slow = self.is_slow_step
        for group in self.param_groups:
            if group["rate"] == "random":
                self._set_masked(group, zeroed=not next_slow)
        return loss

    def _layer_step(self, group, slow_step):
        """The cycle of a fast or slow group, for every base: which parameters move, by what, when."""
        lr, k, foreach = group["lr"], group["k"], group["foreach"] is not False
        fast = group["rate"] == "fast"
        if fast or slow_step:  # consume the gradients: the base's directions
            params = [p for p in group["params"] if p.grad is not None]
            directions = self._directions(group, params, slow=not fast, foreach=foreach)
            if not fast:
                _mark_idle(self.state, group["params"])
        if fast:
            move(params, directions, lr / k, foreach=foreach)
        elif group["linear_drift"]:  # every step, along the direction frozen at the slow step
            key = self._frozen_key(group)
            drifting = [p for p in group["params"] if key in self.state[p] and not self.state[p].get("idle")]
            move(drifting, [self.state[p][key] for p in drifting], lr / k, foreach=foreach)
        elif slow_step:
            move(params, directions, lr, foreach=foreach)

    def _directions(self, group, params, *, slow, foreach):
        """The base's directions for ``params`` from their gradients, updating its state (and, for
        a slow group, keeping the direction under ``_frozen_key``). Heavy ball or Nesterov here."""
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        # A slow buffer is kept even without momentum: it is the frozen drift direction.
        keep = group["momentum"] != 0 or slow
        directions = consume(params, [p.grad for p in params], bufs, momentum=group["momentum"],
                             weight_decay=group["weight_decay"], keep_buffers=keep, foreach=foreach,
                             nesterov=group["nesterov"])
        if keep:
            for p, buf in zip(params, bufs):
                self.state[p]["momentum_buffer"] = buf
        if slow and group["nesterov"]:
            # The Nesterov direction is not the buffer: freeze it for the drift.
            for p, d in zip(params, directions):
                self.state[p]["nesterov_direction"] = d
        return directions

    def _frozen_key(self, group):
        """The state key of a slow parameter's direction, frozen for its cycle."""
        return "nesterov_direction" if group["nesterov"] else "momentum_buffer"

    def _random_step(self, group, slow_step):
        lr, k, momentum, weight_decay = group["lr"], group["k"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if slow_step:
            # The full network's gradient: every entry consumes it, as with SGD.
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            directions = consume(params, [p.grad for p in params], bufs, momentum=momentum,
                                 weight_decay=weight_decay, keep_buffers=momentum != 0,
                                 foreach=group["foreach"] is not False, nesterov=group["nesterov"])
            for p, buf, d in zip(params, bufs, directions):
                if momentum != 0:
                    self.state[p]["momentum_buffer"] = buf
                if "mask" in self.state[p]:
                    # Last cycle's slow entries move h, the others h / k (exact: the masks are 0/1).
                    slow, fast, _ = self._masks(p, momentum)
                    p.addcmul_(d, fast, value=-lr / k).addcmul_(d, slow, value=-lr)
                else:  # no mask yet: the first cycle (and every step with k = 1)
                    p.add_(d, alpha=-lr / k)
            if k > 1:
                self._draw_masks(group)
            return
        for p in params:
            state = self.state[p]
            if "mask" not in state:  # a group added mid-cycle: all fast until its first slow step
                bufs = [state.get("momentum_buffer")]
                directions = consume([p], [p.grad], bufs, momentum=momentum, weight_decay=weight_decay,
                                     keep_buffers=momentum != 0, foreach=False, nesterov=group["nesterov"])
                if momentum != 0:
                    state["momentum_buffer"] = bufs[0]
                p.add_(directions[0], alpha=-lr / k)
                continue
            # Slow entries sit at zero: their gradient is ignored and their momentum frozen.
            _, fast, decay = self._masks(p, momentum)
            buf = state.get("momentum_buffer")
            if momentum == 0 or group["nesterov"] or buf is None:
                d = p.grad * fast
                if weight_decay != 0:
                    d.add_(p, alpha=weight_decay)  # zero at the slow entries, as p is
                update = d
                if momentum != 0:
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(decay).add_(d)  # decay: momentum at fast entries, 1 at slow ones
                    update = d.add(buf, alpha=momentum) if group["nesterov"] else buf
            else:  # heavy ball, the same in fewer passes
                buf.mul_(decay).addcmul_(p.grad, fast)
                if weight_decay != 0:
                    buf.add_(p, alpha=weight_decay)
                update = buf
            p.addcmul_(update, fast, value=-lr / k)

    def _split_step(self, group, slow_step):
        lr, k, momentum, weight_decay = group["lr"], group["k"], group["momentum"], group["weight_decay"]
        if "mask" not in self.state[group["params"][0]]:
            _draw_split(self.state, group)
        drift, nesterov = group["linear_drift"], group["nesterov"]
        params = [p for p in group["params"] if p.grad is not None]
        if slow_step:  # every entry consumes the gradient; the slow entries' direction is frozen
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            directions = consume(params, [p.grad for p in params], bufs, momentum=momentum,
                                 weight_decay=weight_decay, keep_buffers=True,
                                 foreach=group["foreach"] is not False, nesterov=nesterov)
            for p, buf, d in zip(params, bufs, directions):
                state = self.state[p]
                state["momentum_buffer"] = buf
                if nesterov:
                    state["nesterov_direction"] = d
                if drift or k == 1:  # all entries h / k now
                    p.add_(d, alpha=-lr / k)
                else:  # slow entries jump h, fast ones h / k
                    slow, fast, _ = self._masks(p, momentum)
                    p.addcmul_(d, fast, value=-lr / k).addcmul_(d, slow, value=-lr)
            _mark_idle(self.state, group["params"])
            return
        for p in params:  # fast entries step; slow entries drift along their frozen direction
            state = self.state[p]
            slow, fast, decay = self._masks(p, momentum)
            d = p.grad * fast
            if weight_decay != 0:
                d.addcmul_(p, fast, value=weight_decay)
            buf = state["momentum_buffer"]
            buf.mul_(decay).add_(d)  # momentum at the fast entries; the slow ones stay frozen
            if nesterov:
                update = d.add_(buf, alpha=momentum).mul_(fast)
                if drift:
                    update.addcmul_(state["nesterov_direction"], slow)
            else:
                update = buf if drift else buf * fast
            p.add_(update, alpha=-lr / k)
        if drift:  # slow entries drift on without a gradient; only idle tensors (none on the slow step) stop
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None and "momentum_buffer" in state and not state.get("idle"):
                    slow, _, _ = self._masks(p, momentum)
                    key = "nesterov_direction" if nesterov else "momentum_buffer"
                    p.addcmul_(state[key], slow, value=-lr / k)

    def _draw_masks(self, group):
        """The next cycle's slow entries of every tensor of a random group, from one generator."""
        params = group["params"]
        first = self.state[params[0]]
        generator = torch.Generator(device=params[0].device)
        if "rng_state" in first:
            generator.set_state(first["rng_state"].cpu())
        else:
            generator.manual_seed(group["seed"])
        for p in params:
            self.state[p]["mask"] = bernoulli(p.numel(), group["slow_fraction"], generator,
                                              device=p.device).view(p.shape)
        first["rng_state"] = generator.get_state()

    def _masks(self, p, momentum):
        """(slow, fast, decay) of a random-group tensor: its mask as 0/1 floats, the complement,
        and the momentum factor (``momentum`` at fast entries, 1 at slow ones), made once per
        cycle into buffers kept for the next cycles. Multiplying by 0 or 1 is exact, and several
        times faster than indexing or torch.where on CPU."""
        mask = self.state[p]["mask"]
        cache = self._fast_masks.get(p)
        if cache is None:
            cache = self._fast_masks[p] = dict(mask=None, buffers=[torch.empty_like(p) for _ in range(4)])
        if cache["mask"] is not mask or cache["momentum"] != momentum:
            bits = mask.view(torch.uint8)
            slow, fast, decay, _ = cache["buffers"]
            slow.copy_(bits)  # 0/1 bytes into floats: a conversion, cheaper than a comparison into floats
            torch.sub(1, slow, out=fast)  # exact: 1 - 0 and 1 - 1
            torch.add(slow, fast, alpha=momentum, out=decay)
            cache.update(mask=mask, momentum=momentum)
        return cache["buffers"][:3]

    def _set_masked(self, group, zeroed):
        """Zero a random group's slow entries (keeping their values aside, zero elsewhere) or put
        them back."""
        for p in group["params"]:
            s = self.state[p]
            if "mask" not in s:
                continue
            if zeroed and "stash" not in s:
                slow, fast, _ = self._masks(p, group["momentum"])
                s["stash"] = torch.mul(p, slow, out=self._fast_masks[p]["buffers"][3])
                p.mul_(fast)
            elif not zeroed and "stash" in s:
                stash = s.pop("stash")
                if stash.shape == p.shape:
                    p.add_(stash)  # p is zero where the stash is not, and the reverse
                else:  # a checkpoint that kept only the slow entries
                    p.masked_scatter_(s["mask"], stash)


def _draw_split(state, group):
    """A split group's masks, drawn once: exactly round(slow_fraction * n) slow entries per tensor."""
    generator = torch.Generator().manual_seed(group["seed"])
    for p in group["params"]:
        n = p.numel()
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:round(group["slow_fraction"] * n)]] = True
        state[p]["mask"] = mask.view(p.shape).to(p.device)


def _mark_idle(state, params):
    """On a slow step, mark the slow parameters without a gradient: no drift (nor jump) this cycle."""
    for p in params:
        if p.grad is not None:
            state[p].pop("idle", None)
        elif p in state and state[p]:
            state[p]["idle"] = True


def bernoulli(n, fraction, generator, *, device) -> Tensor:
    r"""``n`` independent booleans, each True with probability exactly ``fraction``.

    Each entry compares a uniform :math:`U = 0.u_1u_2\dots` in base 256 (one random byte
    :math:`u_i` per digit, 8 bytes per 64-bit word of ``generator``) with the expansion of
    ``fraction`` (finite for a float), digit by digit: True when :math:`U <` ``fraction``. The first
    byte decides all but 1/256 of the entries; only the ties draw further bytes. Random bytes are
    several times cheaper than random floats.
    """
    digits = _base256_digits(fraction)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    u = words.random_(-2**63, None, generator=generator).view(torch.uint8)
    # uint8 0/1 rather than bool: comparisons into uint8 are several times faster on CPU.
    out = torch.lt(u[:n], digits[0], out=torch.empty(n, dtype=torch.uint8, device=device))
    if len(digits) == 1:
        return out.view(torch.bool)  # a tie on the last digit means U >= fraction: False
    # The ties, found word by word (a byte-wise nonzero over n entries costs more than the draw):
    # the words that hold one (a few per cent), then the (word, byte) of each, in order.
    tied = torch.eq(u, digits[0], out=torch.empty_like(u))
    tied[n:] = 0
    tied_words = tied.view(torch.int64)
    hit = tied_words.nonzero().flatten()
    at = tied_words[hit].view(torch.uint8).view(-1, 8).nonzero()
    ties = hit[at[:, 0]] * 8 + at[:, 1]
    for digit in digits[1:]:
        if ties.numel() == 0:
            break
        words = torch.empty((ties.numel() + 7) // 8, dtype=torch.int64, device=device)
        u = words.random_(-2**63, None, generator=generator).view(torch.uint8)[:ties.numel()]
        out[ties[u < digit]] = 1
        ties = ties[u == digit]
    return out.view(torch.bool)  # entries tied on every digit have U >= fraction: False


@functools.lru_cache(maxsize=64)
def _base256_digits(fraction: float) -> tuple[int, ...]:
    """The digits of ``fraction`` in base 256 (finite for a float), once per fraction: exact
    rational arithmetic costs more than the comparisons it sets up."""
    digits, rest = [], Fraction(fraction)
    while rest:
        rest *= 256
        digits.append(int(rest))
        rest -= int(rest)
    return tuple(digits)


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


def check_hyperparameters(base: str = "sgd", **hyperparameters) -> None:
    """Raise ValueError, naming the hyperparameter, for a value that the multirate optimizer with
    this base (``"sgd"``: :class:`Multirate`, ``"adamw"``: :class:`MultirateAdamW`, ``"adam"``:
    :class:`MultirateAdam`) would refuse;
    no model needed. Hyperparameters not given take the optimizer's defaults; ``rate`` is
    ``"fast"`` unless given, e.g. ``check_hyperparameters("sgd", k=5, momentum=0.9)``."""
    import inspect

    from multirate.adamw import MultirateAdam, MultirateAdamW

    classes = {"sgd": Multirate, "adamw": MultirateAdamW, "adam": MultirateAdam}
    if base not in classes:
        raise ValueError(f"base must be one of {tuple(classes)}, got {base!r}")
    cls = classes[base]
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(hyperparameters) - set(defaults) - {"rate"})
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for base {base!r}; known: {sorted(defaults)}")
    group = {**defaults, "rate": "fast", **hyperparameters}
    if "betas" in group:
        group["betas"] = tuple(group["betas"])
    cls._check_group(None, group, 0)


def _check_common(group, where):
    """The checks every base shares."""
    k = group["k"]
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
    if not group["lr"] >= 0:
        raise ValueError(f"{where}: lr must be non-negative, got {group['lr']!r}")
    if not group["weight_decay"] >= 0:
        raise ValueError(f"{where}: weight_decay must be non-negative, got {group['weight_decay']!r}")


def _check_group(group, index):
    where = f"param group {index}"
    if group["rate"] not in RATES:
        raise ValueError(f"{where}: rate must be one of {RATES}, got {group['rate']!r}")
    _check_common(group, where)
    if not 0 <= group["momentum"] < 1:
        raise ValueError(f"{where}: momentum must be in [0, 1), got {group['momentum']!r}")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError(f"{where}: nesterov needs momentum > 0")
    if group["rate"] in ("random", "split"):
        if not 0 < group["slow_fraction"] < 1:
            raise ValueError(f"{where}: slow_fraction must be in (0, 1), got {group['slow_fraction']!r}")
        if group["rate"] == "random" and group["linear_drift"]:
            raise ValueError(f"{where}: a 'random' group's slow entries are frozen during fast steps; "
                             "set linear_drift=False for it")

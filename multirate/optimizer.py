"""Multirate SGD: parameters trained on a fast and a slow time scale (Vlaar & Leimkuhler, ICML 2022).

:class:`Multirate` is the cycle, written once for every partition and every base: which entries
consume their gradient on a step, and how far each one moves. The arithmetic is in
:mod:`multirate._functional`; layer groups are its unmasked cases (all fast, all slow), random
subgroups and the random split its masked ones.
"""

from contextlib import contextmanager
from itertools import chain
from numbers import Integral

import torch
from torch.optim import Optimizer

from multirate import _functional as F
from multirate import masks


class HyperparameterError(ValueError):
    """A hyperparameter value that a multirate optimizer refuses: its ``key``, the ``value``, and
    the ``requirement`` it fails ("must be ...")."""

    def __init__(self, where: str, key: str, value, requirement: str):
        self.key, self.value, self.requirement = key, value, requirement
        super().__init__(f"{where}{key} must be {requirement}, got {value!r}")


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
    ``state``; see :func:`multirate.masks.bernoulli`). During the cycle's k-1 fast steps those
    entries are zero in the model and frozen (value and momentum kept aside); the others take fast
    steps. At the next slow step they are restored, consume the gradient taken at the full network
    and move :math:`h p` at once, while the other entries move :math:`\tfrac{h}{k} p`; then the next
    subset is drawn. Random groups take no linear drift.

    The paper says the subset is zero "during the k fast steps". Read literally
    (``zero_slow_every_step=True``), the slow entries stay zero on all k steps of their cycle: the
    gradient they consume at the next slow step is taken at the network without them, and they are
    restored only inside that ``step()``, before consuming it (the other entries move as above).
    The default (False) zeroes them on the k-1 fast steps only, so that the one gradient they
    consume is taken at the full network, as Algorithm 1 takes every slow gradient at the current
    parameters; it is the reading every recorded result was trained with.

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
        zero_slow_every_step: keep a ``"random"`` group's slow entries zero on every step of
            their cycle, the slow step's gradient included (see above).
        foreach: use the multi-tensor ``torch._foreach_*`` path (default) or a for-loop; both give
            identical iterates.
    """

    rates = ("slow", "fast", "random", "split")  # the rates this base supports

    def __init__(self, params, lr=1e-3, k=1, momentum=0.0, weight_decay=0.0, linear_drift=True,
                 slow_fraction=0.5, seed=0, foreach=None, nesterov=False, zero_slow_every_step=False):
        self._setup(params, dict(lr=lr, k=k, momentum=momentum, weight_decay=weight_decay,
                                 linear_drift=linear_drift, slow_fraction=slow_fraction, seed=seed,
                                 foreach=foreach, nesterov=nesterov,
                                 zero_slow_every_step=zero_slow_every_step))

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
        self.check_group(group, where=f"param group {len(self.param_groups) - 1}: ")
        first = self.param_groups[0]
        if group["k"] != first["k"]:
            raise ValueError(f"k must be the same in every param group: got {group['k']} "
                             f"and {first['k']}")
        # A group added mid-training joins the running cycle.
        group["step"] = first["step"]

    @classmethod
    def check_group(cls, group: dict, where: str = "") -> None:
        """Raise :class:`HyperparameterError` for a value of ``group`` that this optimizer refuses:
        the cycle's hyperparameters, then the base's (:meth:`base_checks`)."""
        rate, k = group["rate"], group["k"]
        if rate not in cls.rates:
            raise HyperparameterError(where, "rate", rate, f"one of {cls.rates}" + (
                ": random subgroups need the SGD base (Multirate), and so does the random split"
                if rate in Multirate.rates else ""))
        checks = [  # (key, ok, requirement); `x >= 0` rather than `not x < 0`, so that NaN fails
            ("k", not isinstance(k, bool) and isinstance(k, Integral) and k >= 1, "a positive integer"),
            ("lr", group["lr"] >= 0, "non-negative"),
            ("weight_decay", group["weight_decay"] >= 0, "non-negative"),
        ]
        if "slow_fraction" in group:
            checks.append(("slow_fraction", 0 < group["slow_fraction"] < 1, "in (0, 1)"))
        if "zero_slow_every_step" in group:
            checks.append(("zero_slow_every_step", isinstance(group["zero_slow_every_step"], bool),
                           "True or False"))
        if rate == "random":
            checks.append(("linear_drift", not group["linear_drift"],
                           "False in a 'random' group (its slow entries stand at zero on fast steps)"))
        for key, ok, requirement in [*checks, *cls.base_checks(group)]:
            if not ok:
                raise HyperparameterError(where, key, group[key], requirement)

    @classmethod
    def base_checks(cls, group: dict) -> list[tuple[str, bool, str]]:
        """The base's own checks, (key, ok, requirement) each: heavy ball and Nesterov here."""
        return [("momentum", 0 <= group["momentum"] < 1, "in [0, 1)"),
                ("nesterov", not (group["nesterov"] and group["momentum"] == 0), "False when momentum = 0")]

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
        random = [group for group in self.param_groups if group["rate"] == "random"]
        zeroed = [self._zeroed(group) for group in random]
        with torch.no_grad():
            for group in random:
                self._set_masked(group, zeroed=False)
        try:
            yield
        finally:
            with torch.no_grad():
                for group, was_zeroed in zip(random, zeroed):
                    self._set_masked(group, zeroed=was_zeroed)

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
            if slow_step:
                if group["rate"] == "random":  # still zero with zero_slow_every_step: back to consume
                    self._set_masked(group, zeroed=False)
                self._slow_step(group)
            else:
                self._fast_step(group)
            group["step"] += 1
        for group in self.param_groups:
            if group["rate"] == "random":
                self._set_masked(group, zeroed=self._zeroed(group))
        return loss

    def _slow_step(self, group):
        """Every entry consumes its gradient. Fast entries move h/k; slow ones move h/k too and keep
        their direction for the cycle's drift, or without drift jump h at once."""
        lr, k, rate, foreach = group["lr"], group["k"], group["rate"], group["foreach"] is not False
        if rate == "split" and "mask" not in self.state[group["params"][0]]:
            self._set_masks(group, masks.draw_split(group["params"], group["slow_fraction"], group["seed"]))
        params = [p for p in group["params"] if p.grad is not None]
        # Slow entries that can drift keep their direction; random ones stand at zero instead.
        drifts = rate in ("slow", "split")
        directions = self._directions(group, params, slow=drifts, foreach=foreach)
        if drifts:
            _mark_idle(self.state, group["params"])
        if rate == "fast" or group["linear_drift"] or k == 1:
            F.move(params, directions, lr / k, foreach=foreach)
        elif rate == "slow":
            F.move(params, directions, lr, foreach=foreach)
        else:  # masked: slow entries h, fast ones h / k (exact: the masks are 0/1)
            for p, d in zip(params, directions):
                if "mask" in self.state[p]:
                    slow, fast, _ = self._masks(p, group["momentum"])
                    p.addcmul_(d, fast, value=-lr / k).addcmul_(d, slow, value=-lr)
                else:  # a random group's tensor before its first subset: all fast
                    p.add_(d, alpha=-lr / k)
        if rate == "random" and k > 1:
            self._draw_subgroups(group)

    def _fast_step(self, group):
        """Fast entries consume their gradient and move h/k; slow entries keep their buffers and
        drift h/k along their frozen direction, or stand (without drift, or zeroed)."""
        lr, k, rate, foreach = group["lr"], group["k"], group["rate"], group["foreach"] is not False
        if rate == "slow":
            if group["linear_drift"]:
                self._drift(group, group["params"])
            return
        params = [p for p in group["params"] if p.grad is not None]
        plain = params if rate == "fast" else [p for p in params if "mask" not in self.state[p]]
        F.move(plain, self._directions(group, plain, slow=False, foreach=foreach), lr / k, foreach=foreach)
        if rate == "fast":
            return
        for p in params:
            if "mask" in self.state[p]:
                self._masked_fast_step(group, p)
        if rate == "split" and group["linear_drift"]:  # the others drift inside _masked_fast_step
            self._drift(group, [p for p in group["params"] if p.grad is None])

    def _masked_fast_step(self, group, p):
        """A fast step of one masked tensor: :func:`multirate._functional.masked_sgd`, then the move."""
        state, lr, k = self.state[p], group["lr"], group["k"]
        slow, fast, decay = self._masks(p, group["momentum"])
        zeroed = group["rate"] == "random"
        buf, d = F.masked_sgd(p, p.grad, state.get("momentum_buffer"), fast, decay,
                              momentum=group["momentum"], weight_decay=group["weight_decay"],
                              keep_buffer=not zeroed, nesterov=group["nesterov"], zeroed=zeroed)
        if buf is not None:
            state["momentum_buffer"] = buf
        if zeroed:  # the slow entries stand at zero: only the fast ones move
            p.addcmul_(d, fast, value=-lr / k)
            return
        # Split: the slow entries drift along their frozen direction (a heavy-ball buffer holds it
        # at the slow entries), or stand without drift.
        if group["nesterov"]:
            d.mul_(fast)
            if group["linear_drift"]:
                d.addcmul_(state["nesterov_direction"], slow)
        elif not group["linear_drift"]:
            d = d * fast
        p.add_(d, alpha=-lr / k)

    def _drift(self, group, params):
        """The slow entries of ``params`` move h/k along the direction frozen at their slow step
        (none that had no gradient then)."""
        key, step_size = self._frozen_key(group), group["lr"] / group["k"]
        drifting = [p for p in params if key in self.state[p] and not self.state[p].get("idle")]
        if group["rate"] == "slow":
            F.move(drifting, [self.state[p][key] for p in drifting], step_size,
                   foreach=group["foreach"] is not False)
            return
        for p in drifting:
            slow, _, _ = self._masks(p, group["momentum"])
            p.addcmul_(self.state[p][key], slow, value=-step_size)

    def _directions(self, group, params, *, slow, foreach):
        """The base's directions for ``params`` from their gradients, updating its state (and, for
        slow entries, keeping the direction under ``_frozen_key``). Heavy ball or Nesterov here."""
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        # A slow buffer is kept even without momentum: it is the frozen drift direction.
        keep = group["momentum"] != 0 or slow
        directions = F.sgd(params, [p.grad for p in params], bufs, momentum=group["momentum"],
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

    def _draw_subgroups(self, group):
        """The next cycle's slow entries of every tensor of a random group, from one generator."""
        params = group["params"]
        first = self.state[params[0]]
        generator = torch.Generator(device=params[0].device)
        if "rng_state" in first:
            generator.set_state(first["rng_state"].cpu())
        else:
            generator.manual_seed(group["seed"])
        self._set_masks(group, masks.draw_subgroups(params, group["slow_fraction"], generator))
        first["rng_state"] = generator.get_state()

    def _set_masks(self, group, new):
        for p, mask in zip(group["params"], new):
            self.state[p]["mask"] = mask

    def _zeroed(self, group):
        """Whether a random group's slow entries are zero in the model between steps."""
        return group["zero_slow_every_step"] or not self.is_slow_step

    def _masks(self, p, momentum):
        """(slow, fast, decay) of a masked tensor: its mask as 0/1 floats, the complement,
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


def _mark_idle(state, params):
    """On a slow step, mark the slow parameters without a gradient: no drift (nor jump) this cycle."""
    for p in params:
        if p.grad is not None:
            state[p].pop("idle", None)
        elif p in state and state[p]:
            state[p]["idle"] = True


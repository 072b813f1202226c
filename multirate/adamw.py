"""Multirate AdamW: the multirate cycle of :class:`multirate.Multirate` on top of AdamW."""

import torch

from multirate import _functional as F
from multirate.optimizer import Multirate


class MultirateAdamW(Multirate):
    r"""Multirate training with AdamW as the base algorithm, one ``step()`` per minibatch.

    Param groups have a ``rate``, ``"fast"`` or ``"slow"`` (random subgroups need the SGD base).
    The cycle is that of :class:`multirate.Multirate`: with slow step size :math:`h` (``lr``) and
    cycle length :math:`k`, step :math:`t = 0, 1, \dots` is a slow step when :math:`t \bmod k = 0`.
    Every parameter :math:`\theta` has its own moments :math:`m, v` (starting at 0) and its own
    update counter :math:`n`. An *AdamW update* of :math:`\theta` with gradient :math:`g` is

    .. math::
        n &\leftarrow n + 1, \qquad
        m \leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \\
        d &= \frac{m / (1 - \beta_1^n)}{\sqrt{v / (1 - \beta_2^n)} + \epsilon} + \lambda\theta

    (elementwise; :math:`\lambda` is the decoupled weight decay). With :math:`g = \nabla L_t` the
    gradient of minibatch :math:`t` at the current parameters:

    .. math::
        \text{fast, every step:}\quad
            &\text{AdamW update with } g_F, \qquad \theta_F \leftarrow \theta_F - \tfrac{h}{k} d_F \\
        \text{slow, slow steps only:}\quad
            &\text{AdamW update with } g_S, \text{ giving the cycle's frozen direction } d_S \\
        \text{slow, with linear drift, every step:}\quad
            &\theta_S \leftarrow \theta_S - \tfrac{h}{k} d_S \\
        \text{slow, without linear drift, slow steps only:}\quad
            &\theta_S \leftarrow \theta_S - h\, d_S

    So the fast parameters run AdamW with step size h/k, their moments and bias correction updated
    on every step. The slow parameters' moments see one gradient per cycle (taken on the cycle's
    first minibatch, as in :class:`Multirate`) and their counter :math:`n` counts cycles; over a
    cycle they move :math:`h d_S`, one AdamW step of size h, with or without drift.

    The decoupled weight decay is part of the frozen direction: :math:`\lambda\theta_S` is taken at
    the slow step and drifts with the rest. Then a cycle moves the slow parameters by exactly one
    AdamW step of size h, as the SGD base moves them by :math:`h p_S` with its coupled decay folded
    into :math:`p_S`; decaying the drifting weights on every step instead would shrink them by
    :math:`(1 - h\lambda/k)^k` rather than :math:`1 - h\lambda`. With ``k=1`` the iterates are those
    of ``torch.optim.AdamW(lr, betas, eps, weight_decay)`` (amsgrad off) up to rounding: torch
    writes the step as :math:`\theta(1 - h\lambda) - h\,\hat m/(\sqrt{\hat v} + \epsilon)`.

    Args:
        params: param groups, each a dict with ``"params"`` and ``"rate"``; any hyperparameter
            below may be set per group.
        lr: slow step size h; the fast step size is ``lr / k`` (LR schedulers scale both).
        k: fast steps per slow step (a positive integer, the same for every group).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v}`.
        weight_decay: decoupled weight decay :math:`\lambda` (torch's AdamW default).
        linear_drift: slow parameters move with their frozen direction on every step.
        foreach: use the multi-tensor ``torch._foreach_*`` path (default) or a for-loop; both give
            identical iterates.
    """

    rates = ("slow", "fast")
    direction = staticmethod(F.adamw)  # the base's directions, from the moments in the state

    def __init__(self, params, lr=1e-3, k=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 linear_drift=True, foreach=None):
        self._setup(params, dict(lr=lr, k=k, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 linear_drift=linear_drift, foreach=foreach))

    @classmethod
    def base_checks(cls, group):
        betas = group["betas"]
        return [("betas", len(betas) == 2 and all(0 <= b < 1 for b in betas), "two numbers in [0, 1)"),
                ("eps", group["eps"] >= 0, "non-negative")]

    def _directions(self, group, params, *, slow, foreach):
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        directions = self.direction(params, [p.grad for p in params], states, betas=group["betas"],
                                    eps=group["eps"], weight_decay=group["weight_decay"], foreach=foreach)
        if slow:
            for state, d in zip(states, directions):
                state["direction"] = d
        return directions

    def _frozen_key(self, group):
        return "direction"


class MultirateAdam(MultirateAdamW):
    r"""Multirate training with Adam (coupled L2, as ``torch.optim.Adam(weight_decay=...)``) as base.

    The cycle and the moments are those of :class:`MultirateAdamW`; only the direction differs:
    the decay is added to the gradient before the moments see it, :math:`g \leftarrow g +
    \lambda\theta`, and :math:`d = \hat m / (\sqrt{\hat v} + \epsilon)`. With ``k=1`` the iterates
    are those of ``torch.optim.Adam(lr, betas, eps, weight_decay)`` up to rounding.
    """

    direction = staticmethod(F.adam)

    def __init__(self, params, lr=1e-3, k=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 linear_drift=True, foreach=None):
        super().__init__(params, lr=lr, k=k, betas=betas, eps=eps, weight_decay=weight_decay,
                         linear_drift=linear_drift, foreach=foreach)


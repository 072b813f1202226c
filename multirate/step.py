"""One training step that computes only the gradients the optimizer will consume.

:class:`GradientPruning` is the mechanism (forward pre-hooks and ``backward(inputs=...)``), one
micro-batch at a time, for trainers that run the backward pass and ``optimizer.step()`` themselves
(:mod:`multirate.integrations`); :class:`TrainStep` is the whole step on top of it.
"""

from contextlib import contextmanager

import torch
from torch import nn


class GradientPruning:
    """The mechanism of :class:`TrainStep`, one micro-batch at a time.

    A trainer (Hugging Face ``Trainer``, Lightning) owns the loop: it calls forward and backward once
    per micro-batch, accumulates, clips, calls ``optimizer.step()`` and zeroes the gradients. Inside
    ``with pruning.micro_batch() as needed:`` the forward pass runs with autograd off until it
    enters the first module that owns a parameter in ``needed`` (the fast parameters on a fast step
    of :class:`multirate.Multirate`, every trained parameter on a slow step or with another
    optimizer), and the trainer's backward must be called with ``inputs=needed``. So a slow
    backbone in front of a fast head records no graph and no slow parameter gets a gradient;
    nothing toggles ``requires_grad``.

    The kind of a micro-batch is read from ``optimizer.is_slow_step``, which changes only at
    ``optimizer.step()``: all micro-batches of one accumulated step are of the same kind. As in
    ``TrainStep``, the first micro-batch of each kind runs unpruned and records which parameters
    get gradients; later micro-batches raise if one of those goes missing (checked for the
    parameters whose gradient was ``None`` when the micro-batch began).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.trained = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.fast = [p for g in optimizer.param_groups if g.get("rate", "fast") != "slow"
                     for p in g["params"] if p.requires_grad]
        self._needed_ids = set()
        self._pruning = False
        self._expected = {}  # kind -> ids of the parameters that got gradients unpruned
        trained_ids = {id(p) for p in self.trained}
        self._hooks = []
        for module in model.modules():
            owned = {id(p) for p in module.parameters(recurse=False)} & trained_ids
            if owned:
                self._hooks.append(module.register_forward_pre_hook(self._enable_grad_hook(owned)))

    def remove(self):
        """Take the hooks off the model."""
        for handle in self._hooks:
            handle.remove()

    def _enable_grad_hook(self, owned):
        def hook(module, args):
            if self._pruning and not owned.isdisjoint(self._needed_ids):
                torch.set_grad_enabled(True)
        return hook

    @contextmanager
    def micro_batch(self):
        """Forward and ``backward(inputs=needed)`` of one micro-batch go inside; yields ``needed``."""
        kind = "slow" if getattr(self.optimizer, "is_slow_step", True) else "fast"
        needed = self.trained if kind == "slow" else self.fast
        self._needed_ids = {id(p) for p in needed}
        self._pruning = kind in self._expected
        had_grad = {id(p) for p in needed if p.grad is not None}
        try:
            with torch.set_grad_enabled(not self._pruning):
                yield needed
        finally:
            self._pruning = False
        got = {id(p) for p in needed if p.grad is not None}
        if kind not in self._expected:
            self._expected[kind] = got
        elif not self._expected[kind] - had_grad <= got:
            raise RuntimeError("a trained parameter got no gradient under forward pruning: it is used "
                               "outside the forward of the module that owns it; see TrainStep's docstring")


def require_graph(loss: torch.Tensor) -> torch.Tensor:
    """``loss``, or a clear error if pruning left it without a graph to differentiate."""
    if not loss.requires_grad:
        raise RuntimeError("the loss does not depend on any trained parameter through a module that "
                           "owns it; see TrainStep's docstring")
    return loss


class TrainStep:
    """Zero grads, forward, backward and ``optimizer.step()`` for one minibatch, without waste.

    On a fast step of :class:`multirate.Multirate` only the fast parameters need gradients; with a
    plain optimizer (or on a slow step), only the parameters it trains. So the backward pass is
    restricted to those (``loss.backward(inputs=...)``) and leaves every other ``.grad`` at
    ``None``, and the forward pass runs with autograd off until it enters the first module that
    owns a parameter being trained: a slow (or frozen) backbone in front of a fast head records no
    graph and keeps no activations. Nothing toggles ``requires_grad``, so the model can be wrapped
    in DistributedDataParallel.

    The forward pass is whatever ``compute_loss`` does, e.g. ``step(lambda: F.cross_entropy(model(x), y))``.
    A parameter must be used inside the forward of a module that owns it (the usual case) for
    autograd to be switched on in time. The first step of each kind (slow, fast) runs without this
    pruning and records which parameters get gradients; later steps raise if one goes missing, so a
    model that breaks the rule fails loudly rather than training silently wrong.

    ``reduce_grads``, if given, is called as ``reduce_grads(params)`` after the backward pass and
    before ``optimizer.step()``, with the parameters whose gradients this step computed, e.g.
    :class:`multirate.distributed.AllReduceGrads` to average them over data-parallel processes.

    ``scaler``, a ``torch.amp.GradScaler`` (fp16 autocast), scales the loss before the backward
    pass and unscales the gradients before ``reduce_grads``, which so sees the true gradients; then
    ``scaler.step(optimizer)`` and ``scaler.update()``. A step whose gradients hold an inf or nan is
    skipped by the scaler: ``optimizer.step()`` is not called, so nothing moves and Multirate's
    cycle does not advance (the next minibatch takes the same kind of step). The inf/nan check is on
    this process's gradients as they are before ``reduce_grads`` (DDP reduces inside the backward
    pass, before it).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, reduce_grads=None,
                 scaler: torch.amp.GradScaler | None = None):
        self.model, self.optimizer, self.reduce_grads, self.scaler = model, optimizer, reduce_grads, scaler
        self.pruning = GradientPruning(model, optimizer)

    def remove(self):
        """Take this step's hooks off the model."""
        self.pruning.remove()

    def __call__(self, compute_loss) -> torch.Tensor:
        """Train on one minibatch; returns the detached (unscaled) loss."""
        scaler = self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        with self.pruning.micro_batch() as needed:
            loss = require_graph(compute_loss())
            (loss if scaler is None else scaler.scale(loss)).backward(inputs=needed)
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.reduce_grads is not None:
            self.reduce_grads([p for p in needed if p.grad is not None])
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)  # skipped on inf/nan gradients
            scaler.update()
        return loss.detach()

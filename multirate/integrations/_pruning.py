"""TrainStep's compute saving for trainers that run the backward pass and ``optimizer.step()`` themselves."""

from contextlib import contextmanager

import torch
from torch import nn


class GradientPruning:
    """The mechanism of :class:`multirate.TrainStep`, one micro-batch at a time.

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

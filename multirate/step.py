"""One training step that computes only the gradients the optimizer will consume."""

import torch
from torch import nn


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
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, reduce_grads=None):
        self.model, self.optimizer, self.reduce_grads = model, optimizer, reduce_grads
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
        """Take this step's hooks off the model."""
        for handle in self._hooks:
            handle.remove()

    def _enable_grad_hook(self, owned):
        def hook(module, args):
            if self._pruning and not owned.isdisjoint(self._needed_ids):
                torch.set_grad_enabled(True)
        return hook

    def __call__(self, compute_loss) -> torch.Tensor:
        """Train on one minibatch; returns the detached loss."""
        slow_step = getattr(self.optimizer, "is_slow_step", True)
        kind = "slow" if slow_step else "fast"
        needed = self.trained if slow_step else self.fast
        self._needed_ids = {id(p) for p in needed}
        self._pruning = kind in self._expected
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.set_grad_enabled(not self._pruning):
                loss = compute_loss()
        finally:
            self._pruning = False
        if not loss.requires_grad:
            raise RuntimeError("the loss does not depend on any trained parameter through a module "
                               "that owns it; see TrainStep's docstring")
        loss.backward(inputs=needed)
        got = {id(p) for p in needed if p.grad is not None}
        if kind not in self._expected:
            self._expected[kind] = got
        elif not self._expected[kind] <= got:
            raise RuntimeError("a trained parameter got no gradient under forward pruning: it is used "
                               "outside the forward of the module that owns it")
        if self.reduce_grads is not None:
            self.reduce_grads([p for p in needed if p.grad is not None])
        self.optimizer.step()
        return loss.detach()

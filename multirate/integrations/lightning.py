"""Multirate in PyTorch Lightning: ``pip install multirate[lightning]``.

::

    from multirate.integrations.lightning import MultirateModule

    class Classifier(MultirateModule, L.LightningModule):      # the mixin first
        def __init__(self, net):
            super().__init__()
            self.net = net
        def training_loss(self, batch, batch_idx):             # instead of training_step
            x, y = batch
            return F.cross_entropy(self.net(x), y)
        def configure_optimizers(self):
            return Multirate(partition.layerwise(self.net, ["fc"]), lr=0.1, k=5, momentum=0.9)

    L.Trainer(max_epochs=10, precision="bf16-mixed").fit(Classifier(net), loader)

The mixin switches the module to manual optimisation and writes ``training_step``: per batch it
runs ``training_loss`` and ``manual_backward`` with :class:`multirate.TrainStep`'s mechanism (on a
fast step no graph in front of the first fast module, gradients for the fast parameters only, no
``requires_grad`` toggling), and ``optimizer.step()`` once the step's batches are in.

Gradient accumulation: set ``accumulate_grad_batches`` on the module (Lightning's own Trainer
option is for automatic optimisation only). One *step* is one optimizer step, so one multirate
step: its micro-batches are all fast or all slow, each loss is divided by the step's number of
micro-batches, and an epoch's last step takes the batches that are left, as Lightning and the
Hugging Face ``Trainer`` do. LR schedulers from ``configure_optimizers`` are stepped as in
automatic optimisation (``interval`` ``"step"``: after optimizer steps, ``"epoch"``: at epoch end;
``frequency`` honoured); a module that overrides ``on_train_epoch_end`` must call ``super()``.

Precision plugins work unchanged: the forward runs under their autocast and ``manual_backward``
applies their loss scaling (tested: ``"bf16-mixed"`` on CPU; ``"16-mixed"`` with its gradient
scaler needs CUDA and is untested here). The cycle position is in
the optimizer's ``state_dict()``, which Lightning saves in every checkpoint and restores on
``fit(ckpt_path=...)``. Resuming mid-epoch needs a resumable dataloader (Lightning's rule, not
this mixin's); an end-of-epoch checkpoint may fall anywhere in a cycle.

Tested with one process (CPU); DDP is not: its reducer expects a gradient for every parameter on
every step (see :mod:`multirate.distributed`).
"""

import torch

try:
    import lightning  # noqa: F401  (the mixin calls Lightning's API; fail here with the fix)
except ImportError as error:
    raise ImportError(f"multirate.integrations.lightning needs lightning ({error}); "
                      "pip install 'multirate[lightning]'") from error

from multirate.step import GradientPruning, require_graph


class MultirateModule:
    """Mixin for a ``LightningModule`` trained with one optimizer, e.g. :class:`multirate.Multirate`.

    Define ``training_loss(batch, batch_idx) -> loss`` instead of ``training_step``. With any other
    optimizer the mixin computes every trained gradient, as ``TrainStep`` does.
    """

    accumulate_grad_batches: int = 1  # micro-batches per optimizer step

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self._gradient_pruning = None

    def training_loss(self, batch, batch_idx) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: define training_loss(batch, batch_idx) "
                                  "returning the loss (MultirateModule writes training_step)")

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise ValueError(f"{type(self).__name__}: MultirateModule trains with one optimizer, "
                             f"configure_optimizers returned {len(optimizer)}")
        pruning = self._gradient_pruning
        if pruning is None or pruning.optimizer is not optimizer.optimizer:  # a new fit()
            if pruning is not None:
                pruning.remove()
            self._gradient_pruning = GradientPruning(self, optimizer.optimizer)
        n = self.accumulate_grad_batches
        first = batch_idx - batch_idx % n
        in_step = min(n, self.trainer.num_training_batches - first)  # fewer at the end of an epoch

        # micro-batch: forward and backward of what this step consumes
        if batch_idx == first:
            optimizer.zero_grad(set_to_none=True)
        with self._gradient_pruning.micro_batch() as needed:
            loss = self.training_loss(batch, batch_idx)
            self.manual_backward(require_graph(loss) / in_step, inputs=needed)

        # the step's last micro-batch: one multirate step
        if batch_idx + 1 == first + in_step:
            optimizer.step()
            self._step_schedulers("step", self.trainer.global_step)
        return loss.detach()

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self._step_schedulers("epoch", self.current_epoch + 1)

    def _step_schedulers(self, interval, count):
        for config in self.trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                raise ValueError(f"{type(self).__name__}: MultirateModule does not step ReduceLROnPlateau "
                                 "(it needs a metric); step it in a hook of your own")
            if config.interval == interval and count % config.frequency == 0:
                config.scheduler.step()

"""Multirate in the Hugging Face ``Trainer``: ``pip install multirate[huggingface]``.

::

    from multirate.integrations.huggingface import MultirateTrainer

    args = TrainingArguments("out", learning_rate=0.05, num_train_epochs=3,
                             gradient_accumulation_steps=2, bf16=True, save_steps=500)
    trainer = MultirateTrainer(model, args, train_dataset=train, k=5, base="sgd", momentum=0.9)
    trainer.train()                                  # or train(resume_from_checkpoint=True)

One *step* is one optimizer step of the ``Trainer`` (``gradient_accumulation_steps`` micro-batches),
so one multirate step: every micro-batch of an accumulated step is a fast one, or every one a slow
one, and the cycle of k steps counts optimizer steps, as the LR scheduler does (which the
``Trainer`` steps after every optimizer step; it scales h and h/k together). On a fast step each
micro-batch's forward pass records no graph in front of the first fast module and the backward
pass computes the fast gradients only (:class:`multirate.TrainStep`'s mechanism, no
``requires_grad`` toggling). Gradient clipping (``max_grad_norm``) then clips the gradients the
step consumes: on a fast step the fast ones, by their own norm. The loss scaling over micro-batches
is the ``Trainer``'s, with or without multirate; note that for a model whose forward takes
``**kwargs`` but returns a micro-batch mean (DistilBERT's classifiers) transformers 5 sums the
micro-batch means, and ``trainer.loss_is_scaled_for_ga = False`` makes it average them.

The cycle position lives in the optimizer's ``state_dict()``, which the ``Trainer`` saves in every
checkpoint (``optimizer.pt``) and loads on ``train(resume_from_checkpoint=...)``, so a run resumed
mid-cycle continues the cycle. Mixed precision is the ``Trainer``'s own (accelerate's autocast
and, for fp16, its gradient scaler, whose ``backward`` receives the same ``inputs``), unchanged;
tested: ``bf16`` on CPU (fp16 needs CUDA).

Tested with one process (CPU); DeepSpeed, FSDP and multi-GPU DDP are not: DDP's reducer expects a
gradient for every parameter on every step (see :mod:`multirate.distributed`).
"""

from contextlib import contextmanager

import torch
from torch import nn

try:
    import accelerate  # noqa: F401  (the Trainer needs it; fail here with the fix, not later)
    from transformers import Trainer
except ImportError as error:
    raise ImportError(f"multirate.integrations.huggingface needs transformers and accelerate ({error}); "
                      "pip install 'multirate[huggingface]'") from error

from multirate import BASES, Multirate, partition
from multirate.step import GradientPruning, require_graph


class MultirateTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with :class:`multirate.Multirate` and saves its compute.

    Args (besides the ``Trainer``'s own):
        k: fast steps per slow step.
        fast: names of the fast modules (see :func:`multirate.partition.layerwise`); default: the
            head, every top-level module with parameters outside the base model (for
            ``DistilBertForSequenceClassification``: ``pre_classifier`` and ``classifier``).
        base: a name in :data:`multirate.BASES`: ``"sgd"`` (:class:`multirate.Multirate`, heavy
            ball, coupled L2 decay), ``"adamw"`` (:class:`multirate.MultirateAdamW`) or ``"adam"``
            (:class:`multirate.MultirateAdam`), the last two with ``adam_beta1/2`` and ``adam_epsilon``.
        momentum: heavy-ball momentum of the SGD base.
        linear_drift: slow parameters drift with their frozen direction on every step.

    The slow step size h is ``args.learning_rate``; ``args.weight_decay`` applies to the
    parameters the ``Trainer`` decays (not biases or LayerNorm). Another partition or optimizer:
    pass any ``Multirate`` as ``optimizers=(optimizer, None)``.
    """

    def __init__(self, *args, k: int = 5, fast: list[str] | None = None, base: str = "sgd",
                 momentum: float = 0.9, linear_drift: bool = True, **kwargs):
        if base not in BASES:
            raise ValueError(f"MultirateTrainer: base must be one of {tuple(BASES)}, got {base!r}")
        self.multirate_settings = dict(k=k, fast=fast, base=base, momentum=momentum,
                                       linear_drift=linear_drift)
        self._pruning = None
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            self.optimizer = multirate_optimizer(model, self.args,
                                                 decay_names=self.get_decay_parameter_names(model),
                                                 **self.multirate_settings)
        return self.optimizer

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        optimizer = unwrap_optimizer(self.optimizer)  # it exists from the first step on
        if self._pruning is None or self._pruning.optimizer is not optimizer:  # a new train()
            if self._pruning is not None:
                self._pruning.remove()
            self._pruning = GradientPruning(self.model, optimizer)
        with self._pruning.micro_batch() as needed, _backward_inputs(self.accelerator, needed):
            return super().training_step(model, inputs, num_items_in_batch)


def multirate_optimizer(model: nn.Module, args, *, k, fast, base, momentum, linear_drift,
                        decay_names=()) -> Multirate:
    """The optimizer ``MultirateTrainer`` builds: fast = ``fast`` (default the head), slow = the rest."""
    groups = partition.layerwise(model, fast if fast is not None else head_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = set(decay_names)
    split = []
    for group in groups:  # each rate in two: decayed and not, as the Trainer's own optimizer does
        for decayed in (True, False):
            params = [p for p in group["params"] if (names[id(p)] in decay_names) == decayed]
            if params:
                split.append({**group, "params": params,
                              "weight_decay": args.weight_decay if decayed else 0.0})
    # The Trainer's settings for each base hyperparameter it has (the weight decay is per group above).
    offered = dict(momentum=momentum, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    values = {name: offered[name] for name in BASES[base].hyperparameters if name in offered}
    return BASES[base].optimizer(split, lr=args.learning_rate, k=k, linear_drift=linear_drift, **values)


def head_names(model: nn.Module) -> list[str]:
    """Top-level modules with trainable parameters outside ``model.base_model_prefix`` (the head)."""
    prefix = getattr(model, "base_model_prefix", "")
    head = [name for name, child in model.named_children()
            if name != prefix and any(p.requires_grad for p in child.parameters())]
    if not head:
        raise ValueError(f"{type(model).__name__} has no head outside its base model {prefix!r}; "
                         "pass fast=[module names] to MultirateTrainer")
    return head


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (and any other such wrapper)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


@contextmanager
def _backward_inputs(accelerator, inputs):
    """Make ``accelerator.backward(loss, **kwargs)`` pass ``inputs=`` to ``Tensor.backward``.

    ``Trainer.training_step`` calls ``self.accelerator.backward(loss, **kwargs)``, which forwards
    its keyword arguments to ``loss.backward`` (or to the scaled loss's, under fp16): the one place
    to restrict the backward pass without copying ``training_step``.
    """
    backward = accelerator.backward
    accelerator.backward = lambda loss, **kwargs: backward(require_graph(loss), inputs=inputs, **kwargs)
    try:
        yield
    finally:
        del accelerator.backward  # the class's method again

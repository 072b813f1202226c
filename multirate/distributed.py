"""Data-parallel Multirate under torch.distributed: average only the gradients a step computed.

Each process holds the whole model and trains on its share of every global minibatch; after the
backward pass the gradients are averaged over the processes, so every process takes the same
optimizer step as one process on the whole minibatch would (up to floating-point summation order).
With :class:`multirate.TrainStep` a fast step computes only the fast part's gradients, so only
those are sent; a slow step sends all of them::

    step = TrainStep(model, opt, reduce_grads=AllReduceGrads())

Why not ``nn.parallel.DistributedDataParallel``: its reducer expects, on every step, a gradient
for every parameter that requires one (or searches the graph for unused ones with
``find_unused_parameters``, and still all-reduces a full-size bucket). Multirate's fast steps leave
the slow gradients uncomputed on purpose, and nothing here toggles ``requires_grad``.
"""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's variables (WORLD_SIZE > 1).

    NCCL for CUDA tensors and gloo for CPU tensors when a GPU is present (each process then uses
    GPU LOCAL_RANK), gloo alone otherwise. Returns whether it initialised the group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")
    return True


@torch.no_grad()
def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy `src`'s parameters and buffers to every process (e.g. once, before training)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=src)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process if `flag` is true on any (a collective: every process must call it)."""
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class AllReduceGrads:
    """Average the gradients of the given parameters over all processes of `group`.

    Called by :class:`multirate.TrainStep` after the backward pass and before ``optimizer.step()``
    with the parameters whose gradients that step computed (the same list, in the same order, on
    every process). The gradients are flattened into one buffer per (device, dtype), summed with
    one ``all_reduce`` each and divided by the world size, then copied back.

    ``last_bytes`` is the payload of the last call (each gradient element counted once), and
    ``total_bytes`` the sum over all calls: on a fast step of Multirate it is the fast part's size.
    """

    def __init__(self, group=None):
        self.group = group
        self.last_bytes = 0
        self.total_bytes = 0

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> None:
        world_size = dist.get_world_size(self.group)
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        sent = 0
        for grads in buckets.values():
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self.group)
            flat /= world_size
            for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(averaged)
            sent += flat.numel() * flat.element_size()
        self.last_bytes = sent
        self.total_bytes += sent

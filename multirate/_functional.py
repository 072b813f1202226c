r"""The arithmetic of the multirate optimizers, as functions on lists of tensors (as torch's
``torch/optim/sgd.py`` has ``_single_tensor_sgd`` beside ``SGD``): the base directions (heavy ball
and Nesterov, AdamW, Adam), the masked heavy ball of an elementwise partition, and ``move``.

Which entries consume a gradient and how far each one moves is the cycle's, in
:class:`multirate.Multirate`; nothing here knows about slow and fast steps. The functions on lists
have a multi-tensor path (``foreach``, one ``torch._foreach_*`` kernel per device and dtype) and a
for-loop path with the same iterates; ``masked_sgd`` takes one tensor.

The masked heavy ball is written for bit-for-bit the iterates of the code it replaced: the same
operations in the same order (an ``add`` with ``alpha`` rounds once, an ``addcmul`` twice), which
is why the zeroed form (random subgroups) and the other (random split) differ in their passes.
"""

from collections import defaultdict

import torch


def sgd(params, grads, momentum_buffer_list, *, momentum, weight_decay, keep_buffers, foreach,
        nesterov=False):
    r"""Heavy-ball or Nesterov directions: fold the decayed gradients
    :math:`d = g + \lambda\theta` into the momentum buffers, :math:`p \leftarrow \mu p + d`.

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
    for indices in by_device_and_dtype(params):
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


def masked_sgd(param, grad, buf, fast, decay, *, momentum, weight_decay, keep_buffer, nesterov, zeroed):
    r""":func:`sgd` for the fast entries of one tensor only: the slow entries' buffer is frozen.

    ``fast`` is the 0/1 float mask of the fast entries and ``decay`` the momentum factor per entry
    (:math:`\mu` at fast entries, 1 at slow ones); multiplying by 0 or 1 is exact. ``zeroed``: the
    slow entries of ``param`` are zero (random subgroups), so the decay :math:`\lambda\theta` needs no
    mask and heavy ball takes fewer passes. Returns ``(buf, direction)``: the buffer (new, updated
    in place, or ``None`` without one) and the direction, whose slow entries are the buffer's
    (heavy ball) or meaningless (Nesterov, no momentum): the caller masks what it moves.
    """
    if zeroed and buf is not None and momentum != 0 and not nesterov:  # heavy ball in fewer passes
        buf.mul_(decay).addcmul_(grad, fast)
        if weight_decay != 0:
            buf.add_(param, alpha=weight_decay)
        return buf, buf
    d = grad * fast
    if weight_decay != 0:
        if zeroed:
            d.add_(param, alpha=weight_decay)  # zero at the slow entries, as param is
        else:
            d.addcmul_(param, fast, value=weight_decay)
    if momentum == 0 and not keep_buffer:
        return buf, d
    if buf is None:
        buf = d.clone()
    else:
        buf.mul_(decay).add_(d)  # decay: momentum at the fast entries, 1 at the slow ones
    return buf, (d.add(buf, alpha=momentum) if nesterov else buf)


def adamw(params, grads, states, *, betas, eps, weight_decay, foreach):
    r"""AdamW updates of the moments (in ``states``, in place) and the directions
    :math:`\hat m / (\sqrt{\hat v} + \epsilon) + \lambda\theta`, as new tensors."""
    if not params:
        return []
    beta1, beta2 = betas
    for state in states:
        state["step"] += 1
    if not foreach:
        directions = []
        for p, g, state in zip(params, grads, states):
            m, v, n = state["exp_avg"], state["exp_avg_sq"], state["step"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / (1 - beta2**n) ** 0.5).add_(eps)
            d = (m / (1 - beta1**n)).div_(denom)
            if weight_decay != 0:
                d.add_(p, alpha=weight_decay)
            directions.append(d)
        return directions

    directions = [None] * len(params)
    for indices in by_device_and_dtype(params):
        ps, gs = [params[i] for i in indices], [grads[i] for i in indices]
        ms = [states[i]["exp_avg"] for i in indices]
        vs = [states[i]["exp_avg_sq"] for i in indices]
        ns = [states[i]["step"] for i in indices]
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [(1 - beta2**n) ** 0.5 for n in ns])
        torch._foreach_add_(denom, eps)
        ds = torch._foreach_div(ms, [1 - beta1**n for n in ns])
        torch._foreach_div_(ds, denom)
        if weight_decay != 0:
            torch._foreach_add_(ds, ps, alpha=weight_decay)
        for i, d in zip(indices, ds):
            directions[i] = d
    return directions


def adam(params, grads, states, *, betas, eps, weight_decay, foreach):
    r"""Adam with coupled L2 (as ``torch.optim.Adam(weight_decay=...)``): the decay joins the
    gradient before the moments see it, :math:`g \leftarrow g + \lambda\theta`; then :func:`adamw`
    without decay."""
    if weight_decay != 0:
        grads = [g.add(p, alpha=weight_decay) for g, p in zip(grads, params)]
    return adamw(params, grads, states, betas=betas, eps=eps, weight_decay=0.0, foreach=foreach)


def move(params, directions, step_size, *, foreach):
    r""":math:`\theta \leftarrow \theta - \eta\, p` for every parameter."""
    if not params:
        return
    if not foreach:
        for p, d in zip(params, directions):
            p.add_(d, alpha=-step_size)
        return
    for indices in by_device_and_dtype(params):
        torch._foreach_add_([params[i] for i in indices], [directions[i] for i in indices],
                            alpha=-step_size)


def by_device_and_dtype(tensors):
    """Indices of ``tensors`` grouped so that each group can go to one ``_foreach`` kernel."""
    groups = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups.values()

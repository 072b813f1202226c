"""The slow entries of elementwise partitions: a fresh Bernoulli draw per cycle (random subgroups)
or one fixed draw (the random split), each from its own seeded generator."""

import functools
from fractions import Fraction

import torch
from torch import Tensor


def draw_subgroups(params, fraction, generator) -> list[Tensor]:
    """Each tensor's slow entries for the next cycle of a ``"random"`` group: every entry slow with
    probability exactly ``fraction``, independently, from ``generator`` (one per group)."""
    return [bernoulli(p.numel(), fraction, generator, device=p.device).view(p.shape) for p in params]


def draw_split(params, fraction, seed) -> list[Tensor]:
    """A ``"split"`` group's masks, drawn once: exactly ``round(fraction * n)`` slow entries per tensor."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for p in params:
        n = p.numel()
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:round(fraction * n)]] = True
        masks.append(mask.view(p.shape).to(p.device))
    return masks


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

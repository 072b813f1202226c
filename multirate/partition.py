"""Param groups for :class:`multirate.Multirate`: which parameters are fast and which are slow.

Each function returns a list of param-group dicts ready for the optimizer; add per-group
hyperparameters to them as you would for any torch optimizer. Parameters with
``requires_grad=False`` are left out, so a frozen part of the model stays frozen.
"""

from torch import nn


def layerwise(model: nn.Module, fast) -> list[dict]:
    """Fast = the parameters under the named modules (e.g. ``["fc"]`` or ``["layer4", "fc"]``)."""
    fast_ids = {id(p) for p in under(model, fast).values()}
    trainable = _trainable(model).values()
    return _groups(slow=[p for p in trainable if id(p) not in fast_ids],
                   fast=[p for p in trainable if id(p) in fast_ids])


def under(model: nn.Module, names) -> dict[str, nn.Parameter]:
    """The trainable parameters under the named modules, by parameter name.

    A name matches itself and everything below it (``"layer4"`` matches ``"layer4.0.conv1.weight"``
    but not ``"layer40.weight"``). Every name must match at least one parameter.
    """
    names = [names] if isinstance(names, str) else list(names)
    named = _trainable(model)
    unmatched = [name for name in names if not any(_under(n, name) for n in named)]
    if unmatched:
        raise ValueError(f"no trainable parameters under {unmatched}; "
                         f"top-level modules are {[n for n, _ in model.named_children()]}")
    return {n: p for n, p in named.items() if any(_under(n, name) for name in names)}


def last_modules(model: nn.Module, n: int) -> list[str]:
    """Names of the last ``n`` top-level modules that own trainable parameters, in model order.

    For a torchvision ResNet, ``last_modules(model, 2) == ["layer4", "fc"]``.
    """
    owners = [name for name, child in model.named_children()
              if any(p.requires_grad for p in child.parameters())]
    if not 1 <= n <= len(owners):
        raise ValueError(f"n must be in 1..{len(owners)} for this model, got {n}")
    return owners[-n:]


def weights_and_biases(model: nn.Module, fast: str = "biases") -> list[dict]:
    """Split biases (parameters named ``*bias``) from all other weights; ``fast`` says which is fast."""
    if fast not in ("biases", "weights"):
        raise ValueError(f"fast must be 'biases' or 'weights', got {fast!r}")
    named = _trainable(model)
    biases = [p for n, p in named.items() if n.rsplit(".", 1)[-1] == "bias"]
    weights = [p for n, p in named.items() if n.rsplit(".", 1)[-1] != "bias"]
    if fast == "biases":
        return _groups(slow=weights, fast=biases)
    return _groups(slow=biases, fast=weights)


def random_subgroups(model: nn.Module, slow_fraction: float = 0.5, seed: int = 0,
                     zero_slow_every_step: bool = False) -> list[dict]:
    """The regularisation variant: random entries of every weight matrix are slow each cycle.

    Weights with two or more dimensions form a ``"random"`` group (a fresh random
    ``slow_fraction`` of their entries is zeroed and frozen for each cycle's fast steps, then
    restored and moved with step size h; with ``zero_slow_every_step`` zero on the slow step's
    gradient too, see :class:`multirate.Multirate`); biases and other one-dimensional parameters
    are fast.
    """
    named = _trainable(model)
    matrices = [p for p in named.values() if p.dim() >= 2]
    vectors = [p for p in named.values() if p.dim() < 2]
    groups = [dict(params=matrices, rate="random", slow_fraction=slow_fraction, seed=seed,
                   linear_drift=False, zero_slow_every_step=zero_slow_every_step)]
    if vectors:
        groups.append(dict(params=vectors, rate="fast"))
    return groups


def random_split(model: nn.Module, slow_fraction: float = 0.5, seed: int = 0) -> list[dict]:
    """A fixed random elementwise split: in every trainable tensor, ``round(slow_fraction * n)``
    of its ``n`` entries are slow and the others fast, drawn once from ``seed`` (kept in the
    optimizer's state) and never zeroed. Fast entries step with h/k on every step; slow entries
    are slow parameters (linear drift, or a jump of h on slow steps without it).
    """
    return [dict(params=list(_trainable(model).values()), rate="split", slow_fraction=slow_fraction,
                 seed=seed)]


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _under(param_name, module_name):
    return param_name == module_name or param_name.startswith(module_name + ".")


def _groups(slow, fast):
    if not fast:
        raise ValueError("the partition has no fast parameters")
    groups = [dict(params=fast, rate="fast")]
    if slow:
        groups.insert(0, dict(params=slow, rate="slow"))
    return groups

"""Convergence check (Theorem B.4, corrected): multirate SGD against its bound on a synthetic problem.

    python -m experiments.convergence [--profile quick|paper] [key=value ...]

The theorem (plain SGD base, no momentum; f L-smooth with minimum f*; stochastic gradients g with
E|g|^2 <= M; l parameter groups; slow step size h, fast h/k; T a multiple of k):

    (1/T) sum_{t<T} E|grad f(theta_t)|^2  <=  2 (f(theta_0) - f*) / (h T)  +  h L M l (h L k^2 / 3 + 1).

The problem: logistic regression f(theta) = (1/n) sum_i [log(1 + exp(x_i.theta)) - y_i x_i.theta]
on generated data (features with a few dominant directions, |x_i| <= 1, labels drawn from a
logistic model so the classes overlap and the minimum is attained). Every constant in the bound is
computed from the data, none typed in:

- L: the Hessian is X^T diag(s'(X theta)) X / n with s' <= 1/4 = s'(0), so sup_theta |Hessian| is
  attained at theta = 0; L is the largest eigenvalue of the autograd Hessian there
  (``smoothness``), which equals lambda_max(X^T X) / (4n).
- M: a minibatch gradient is a mean of (s(x_i.theta) - y_i) x_i with |s - y| < 1, so
  |g|^2 <= max_i |x_i|^2 for every theta (``gradient_bound``); the largest |g|^2 actually sampled
  along the trajectories is recorded beside it (``M_observed``), with the bound evaluated at it
  (``bound_M_observed``: not a bound, as M_observed is no supremum, but it shows how much of the
  bound's slack comes from taking M over every theta).
- f*: Newton's method to machine precision (``minimum``).

Methods, all from the same theta_0 and, per seed, the same minibatch sequence: vanilla SGD
(``torch.optim.SGD``, step h) and :class:`multirate.Multirate` with momentum 0 and linear drift,
l = 2 groups (the first half of theta slow, the second fast), for each k in ``ks``. For each T in
``steps`` (prefixes of one trajectory) the measured (1/T) sum |grad f(theta_t)|^2 is averaged over
seeds and compared with the bound. Writes ``results/<profile>/convergence/convergence.csv``; the
figure is ``python -m figures.convergence``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from experiments.core.config import RunConfig, load_config, parse_cli, require
from experiments.core.files import atomic_open
from multirate import Multirate

TOML = Path(__file__).with_name("configs") / "convergence.toml"
COLUMNS = ("method", "k", "T", "h", "seeds", "measured", "measured_sd", "bound", "holds", "L", "M",
           "M_observed", "bound_M_observed", "f0_minus_fstar", "groups")
GROUPS = 2  # l: the slow and the fast half of theta


@dataclass
class ConvergenceConfig(RunConfig):
    """RunConfig plus the check's fields. Of the shared fields it uses ``lr`` (h), ``batch_size``,
    ``linear_drift``, ``results_dir`` and ``profile``; ``momentum`` must stay 0 (the theorem's plain
    SGD base); ``ks``, ``steps`` and ``seeds`` take the place of ``k``, ``epochs`` and ``seed``, and
    the other shared fields are not read."""

    experiment: str = "convergence"
    method: str = "all"  # one experiment: SGD and every k
    n: int = 1000  # examples
    d: int = 20  # parameters (even: the first half is slow, the second fast)
    batch_size: int = 10
    lr: float = 1.0  # h, the slow step size (SGD steps with h, multirate's fast part with h/k)
    momentum: float = 0.0  # Theorem B.4 is for SGD without momentum
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    steps: list[int] = field(default_factory=lambda: [100, 300, 1000, 3000])  # the T values
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # minibatch sequences
    data_seed: int = 0  # the data set and theta_0
    linear_drift: bool = True

    def validate(self) -> None:
        super().validate()
        checks = [
            ("n", self.n >= 1, ">= 1"),
            ("d", self.d >= 2 and self.d % 2 == 0, "even and >= 2"),
            ("batch_size", 1 <= self.batch_size <= self.n, "in [1, n]"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", self.momentum == 0, "0 (Theorem B.4 is for SGD without momentum)"),
            ("ks", len(self.ks) > 0 and min(self.ks) >= 1, "positive integers"),
            ("steps", len(self.steps) > 0 and all(t % k == 0 for t in self.steps for k in self.ks),
             "multiples of every k (the theorem's T)"),
            ("seeds", len(self.seeds) > 0, "a non-empty list"),
        ]
        require(self, checks)


# ----------------------------------------------------------------------------- the problem

def make_problem(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Features X (n x d, float64, every row of norm <= 1) and labels y in {0, 1}.

    The feature covariance has a few dominant directions (so the slow and the fast half are
    coupled and L is set by them); labels come from a logistic model, so the classes overlap.
    """
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1, d, dtype=torch.float64)  # per-direction std, 1 down to 0.1
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * scales @ basis.T
    x = z / z.norm(dim=1).max()
    w = 4 * torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w)).to(torch.float64)
    return x, y


def loss(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Mean logistic loss."""
    logits = x @ theta
    return (torch.nn.functional.softplus(logits) - y * logits).mean()


def gradient(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of `loss` over the rows given (all of them: the full gradient)."""
    return x.T @ (torch.sigmoid(x @ theta) - y) / len(y)


def smoothness(x: Tensor, y: Tensor) -> float:
    """L = sup_theta |Hessian f(theta)|: the top eigenvalue of the autograd Hessian at theta = 0,
    where the supremum is attained (see the module docstring)."""
    zero = torch.zeros(x.shape[1], dtype=x.dtype)
    hessian = torch.autograd.functional.hessian(lambda t: loss(t, x, y), zero)
    return float(torch.linalg.eigvalsh(hessian)[-1])


def gradient_bound(x: Tensor) -> float:
    """M: every minibatch gradient has squared norm <= max_i |x_i|^2."""
    return float(x.pow(2).sum(1).max())


def minimum(x: Tensor, y: Tensor, tol: float = 1e-12, max_iter: int = 100) -> tuple[float, Tensor]:
    """f* and the minimiser, by Newton's method from 0 (f is strictly convex when X has full rank)."""
    theta = torch.zeros(x.shape[1], dtype=x.dtype)
    for _ in range(max_iter):
        g = gradient(theta, x, y)
        if g.norm() < tol:
            return float(loss(theta, x, y)), theta
        s = torch.sigmoid(x @ theta)
        hessian = x.T @ (x * (s * (1 - s)).unsqueeze(1)) / len(y)
        theta = theta - torch.linalg.solve(hessian, g)
    raise RuntimeError("Newton's method did not converge: are the classes separable?")


def bound(f0_minus_fstar: float, h: float, T: int, L: float, M: float, groups: int, k: int) -> float:
    """The right-hand side of Theorem B.4."""
    return 2 * f0_minus_fstar / (h * T) + h * L * M * groups * (h * L * k**2 / 3 + 1)


# ----------------------------------------------------------------------------- the runs

def trajectory(x: Tensor, y: Tensor, theta0: Tensor, h: float, T: int, batch_size: int, seed: int,
               k: int | None, linear_drift: bool = True) -> tuple[Tensor, float]:
    """Train T steps with vanilla SGD (``k=None``) or Multirate (slow = first half of theta).

    Returns |grad f(theta_t)|^2 for t = 0..T-1 (before each step) and the largest squared norm
    of the minibatch gradients used. The minibatches (with replacement) depend on `seed` only.
    """
    half = len(theta0) // 2
    slow, fast = nn.Parameter(theta0[:half].clone()), nn.Parameter(theta0[half:].clone())
    if k is None:
        opt = torch.optim.SGD([slow, fast], lr=h)
    else:
        opt = Multirate([{"params": [slow], "rate": "slow"}, {"params": [fast], "rate": "fast"}],
                        lr=h, k=k, momentum=0.0, linear_drift=linear_drift)
    batches = torch.randint(0, len(y), (T, batch_size), generator=torch.Generator().manual_seed(seed))
    sq_norms = torch.empty(T, dtype=x.dtype)
    largest = 0.0
    with torch.no_grad():
        for t in range(T):
            theta = torch.cat([slow, fast])
            sq_norms[t] = gradient(theta, x, y).pow(2).sum()
            idx = batches[t]
            g = gradient(theta, x[idx], y[idx])
            largest = max(largest, float(g.pow(2).sum()))
            slow.grad, fast.grad = g[:half].clone(), g[half:].clone()
            opt.step()
    return sq_norms, largest


def run(cfg: ConvergenceConfig) -> list[dict]:
    """Every method x seed; one row per (method, k, T) with the seed-averaged measurement and the bound."""
    x, y = make_problem(cfg.n, cfg.d, cfg.data_seed)
    L, M = smoothness(x, y), gradient_bound(x)
    fstar, _ = minimum(x, y)
    theta0 = torch.randn(cfg.d, generator=torch.Generator().manual_seed(10_000 + cfg.data_seed),
                         dtype=torch.float64)
    gap = float(loss(theta0, x, y)) - fstar
    T_max = max(cfg.steps)
    methods = [("sgd", 1, None)] + [("multirate", k, k) for k in cfg.ks]
    rows = []
    for method, k, opt_k in methods:
        per_seed, observed = [], 0.0
        for seed in cfg.seeds:
            sq_norms, largest = trajectory(x, y, theta0, cfg.lr, T_max, cfg.batch_size, seed, opt_k,
                                           cfg.linear_drift)
            per_seed.append(torch.cumsum(sq_norms, 0))
            observed = max(observed, largest)
        for T in sorted(cfg.steps):
            averages = [float(c[T - 1]) / T for c in per_seed]
            measured = statistics.mean(averages)
            b = bound(gap, cfg.lr, T, L, M, GROUPS, k)
            rows.append(dict(method=method, k=k, T=T, h=cfg.lr, seeds=len(cfg.seeds), measured=measured,
                             measured_sd=statistics.stdev(averages) if len(averages) > 1 else 0.0,
                             bound=b, holds=measured <= b, L=L, M=M, M_observed=observed,
                             # Not a bound: how much of its slack is the worst case over theta in M.
                             bound_M_observed=bound(gap, cfg.lr, T, L, observed, GROUPS, k),
                             f0_minus_fstar=gap, groups=GROUPS))
    return rows


def csv_path(cfg: ConvergenceConfig) -> Path:
    return Path(cfg.results_dir) / cfg.profile / cfg.experiment / "convergence.csv"


def write(rows: list[dict], cfg: ConvergenceConfig) -> Path:
    """The rows as a CSV (full float precision) and the config beside it as JSON."""
    path = csv_path(cfg)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w") as f:
        f.write(buf.getvalue())
    with atomic_open(path.with_suffix(".json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
    return path


def table(rows: list[dict]) -> str:
    lines = [f"{'method':<10} {'k':>3} {'T':>6} {'measured':>11} {'bound':>11} holds"]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['k']:>3} {r['T']:>6} {r['measured']:>11.4g} {r['bound']:>11.4g} "
                     f"{'yes' if r['holds'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    profile, methods, seeds, overrides, skip_running = parse_cli(argv, ConvergenceConfig, TOML)
    if methods:
        raise SystemExit("experiments.convergence: every method runs together; drop --method")
    if skip_running:
        raise SystemExit("experiments.convergence: one run, nothing to share; drop --skip-running")
    if seeds is not None:
        overrides = [*overrides, "seeds=" + ",".join(map(str, seeds))]
    cfg = load_config(ConvergenceConfig, TOML, profile, "all", overrides)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    t0 = time.perf_counter()
    rows = run(cfg)
    path = write(rows, cfg)
    r = rows[0]
    print(f"L = {r['L']:.6g} (Hessian at 0), M = {r['M']:.6g} (max |x_i|^2; largest sampled "
          f"{r['M_observed']:.4g}), f(theta_0) - f* = {r['f0_minus_fstar']:.6g}, h = {cfg.lr}, l = {GROUPS}")
    print(table(rows))
    print(f"{path} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if not all(r["holds"] for r in rows):
        raise SystemExit("experiments.convergence: the measured average exceeds the bound somewhere")
    return rows


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

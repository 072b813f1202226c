"""The convergence check: the bound's constants come from the data, and the measurement respects it."""

import csv

import pytest
import torch

from experiments import convergence
from experiments.convergence import (
    ConvergenceConfig,
    bound,
    gradient,
    gradient_bound,
    loss,
    make_problem,
    minimum,
    smoothness,
    trajectory,
)
from experiments.core.config import RunConfig, experiment_config, load_config
from figures import convergence as figure


def test_bound_by_hand():
    # 2 * 0.5 / (0.1 * 100) + 0.1 * 2 * 3 * 2 * (0.1 * 2 * 25 / 3 + 1) = 0.1 + 1.2 * 8 / 3 = 3.3
    assert bound(0.5, h=0.1, T=100, L=2.0, M=3.0, groups=2, k=5) == pytest.approx(3.3, abs=1e-12)
    # k = 1, one group: the SGD-like bound 2 Delta / (h T) + h L M (h L / 3 + 1)
    assert bound(1.0, h=0.5, T=10, L=1.0, M=1.0, groups=1, k=1) == pytest.approx(0.4 + 0.5 * (0.5 / 3 + 1))


def test_smoothness_equals_analytic_value():
    """X = U diag(s) V^T with orthonormal U, V: sup |Hessian| = s_max^2 / (4n), here 9 / 160."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(40, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    x = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ v.T
    y = (torch.rand(40, generator=g) < 0.5).to(torch.float64)
    assert smoothness(x, y) == pytest.approx(9 / 160, rel=1e-12)


def test_smoothness_bounds_the_hessian_elsewhere():
    x, y = make_problem(200, 6, seed=1)
    L = smoothness(x, y)
    assert L == pytest.approx(float(torch.linalg.eigvalsh(x.T @ x)[-1]) / (4 * 200), rel=1e-10)
    for seed in range(3):
        theta = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        hessian = torch.autograd.functional.hessian(lambda t: loss(t, x, y), theta)
        assert float(torch.linalg.eigvalsh(hessian)[-1]) < L


def test_gradient_bound_from_data():
    x, y = make_problem(300, 8, seed=2)
    M = gradient_bound(x)
    assert M == pytest.approx(float(x.norm(dim=1).max() ** 2))
    assert gradient_bound(3 * x) == pytest.approx(9 * M)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # any theta, any minibatch: |g|^2 <= M
        theta = 10 * torch.randn(8, generator=g, dtype=torch.float64)
        idx = torch.randint(0, 300, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g)
        assert float(gradient(theta, x[idx], y[idx]).pow(2).sum()) <= M


def test_minimum_is_the_minimum():
    x, y = make_problem(300, 8, seed=3)
    fstar, theta = minimum(x, y)
    assert float(gradient(theta, x, y).norm()) < 1e-12
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert float(loss(theta + 0.1 * torch.randn(8, generator=g, dtype=torch.float64), x, y)) > fstar


def test_multirate_k1_follows_the_sgd_trajectory():
    x, y = make_problem(100, 6, seed=0)
    theta0 = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sgd, _ = trajectory(x, y, theta0, h=2.0, T=50, batch_size=5, seed=7, k=None)
    multirate, _ = trajectory(x, y, theta0, h=2.0, T=50, batch_size=5, seed=7, k=1)
    assert torch.equal(sgd, multirate)
    slower, _ = trajectory(x, y, theta0, h=2.0, T=50, batch_size=5, seed=7, k=5)
    assert not torch.equal(sgd, slower)


def small_config(tmp_path, **kw):
    base = dict(n=200, d=6, batch_size=5, lr=2.0, ks=[1, 3], steps=[30, 90], seeds=[0, 1],
                results_dir=str(tmp_path))
    return ConvergenceConfig(**{**base, **kw})


def test_measured_within_bound_and_constants_measured(tmp_path):
    cfg = small_config(tmp_path)
    rows = convergence.run(cfg)
    x, y = make_problem(cfg.n, cfg.d, cfg.data_seed)
    assert {(r["method"], r["k"], r["T"]) for r in rows} == {
        (m, k, T) for m, k in [("sgd", 1), ("multirate", 1), ("multirate", 3)] for T in (30, 90)}
    for r in rows:
        assert r["L"] == smoothness(x, y) and r["M"] == gradient_bound(x)
        assert 0 < r["M_observed"] <= r["M"]
        assert r["bound"] == bound(r["f0_minus_fstar"], cfg.lr, r["T"], r["L"], r["M"], 2, r["k"])
        assert 0 < r["measured"] <= r["bound"] and r["holds"]
    path = convergence.write(rows, cfg)
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    out = figure.main(["--results-dir", str(tmp_path)])
    assert (out / "convergence.png").exists() and (out / "convergence.pdf").exists()


def test_main_writes_csv(tmp_path, capsys):
    rows = convergence.main([f"results_dir={tmp_path}", "n=100", "d=4", "ks=1,2", "steps=20", "seeds=0"])
    assert (tmp_path / "quick" / "convergence" / "convergence.csv").exists()
    assert len(rows) == 3 and "holds" in capsys.readouterr().out


def test_steps_must_be_multiples_of_k(tmp_path):
    with pytest.raises(ValueError, match="invalid steps="):
        small_config(tmp_path, ks=[1, 4], steps=[30])


def test_config_is_a_run_config_read_from_its_toml(tmp_path):
    """One config style: a RunConfig subclass with its TOML, found as every experiment's is."""
    config_cls, toml = experiment_config(convergence)
    assert config_cls is ConvergenceConfig and issubclass(config_cls, RunConfig) and toml == convergence.TOML
    cfg = load_config(config_cls, toml, "quick", "all", [f"results_dir={tmp_path}"])
    assert (cfg.lr, cfg.momentum, cfg.ks, cfg.steps, cfg.seeds) == (1.0, 0.0, [1, 2, 5, 10],
                                                                    [100, 300, 1000, 3000], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="invalid momentum=0.9"):
        small_config(tmp_path, momentum=0.9)


@pytest.mark.parametrize("flag", [["--method", "sgd"], ["--skip-running"]])
def test_run_selection_flags_are_refused_with_one_line(flag):
    # One run holds every method: there is nothing to select or share out.
    with pytest.raises(SystemExit, match=r"^experiments.convergence: .*; drop --"):
        convergence.main(flag)

"""Ablation grids (experiments.ablations) and their figure (figures.ablations)."""

import pandas as pd
import pytest

from experiments import ablations
from experiments.ablations import Variant, ablation_results_dir, grids, run_ablation, variant_config
from experiments.core.runlog import RunLog
from figures import ablations as figure
from tests.helpers import TRANSFER_TINY as TINY
from tests.helpers import register_ablation

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


def configs(name, tmp_path, profile="quick", seed=0):
    return {v.label: variant_config(v, profile, seed, tmp_path, name) for v in grids()[name]}


def test_k_grid_is_as_configured(tmp_path):
    cfgs = configs("k", tmp_path)
    for base, multirate, lr in (("SGD", "multirate", 0.1), ("AdamW", "multirate_adamw", ablations.ADAMW_LR)):
        assert [cfgs[f"{base} k={k}"].k for k in (1, 2, 5, 10, 25)] == [1, 2, 5, 10, 25]
        assert all(cfgs[f"{base} k={k}"].optimizer == multirate and cfgs[f"{base} k={k}"].lr == lr
                   and cfgs[f"{base} k={k}"].linear_drift and cfgs[f"{base} k={k}"].fast == ["fc"]
                   for k in (1, 2, 5, 10, 25))
        reference = cfgs[f"{base} train-all"]
        assert reference.optimizer == multirate.replace("multirate_", "").replace("multirate", "sgd")
        assert reference.lr == lr and reference.train == ["all"]
    assert len(cfgs) == 12


def test_drift_pairs_differ_only_in_drift(tmp_path):
    cfgs = configs("drift", tmp_path)
    for setting, k in (("transfer SGD", 5), ("transfer AdamW", 5), ("patch", 25)):
        on, off = cfgs[f"{setting} drift"], cfgs[f"{setting} no drift"]
        assert on.linear_drift and not off.linear_drift and on.k == off.k == k
        # `variant` is the label of each (its W&B group), not part of the run's identity.
        assert {**vars(on), "linear_drift": None, "variant": None} == {**vars(off), "linear_drift": None,
                                                                       "variant": None}
    assert cfgs["patch drift"].experiment == "patch" and cfgs["patch drift"].lr == 0.1


def test_fast_parts_and_subgroups(tmp_path):
    fast = configs("fast", tmp_path)
    assert [c.fast for c in fast.values()] == [["fc"], ["layer4", "fc"], ["layer3", "layer4", "fc"]]
    assert {c.k for c in fast.values()} == {5}
    groups = [c for c in configs("subgroups", tmp_path).values() if c.optimizer == "multirate"]
    assert all(c.partition == "random_subgroups" for c in groups)
    # The fast step h/k is SGD's 0.01 whatever k is.
    assert all(c.lr / c.k == pytest.approx(0.01) for c in groups)
    assert sorted({c.slow_fraction for c in groups if c.k == 2}) == [0.1, 0.2, 0.4, 0.6]
    assert sorted({c.k for c in groups if c.slow_fraction == 0.2}) == [1, 2, 5, 10]


def test_runs_go_to_the_ablation_folder(tmp_path):
    variant = next(v for v in grids()["k"] if v.label == "SGD k=5")
    argv = ablations.argv(variant, "paper", [0, 1, 2], tmp_path, "k")
    assert argv[:6] == ["--profile", "paper", "--method", "multirate", "--seeds", "0,1,2"]
    assert f"results_dir={tmp_path / 'ablations' / 'k'}" in argv
    run_dir = variant_config(variant, "paper", 1, tmp_path, "k").run_dir
    assert run_dir == tmp_path / "ablations" / "k" / "paper" / "transfer"


def test_tiny_ablation_run_lands_in_its_folder_and_is_not_repeated(tmp_path, monkeypatch):
    register_ablation(monkeypatch, "tiny", [Variant("k=2", "transfer", "multirate", ("k=2", *TINY))])
    results = run_ablation("tiny", "quick", [0], tmp_path)
    assert [(r["status"], r["label"]) for r in results] == [("complete", "k=2")]
    folder = ablation_results_dir(tmp_path, "tiny") / "quick" / "transfer"
    assert [p.name for p in folder.glob("*.csv")] == [f"{results[0]['run_name']}.csv"]
    assert not (tmp_path / "quick").exists()  # nothing in the figures' experiment folders
    assert [r["model"] for r in run_ablation("tiny", "quick", [0], tmp_path)] == [None]  # skipped
    final = ablations.final_rows("tiny", tmp_path, "quick")
    assert list(final.k) == [2] and list(final.metric) == ["test_accuracy"]


def test_pretrained_network_is_shared_between_ablations(tmp_path, monkeypatch):
    variant = Variant("k=2", "transfer", "multirate", ("k=2", *TINY))
    register_ablation(monkeypatch, "one", [variant])
    register_ablation(monkeypatch, "two", [variant])
    run_ablation("one", "quick", [0], tmp_path)
    calls = []
    # The shared training loop, not transfer._pretrain: the cache key hashes _pretrain's source file.
    monkeypatch.setattr("experiments.datasets.pretraining.fit", lambda *a, **k: calls.append(a))
    run_ablation("two", "quick", [0], tmp_path)
    assert calls == []  # copied from ablation "one", not pretrained again


def log(cfg, accuracy, seconds, status="complete", metric="test_accuracy"):
    run = RunLog(cfg)
    run.start("cpu")
    run.log(1, 10, seconds / 2, {metric: accuracy - 5})
    run.log(2, 20, seconds, {metric: accuracy})
    run.finish(status)


def test_k_figure_and_table_from_synthetic_logs(tmp_path):
    cfgs = configs("k", tmp_path)
    log(cfgs["SGD train-all"], 80.0, 100.0)
    log(cfgs["SGD k=5"], 79.0, 50.0)
    log(configs("k", tmp_path, seed=1)["SGD k=5"], 78.0, 40.0)
    log(cfgs["SGD k=10"], 70.0, 10.0, status="running")  # unfinished: left out
    log(cfgs["AdamW train-all"], 90.0, 120.0)
    log(cfgs["AdamW k=2"], 91.5, 80.0)
    # The same run in the main experiment folder is not an ablation run.
    main_cfg = variant_config(grids()["k"][0], "quick", 0, tmp_path, "k")
    main_cfg.results_dir = str(tmp_path)
    log(main_cfg, 10.0, 1.0)
    assert figure.main(["--results-dir", str(tmp_path), "--profile", "quick"]) == ["k"]

    out = tmp_path / "quick" / "figures"
    assert (out / "ablation_k.png").stat().st_size > 10_000 and (out / "ablation_k.pdf").exists()
    table = pd.read_csv(out / "ablation_k.csv").set_index("label")
    # SGD k=10 has no complete run: its row is empty but for what was left out (below)
    assert list(table.index) == ["SGD train-all", "SGD k=5", "AdamW train-all", "AdamW k=2", "SGD k=10"]
    assert table.loc["SGD k=5", "value"] == pytest.approx(78.5)
    assert table.loc["SGD k=5", "seeds"] == 2
    assert table.loc["SGD k=5", "speedup"] == pytest.approx(100 / 45)
    assert table.loc["SGD k=5", "accuracy_gap"] == pytest.approx(-1.5)
    assert table.loc["AdamW k=2", "speedup"] == pytest.approx(1.5)
    assert table.loc["AdamW k=2", "accuracy_gap"] == pytest.approx(1.5)
    assert table.loc["SGD train-all", "value"] == 80.0  # not the main folder's 10.0


def test_the_ablation_figure_table_and_report_say_which_runs_they_left_out_and_why(tmp_path, monkeypatch):
    from experiments.reporting import report

    for seed in (0, 1, 2):
        cfgs = configs("k", tmp_path, seed=seed)
        log(cfgs["SGD train-all"], 80.0, 100.0)
        log(cfgs["SGD k=5"], 79.0, 50.0, status="diverged" if seed == 1 else "complete")
    log(configs("k", tmp_path)["SGD k=10"], 70.0, 10.0, status="running")
    left = ablations.left_out_runs("k", tmp_path, "quick")
    assert list(zip(left.label, left.seed, left.reason)) == [
        ("SGD k=5", 1, "diverged at epoch 2"), ("SGD k=10", 0, "not finished")]
    saved = {}  # figure name -> (its texts, its table)
    monkeypatch.setattr(figure, "save", lambda fig, table, root, name: saved.setdefault(
        name, ([t.get_text() for t in fig.texts], table)))
    figure.main(["--results-dir", str(tmp_path)])
    notes, table = saved["ablation_k"]
    assert any("left out: SGD k=10: 0 of 1 seed, seed 0 not finished; SGD k=5: 2 of 3 seeds, seed 1 diverged "
               "at epoch 2" in t for t in notes)
    by_label = table.drop_duplicates("label").set_index("label")
    assert by_label.loc["SGD k=5", "left_out"] == "2 of 3 seeds, seed 1 diverged at epoch 2"
    assert by_label.loc["SGD k=5", "seeds"] == 2 and by_label.loc["SGD train-all", "left_out"] == ""
    assert ("Left out: SGD k=10: 0 of 1 seed, seed 0 not finished; SGD k=5: 2 of 3 seeds, seed 1 diverged "
            "at epoch 2.") in report.ablation_section(tmp_path, "quick")


def test_drift_figure_covers_both_experiments(tmp_path):
    cfgs = configs("drift", tmp_path)
    log(cfgs["transfer SGD drift"], 80.0, 50.0)
    log(cfgs["transfer SGD no drift"], 78.0, 50.0)
    for label, value in (("patch drift", 60.0), ("patch no drift", 55.0)):
        run = RunLog(cfgs[label])
        run.start("cpu")
        run.log(1, 10, 5.0, {"clean_accuracy": value, "patched_accuracy": value + 1,
                             "patch_only_accuracy": 20.0})
        run.finish("complete")
    assert figure.main(["--results-dir", str(tmp_path)]) == ["drift"]
    table = pd.read_csv(tmp_path / "quick" / "figures" / "ablation_drift.csv")
    assert len(table) == 2 + 2 * 3
    patched = table[(table.metric == "patched_accuracy")].set_index("label").value
    assert patched.to_dict() == {"patch drift": 61.0, "patch no drift": 56.0}
    assert set(table[table.experiment == "transfer"].linear_drift) == {True, False}


def test_every_variant_and_seed_is_checked_before_any_run(tmp_path, monkeypatch):
    """An impossible variant (here the last one's lr=inf) stops the command before the first run,
    naming the ablation and the variant; nothing is written."""
    from experiments import ablations

    good = ablations.Variant("fine", "regularization_mlp", "sgd")
    bad = ablations.Variant("bad", "regularization_mlp", "sgd", ("lr=inf",))
    register_ablation(monkeypatch, "probe", [good, bad], "regularization")
    monkeypatch.setattr(ablations, "run_ablation", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=r"ablation probe, variant 'bad': invalid lr=inf: must be a finite"):
        ablations.main(["--only", "probe", "--results-dir", str(tmp_path / "results")])
    with pytest.raises(ValueError, match=r"--seeds 0,-1: seed '-1'"):
        ablations.main(["--only", "probe", "--seeds", "0,-1", "--results-dir", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()


def test_every_profile_has_default_seeds():
    from experiments import ablations
    from experiments.core.config import PROFILES

    assert set(ablations.SEEDS) == set(PROFILES)

"""The comparison protocol (experiments/protocol.py): the held-out split, trials that never read the
test set, a choice that never reads a test metric, the TOMLs checked against the choice, and the
claims' views of the trials (sensitivity) and of the runs kept from before."""

import math

import pytest
import torch

from experiments import protocol, regularization_mlp, transfer
from experiments.core.config import load_config
from experiments.core.runner import run
from experiments.datasets.data import holdout_split
from experiments.regularization_lm import LMConfig, LMTask
from experiments.reporting import claims
from experiments.reporting.readme_tables import Runs
from tests.helpers import LM_TINY, MLP_TINY, TRANSFER_TINY


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_holdout_split_is_fixed_disjoint_and_complete():
    kept, held = holdout_split(1000, 0.2)
    assert len(held) == 200 and len(kept) == 800
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(1000))
    again = holdout_split(1000, 0.2)
    assert torch.equal(kept, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, torch.arange(800, 1000))  # a random fifth, not the tail
    with pytest.raises(ValueError, match="holdout"):
        holdout_split(3, 0.1)


def mlp_cfg(tmp_path, *overrides):
    return load_config(regularization_mlp.MLPConfig, regularization_mlp.TOML, "quick", "sgd",
                       [f"results_dir={tmp_path / 'results'}", *MLP_TINY, *overrides])


def train(cfg):
    return run(cfg, regularization_mlp.MLPTask(cfg))["rows"]


def final(rows):
    last = max(r["epoch"] for r in rows)
    return {r["metric"]: r["value"] for r in rows if r["epoch"] == last}


def test_a_trial_is_the_same_whatever_the_test_set_holds(tmp_path, monkeypatch):
    # A poisoned test set (labels scrambled) leaves every number of a held-out trial unchanged,
    # and changes the same run without a holdout: the trial reads only the held-out part.
    clean_trial = train(mlp_cfg(tmp_path / "a", "holdout=0.25"))
    clean_test = final(train(mlp_cfg(tmp_path / "a")))
    make = regularization_mlp.generated_data

    def poisoned(cfg):
        x, y, x_test, y_test = make(cfg)
        return x, y, x_test, (y_test + 1) % cfg.classes

    monkeypatch.setattr(regularization_mlp, "generated_data", poisoned)
    poisoned_trial = train(mlp_cfg(tmp_path / "b", "holdout=0.25"))
    poisoned_test = final(train(mlp_cfg(tmp_path / "b")))
    values = [[(r["metric"], r["value"]) for r in rows] for rows in (clean_trial, poisoned_trial)]
    assert values[0] == values[1]
    assert poisoned_test["test_accuracy"] != clean_test["test_accuracy"]


def test_a_transfer_trial_never_loads_the_test_set(tmp_path, monkeypatch):
    load = transfer.TransferTask._load

    def train_only(self, cfg, train):
        assert train, "a held-out trial loaded the test set"
        return load(self, cfg, train)

    monkeypatch.setattr(transfer.TransferTask, "_load", train_only)
    cfg = load_config(transfer.TransferConfig, transfer.TOML, "quick", "fc",
                      [f"results_dir={tmp_path / 'results'}", *TRANSFER_TINY, "holdout=0.2"])
    assert run(cfg, transfer.TransferTask(cfg))["status"] == "complete"


def test_a_language_model_trial_validates_on_the_end_of_its_training_text(tmp_path):
    cfg = load_config(LMConfig, regularization_lm_toml(), "quick", "sgd",
                      [f"results_dir={tmp_path}", *LM_TINY, "holdout=0.25"])
    task, full = LMTask(cfg), LMTask(load_config(LMConfig, regularization_lm_toml(), "quick", "sgd",
                                                 [f"results_dir={tmp_path}", *LM_TINY]))
    assert task.test is None
    assert task.train.numel() < full.train.numel()
    rows = run(cfg, task)["rows"]
    assert {"val_loss", "val_ppl"} == {r["metric"] for r in rows} - {"train_loss"}


def regularization_lm_toml():
    from experiments import regularization_lm

    return regularization_lm.TOML


# ----------------------------------------------------------------------------- the choice

P = protocol.PROTOCOLS["regularization_mlp"]


def trial_rows(scores: dict[str, list[float]], p=P):
    """Reference rows of trials: method -> its held-out score at each grid point."""
    return [dict(experiment=f"tune/{protocol.point_name(h)}/{p.folder}", run=f"{m}-{h}", method=m,
                 seed=0, metric=p.metric, value=v)
            for m, values in scores.items() for h, v in zip(p.grid, values)]


def test_select_takes_the_best_held_out_score_ties_to_the_smaller_step():
    rows = trial_rows({"sgd": [80, 85, 90, 90, 70], "dropout": [1, 2, 3, 4, 5],
                       "multirate": [50, float("nan"), 60, 40, 30]})
    choices = protocol.select(P, rows)
    assert choices["sgd"].h == P.grid[2] and choices["dropout"].h == P.grid[4]
    assert choices["multirate"].h == P.grid[2]  # nan never wins
    lm = protocol.PROTOCOLS["regularization_lm"]
    low = trial_rows({"sgd": [3, 2, 1, 1, 2]}, lm)
    assert protocol.select(lm, low)["sgd"].h == lm.grid[2]  # lower is better, ties to the smaller h


def test_select_never_reads_a_test_metric():
    trials = trial_rows({"sgd": [80, 85, 90, 88, 70], "dropout": [1, 2, 3, 4, 5],
                         "multirate": [5, 4, 3, 2, 1]})
    figure = [dict(experiment=P.folder, run=f"{m}-seed0", method=m, seed=0, metric="test_accuracy",
                   value=v) for m, v in (("sgd", 50.0), ("dropout", 60.0), ("multirate", 70.0))]
    poisoned = [dict(r, value=-1e9 if r["method"] == "sgd" else math.inf) for r in figure]
    chosen = protocol.select(P, trials)
    assert protocol.select(P, trials + figure) == protocol.select(P, trials + poisoned) == chosen


def test_check_tomls_names_the_table_to_set():
    chosen = (("sgd", 0.01), ("dropout", 0.04), ("multirate", 0.005))
    problems = protocol.check_tomls(P, "paper", {m: protocol.Choice(h, {}) for m, h in chosen})
    # paper's lrs are the base 0.01 (multirate: 0.02 = 2 x 0.01): dropout and multirate differ
    assert len(problems) == 2
    assert "[paper.methods.dropout]" in problems[0] and "set lr = 0.04" in problems[0]
    assert "[paper.methods.multirate]" in problems[1] and "set lr = 0.01" in problems[1]


def test_a_profile_method_table_wins_over_the_method_table(tmp_path):
    toml = tmp_path / "x.toml"
    toml.write_text("lr = 0.1\n[quick]\nepochs = 2\n[quick.methods.b]\nlr = 0.3\n"
                    "[methods.a]\n[methods.b]\nlr = 0.2\n")
    from experiments.core.config import RunConfig

    assert load_config(RunConfig, toml, "quick", "b").lr == 0.3
    assert load_config(RunConfig, toml, "paper", "b").lr == 0.2
    assert load_config(RunConfig, toml, "quick", "a").lr == 0.1
    toml.write_text("[quick.methods.c]\nlr = 0.3\n[methods.a]\n")
    with pytest.raises(ValueError, match=r"\[quick.methods.c\].*no such method"):
        load_config(RunConfig, toml, "quick", "a")


# ----------------------------------------------------------------------------- the claims' views

def test_sensitivity_reads_each_point_and_calls_a_changing_verdict_fragile():
    # The perceptron claim (multirate - sgd >= 0 reproduced, >= -0.5 direction) at each point.
    scores = {"sgd": [90, 91, 92, 91, 90], "dropout": [1, 1, 1, 1, 1], "multirate": [89, 95, 93, 90, 80]}
    rows = trial_rows(scores)
    rows += [dict(experiment=f"tune/{protocol.EPOCHS_POINT}/{P.folder}", run=f"{m}-x2", method=m, seed=0,
                  metric=P.metric, value=v) for m, v in (("sgd", 92.0), ("multirate", 93.0))]
    views = claims.sensitivity_views(Runs(rows))
    claim = next(c for c in claims.claims() if c.name.startswith("Perceptron"))
    cells, word = claims.sensitivity(claim, views)
    # chosen: sgd 0.01 (92), multirate 0.005 (95): +3; down: sgd 91, multirate 89: -2; up: 91 vs 93: +2
    assert cells["chosen"].startswith("3.00") and cells["one step down"].startswith("-2.00")
    assert cells["one step up"].startswith("2.00") and cells["2× epochs"].startswith("1.00")
    assert word == "fragile"


def _lm_curves(curves: dict[str, list[float]], seed: int = 0) -> list[dict]:
    return [dict(experiment="regularization_lm", run=f"{m}-{seed}", method=m, seed=seed,
                 metric=f"val_loss@epoch{e}", value=v)
            for m, values in curves.items() for e, v in enumerate(values, start=1)]


def test_the_matched_span_rise_compares_the_same_epochs_after_each_minimum():
    claim = next(c for c in claims.claims() if c.name.endswith("over a matched span"))
    # SGD: minimum at epoch 2, 2 epochs after it; multirate: minimum at epoch 3, and its run is 2
    # epochs longer. Over SGD's 2 epochs SGD rises 0.4 and multirate 0.1.
    runs = Runs(_lm_curves({"sgd": [2.0, 1.0, 1.2, 1.4], "multirate": [3.0, 2.0, 1.0, 1.05, 1.1, 1.5]}))
    assert claim.measure(runs, 0) == pytest.approx(0.1 / 0.4)
    assert claim.premise(runs) is None
    # A multirate minimum too close to the end to measure SGD's span after it: no value, and the
    # claim says why instead of judging no seed
    late = Runs(_lm_curves({"sgd": [2.0, 1.0, 1.2, 1.4], "multirate": [3.0, 2.0, 1.5, 1.0]}))
    assert claim.measure(late, 0) is None
    assert claim.premise(late) == ("multirate's minimum comes too late for SGD's span after it: "
                                   "epochs 4 vs 2 (multirate vs SGD) of 4")
    assert "not testable here (multirate's minimum comes too late" in claims.verdict(claim, late)
    assert claim.measure(Runs(_lm_curves({"sgd": [2.0, 1.0, 1.5]})), 0) is None  # multirate not run


def test_the_before_view_and_a_failed_premise():
    rows = [dict(experiment="before/patch", run=f"{m}-0", method=m, seed=0, metric=metric, value=v)
            for m, metric, v in (("small_lr", "clean_accuracy", 40.0),
                                 ("small_lr", "patch_only_accuracy", 95.0),
                                 ("large_lr", "clean_accuracy", 70.0),
                                 ("large_lr", "patch_only_accuracy", 10.0),
                                 ("multirate", "clean_accuracy", 39.0),
                                 ("multirate", "patch_only_accuracy", 10.0))]
    runs = Runs(rows)
    claim = next(c for c in claims.claims() if c.name.startswith("Patch: multirate generalises"))
    assert claims.verdict(claim, runs) is None  # nothing under "patch" itself
    text = claims.verdict(claim, claims.before(runs))
    assert text.startswith("-31.00") and "not testable here (clean accuracies 30.0 points apart" in text


def mlp_rows(seeds: dict[str, list[int]]) -> list[dict]:
    """Reference rows of the perceptron: each method's final test accuracy at `seeds[method]`."""
    return [dict(experiment="regularization_mlp", run=f"{m}-{seed}", method=m, seed=seed,
                 metric="test_accuracy", value=90.0 + seed + (m == "multirate"))
            for m, method_seeds in seeds.items() for seed in method_seeds]


def test_every_claim_says_which_runs_it_reads():
    # `omitted` names the runs a claim's values left out from what its measure reads
    for claim in claims.claims():
        experiment, methods = claim.measure.reads
        assert experiment in ("transfer", "patch", "regularization_lm", "regularization_mlp") and methods


def test_a_claim_says_which_seeds_it_left_out_and_why():
    import pandas as pd

    claim = next(c for c in claims.claims() if c.name.startswith("Perceptron"))
    complete = Runs(mlp_rows({"multirate": [0, 1, 2], "sgd": [0, 1, 2]}))
    assert claims.verdict(claim, complete) == "1.00 ± 0.00 (3 seeds): reproduced"  # as before
    # The reference keeps complete runs only: sgd's seed 1 is missing, the reason unknown ...
    runs = Runs(mlp_rows({"multirate": [0, 1, 2], "sgd": [0, 2]}))
    assert claims.verdict(claim, runs) == (
        "1.00 ± 0.00 (2 of 3 seeds; sgd seed 1 has no complete run): reproduced")
    # ... the results folder knows it (experiments.reporting.left_out.runs)
    left = {"regularization_mlp": pd.DataFrame([dict(method="sgd", seed=1, reason="diverged at epoch 4")])}
    assert "(2 of 3 seeds; sgd seed 1 diverged at epoch 4)" in claims.verdict(claim, runs, left)
    # A seed that no method ran is not left out; a seed another claim's experiment ran is not either.
    other = Runs(mlp_rows({"multirate": [0, 2], "sgd": [0, 2]})
                 + [dict(experiment="transfer", run="fc-1", method="fc", seed=1, metric="test_accuracy",
                         value=1.0)])
    assert claims.verdict(claim, other) == "1.00 ± 0.00 (2 seeds): reproduced"
    table = claims.table({"quick": runs}, left_out={"quick": left})
    assert "| 1.00 ± 0.00 (2 of 3 seeds; sgd seed 1 diverged at epoch 4): reproduced |" in table


@pytest.mark.parametrize("name", sorted(protocol.PROTOCOLS))
def test_every_toml_runs_the_step_sizes_the_committed_trials_choose(name):
    # `python -m experiments.protocol select all --check`, for every figure whose trials are recorded
    from experiments.reporting import reference

    p = protocol.PROTOCOLS[name]
    for profile in ("quick", "cpu"):
        choices = protocol.select(p, reference.read(reference.path(profile)))
        if any(c.scores for c in choices.values()):
            assert protocol.check_tomls(p, profile, choices) == []

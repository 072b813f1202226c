"""Sweeps: grid and random trials, the W&B export, and a tiny real sweep through the runner."""

import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from experiments import sweep as sw
from experiments.sweep import Sweep, load_sweep, trials, wandb_config
from tests.helpers import write_toy_experiment

SWEEPS = Path(__file__).resolve().parents[1] / "experiments" / "sweeps"


def random_sweep(seed=0, n=20, **kw):
    parameters = {"lr": {"distribution": "log_uniform", "min": 0.01, "max": 1.0},
                  "k": {"distribution": "int_uniform", "min": 2, "max": 10},
                  "momentum": {"distribution": "uniform", "min": 0.5, "max": 0.9},
                  "linear_drift": {"values": [True, False]}}
    return Sweep(module="experiments.transfer", method="multirate", search="random", trials=n, seed=seed,
                 parameters=parameters, **kw)


def test_grid_expansion():
    s = Sweep(module="experiments.transfer", method="multirate",
              parameters={"lr": {"values": [0.03, 0.1, 0.3]}, "k": {"values": [2, 5]}})
    got = trials(s)
    assert got == [{"lr": lr, "k": k} for lr in (0.03, 0.1, 0.3) for k in (2, 5)]
    assert sw.argv(s, got[0]) == ["--profile", "quick", "--method", "multirate", "--seeds", "0",
                                  "lr=0.03", "k=2"]


def test_overrides_format_like_the_cli_reads_them():
    s = Sweep(module="m", method="x", parameters={"train": {"values": [["layer4", "fc"]]}},
              fixed={"linear_drift": False, "epochs": 3, "lr": 0.1})
    assert sw.overrides(s, trials(s)[0]) == ["linear_drift=false", "epochs=3", "lr=0.1", "train=layer4,fc"]


def test_random_trials_reproducible_and_in_range():
    first, again, other = trials(random_sweep(0)), trials(random_sweep(0)), trials(random_sweep(1))
    assert first == again and first != other and len(first) == 20
    for t in first:
        assert 0.01 <= t["lr"] <= 1.0 and float(f"{t['lr']:.4g}") == t["lr"]
        assert isinstance(t["k"], int) and 2 <= t["k"] <= 10
        assert 0.5 <= t["momentum"] <= 0.9
        assert t["linear_drift"] in (True, False)
    # Log-uniform: about half the draws below the geometric midpoint 0.1, far more than uniform's 9 %.
    assert 5 <= sum(t["lr"] < 0.1 for t in first) <= 15
    assert len({t["lr"] for t in first}) == 20  # random search tries a new h every trial


def test_random_sampling_is_uniform_in_log():
    draws = trials(random_sweep(3, n=2000))
    below = sum(t["lr"] < 0.1 for t in draws) / len(draws)
    assert below == pytest.approx(0.5, abs=0.05)
    assert {t["k"] for t in draws} == set(range(2, 11))


@pytest.mark.parametrize("kwargs,message", [
    (dict(search="grid", parameters={"lr": {"distribution": "uniform", "min": 0, "max": 1}}),
     "grid search needs"),
    (dict(search="random", parameters={"lr": {"values": [1]}}), "invalid trials="),
    (dict(search="random", trials=2, parameters={"lr": {"distribution": "normal", "min": 0, "max": 1}}),
     "distribution"),
    (dict(search="random", trials=2, parameters={"lr": {"distribution": "log_uniform", "min": 0, "max": 1}}),
     "min > 0"),
    (dict(search="random", trials=2, parameters={"k": {"distribution": "int_uniform", "min": 1.5, "max": 3}}),
     "integer"),
    (dict(parameters={"seed": {"values": [1, 2]}}), "chosen by the sweep"),
    (dict(parameters={"lr": {"values": [1]}}, fixed={"lr": 2}), "also set in"),
    (dict(parameters={}), "invalid parameters="),
])
def test_bad_sweeps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sweep(module="m", method="x", **kwargs)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('module = "m"\nmethod = "x"\nn_trials = 3\n[parameters]\nlr = { values = [1] }\n')
    with pytest.raises(ValueError, match="unknown sweep keys \\['n_trials'\\]"):
        load_sweep(path)


def test_wandb_export_structure():
    config = wandb_config(random_sweep(0, n=9, seeds=[0, 1], fixed={"epochs": 5}))
    assert config["method"] == "random" and config["run_cap"] == 18
    assert config["metric"] == {"name": "test_accuracy", "goal": "maximize"}
    assert config["parameters"] == {
        "lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
        "k": {"distribution": "int_uniform", "min": 2, "max": 10},
        "momentum": {"distribution": "uniform", "min": 0.5, "max": 0.9},
        "linear_drift": {"values": [True, False]},
        "seed": {"values": [0, 1]},
    }
    assert config["command"] == ["${env}", "${interpreter}", "-m", "experiments.transfer", "--profile",
                                 "quick", "--method", "multirate", "epochs=5", "variant=sweep",
                                 "${args_no_hyphens}"]
    assert config["project"] == "multirate"  # the runs' wandb_project


def test_wandb_export_project_is_the_runs():
    config = wandb_config(random_sweep(0, n=2, seeds=[0], fixed={"wandb_project": "mine"}))
    assert config["project"] == "mine" and "wandb_project=mine" in config["command"]


def test_wandb_export_of_example_grid(tmp_path):
    out = tmp_path / "grid.yaml"
    sw.main([str(SWEEPS / "transfer_grid.toml"), "--wandb", str(out)])
    config = yaml.safe_load(out.read_text())
    assert config == wandb_config(load_sweep(SWEEPS / "transfer_grid.toml"))
    assert config["method"] == "grid" and "run_cap" not in config
    assert config["parameters"] == {"lr": {"values": [0.03, 0.1, 0.3]}, "k": {"values": [2, 5, 10]}}
    assert "seed=0" in config["command"] and config["command"][-1] == "${args_no_hyphens}"


def test_example_sweeps_have_the_same_budget():
    grid = load_sweep(SWEEPS / "transfer_grid.toml")
    rand = load_sweep(SWEEPS / "transfer_random.toml")
    assert len(trials(grid)) == len(trials(rand)) == 9
    for key, spec in rand.parameters.items():  # the random ranges are the grid's
        values = grid.parameters[key]["values"]
        assert (spec["min"], spec["max"]) == (min(values), max(values))


# ----------------------------------------------------------------------------- a tiny real sweep

TINY_TOML = '''
experiment = "tiny"
epochs = 2
batch_size = 16
wandb = "disabled"
device = "cpu"
checkpoint = false
[methods.multirate]
optimizer = "multirate"
fast = ["fc"]
'''


@pytest.fixture
def tiny_sweep(tmp_path, monkeypatch):
    write_toy_experiment(tmp_path, "tiny_sweep_exp", TINY_TOML)
    path = tmp_path / "tiny_sweep.toml"
    path.write_text(textwrap.dedent(f'''
        module = "tiny_sweep_exp"
        method = "multirate"
        search = "grid"
        seeds = [0, 1]
        metric = "test_loss"
        goal = "minimize"
        [fixed]
        results_dir = "{tmp_path / 'results'}"
        [parameters]
        lr = {{ values = [0.01, 0.2] }}
        k = {{ values = [1, 3] }}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("tiny_sweep_exp", None)


def test_dry_run_trains_nothing(tiny_sweep, capsys):
    sw.main([str(tiny_sweep), "--dry-run"])
    out = capsys.readouterr().out
    assert out.count("python -m tiny_sweep_exp --profile quick --method multirate --seeds 0,1") == 4
    assert "lr=0.2 k=3" in out and out.count("not started") == 8
    assert not (tiny_sweep.parent / "results").exists()
    assert sys.modules["tiny_sweep_exp"].BUILT == []


def test_tiny_local_sweep(tiny_sweep, capsys):
    sw.main([str(tiny_sweep)])
    module = sys.modules["tiny_sweep_exp"]
    assert len(module.BUILT) == 8  # 4 trials x 2 seeds, each a normal run
    sweep = load_sweep(tiny_sweep)
    rows = sw.summary(sweep)
    assert len(rows) == 4 and all(r["seeds"] == 2 and r["score"] > 0 for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores)  # minimize: best first
    csvs = sorted((tiny_sweep.parent / "results" / "quick" / "tiny").glob("multirate-seed*.csv"))
    assert len(csvs) == 8
    assert f"best: lr={rows[0]['lr']} k={rows[0]['k']}" in capsys.readouterr().out

    sw.main([str(tiny_sweep)])  # finished runs are skipped
    assert len(module.BUILT) == 8
    sw.main([str(tiny_sweep), "--summary"])
    assert "best:" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.toml")), ids=lambda p: p.stem)
def test_example_sweeps_build_valid_configs(path):
    sweep = load_sweep(path)
    for trial, cfgs in sw.configs(sweep):  # every trial's config, as the entry point will build it
        assert [cfg.seed for cfg in cfgs] == sweep.seeds
        for key, value in trial.items():
            assert getattr(cfgs[0], key) == value


def test_each_trial_is_its_own_wandb_group():
    s = random_sweep(0, n=2, seeds=[0, 1])
    labels = [sw.variant(s, trial) for trial in trials(s)]
    assert len(set(labels)) == 2 and all(label.startswith(f"variant={s.name}/lr=") for label in labels)
    assert sw.variant(s) == f"variant={s.name}"  # the exported W&B sweep: one label for all its runs


def test_a_sweep_file_with_a_syntax_error_is_named(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('module = "m"\nmethod = "x"\n[parameters\n')
    with pytest.raises(ValueError, match=f"^{path} is not valid TOML"):
        load_sweep(path)


@pytest.mark.parametrize("text, message", [
    ('method = "x"\n[parameters]\nlr = { values = [1] }\n', "invalid module=None: must be a string"),
    ('module = "m"\nmethod = "x"\nseeds = [0, -1]\n[parameters]\nlr = { values = [1] }\n', "invalid seeds="),
    ('module = "m"\nmethod = "x"\ntrials = "3"\nsearch = "random"\n[parameters]\nlr = { values = [1] }\n',
     "invalid trials='3': must be an integer"),
    ('module = "m"\nmethod = "x"\nsearch = "random"\ntrials = 2\n[parameters]\n'
     'lr = { distribution = "uniform", min = "a", max = 1 }\n', "`min` and `max` must be finite numbers"),
])
def test_an_impossible_sweep_file_is_named_with_the_key(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
        load_sweep(path)


@pytest.mark.parametrize("table, line", [("parameters", "lrr = {{ values = [0.1] }}"),
                                         ("fixed", "epochz = 2")])
def test_an_unknown_key_is_reported_in_the_sweep_files_table(tiny_sweep, table, line):
    """It was reported as coming from "the command line"."""
    text = tiny_sweep.read_text().replace(f"[{table}]\n", f"[{table}]\n{line.format()}\n")
    tiny_sweep.write_text(text)
    key = line.split()[0]
    with pytest.raises(ValueError, match=re.escape(f"unknown config key {key!r} in {tiny_sweep} [{table}]")):
        sw.main([str(tiny_sweep)])


def test_an_impossible_trial_fails_before_the_first_trial_runs(tiny_sweep):
    """Every trial x seed is checked first: the last trial's lr=inf stops the sweep before any run."""
    tiny_sweep.write_text(tiny_sweep.read_text().replace("values = [0.01, 0.2]", "values = [0.01, inf]"))
    with pytest.raises(ValueError, match="invalid lr=inf: must be a finite number"):
        sw.main([str(tiny_sweep)])
    assert sys.modules["tiny_sweep_exp"].BUILT == []
    assert not (tiny_sweep.parent / "results").exists()

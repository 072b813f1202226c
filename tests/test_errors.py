"""User errors are one line naming the file or key and the fix, not a traceback (issue 13.7);
`--debug` or MULTIRATE_DEBUG=1 shows the traceback; Ctrl-C says how to resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.core import errors, runner
from experiments.core.config import RunConfig
from tests.helpers import Blobs, write_toml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["prog"])


def failing(err):
    def main():
        raise err
    return main


@pytest.mark.parametrize("err, expected", [
    (ValueError("unknown config key 'epoch' in command line; did you mean 'epochs'?"),
     "unknown config key 'epoch'"),
    (FileNotFoundError(2, "No such file or directory", "data/MNIST/train-images"),
     "data/MNIST/train-images: No such file or directory"),
    (PermissionError(13, "Permission denied", "results/quick/x"),
     "cannot write results/quick/x: permission denied; choose a writable folder with results_dir=PATH"),
    (errors.UserError("results/a.csv is damaged\n(two lines)"), "results/a.csv is damaged (two lines)"),
], ids=["value", "missing-file", "read-only", "multi-line"])
def test_a_user_error_is_one_line(capsys, err, expected):
    with pytest.raises(SystemExit) as exit_:
        errors.cli(failing(err))
    assert exit_.value.code == errors.EXIT_USER_ERROR
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert expected in line and line.startswith("error: ") and "--debug" in line and captured.out == ""


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--debug", "lr=1"])
    seen = []

    def main():
        seen.append(list(sys.argv))
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        errors.cli(main)
    assert seen == [["prog", "lr=1"]]  # main never sees --debug
    monkeypatch.setattr(sys, "argv", ["prog"])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="bad"):
        errors.cli(main)


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        errors.cli(failing(ZeroDivisionError("a bug, not a user error")))


class CtrlC(Blobs):
    def loss(self, model, batch):
        if self.loss_calls == 20:  # epoch 3: epochs 1 and 2 are checkpointed
            raise KeyboardInterrupt
        return super().loss(model, batch)


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path, capsys):
    toml = write_toml(tmp_path / "blobs.toml")
    argv = ["--method", "train_all", f"results_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_:
        errors.cli(lambda: runner.main(argv, RunConfig, toml, CtrlC))
    assert exit_.value.code == errors.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == ["interrupted; rerun the same command to resume"]
    tasks = []
    (result,) = runner.main(argv, RunConfig, toml, lambda cfg: tasks.append(Blobs(cfg)) or tasks[-1])
    assert result["status"] == "complete" and tasks[0].loss_calls == 2 * 8  # resumed after epoch 2


def test_a_malformed_toml_names_the_file(tmp_path):
    toml = tmp_path / "broken.toml"
    toml.write_text("lr = 0.1\n[quick\nepochs = 2\n")
    with pytest.raises(ValueError, match=f"{toml} is not valid TOML"):
        runner.main([f"results_dir={tmp_path}"], RunConfig, toml, Blobs)


def test_an_unwritable_results_folder_is_one_line(tmp_path, capsys):
    toml = write_toml(tmp_path / "blobs.toml")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a results folder below a file cannot be made (as root, 0o500 would not stop us)
    with pytest.raises(SystemExit):
        errors.cli(lambda: runner.main([f"results_dir={blocker}"], RunConfig, toml, Blobs))
    (line,) = capsys.readouterr().err.splitlines()
    assert str(blocker) in line and "Traceback" not in line


def test_an_entry_point_prints_one_line():
    """The real command line: an unknown key is one line on stderr, exit status 2."""
    done = subprocess.run([sys.executable, "-m", "experiments.regularization_mlp", "epoch=3"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == errors.EXIT_USER_ERROR, done.stderr
    (line,) = done.stderr.splitlines()
    assert "unknown config key 'epoch' in command line" in line and "'epochs'" in line


# ----------------------------------------------------------------------------- every typed key

EXPERIMENTS = ("transfer", "transfer_text", "patch", "regularization_lm", "regularization_mlp", "convergence")
FREE_TEXT = {"experiment", "results_dir", "wandb_project", "variant", "pretrained", "data_dir"}  # any string


def _invalid_values(name: str, typ, rng) -> list[str]:
    """A few command-line values that `name` of type `typ` must refuse, drawn by `rng`."""
    import typing

    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is not None and type(None) in args:  # Optional[X]: X's invalid values ("none" is valid)
        return _invalid_values(name, next(a for a in args if a is not type(None)), rng)
    junk = rng.choice(["x", "1O", "0x", "--", "1,2"])
    if typ is int:
        pool = [junk, "1.5", "", "nan", "inf", "1e3", "true" if rng.random() < 0.5 else "0.0"]
        if name in ("seed", "seeds") or name.endswith("_seed"):
            pool += ["-1", str(2**32), str(2**64 + rng.randrange(10**6))]
    elif typ is float:
        pool = ["nan", "inf", "-inf", "1e999", "-1e400", junk, ""]
    elif typ is bool:
        pool = ["maybe", "2", "", "-1", junk]
    elif origin is list and args[0] in (int, float):
        pool = ["1,x", "nan" if args[0] is float else "1.5", f"1,{rng.choice(['inf', 'nan', 'x', '-'])}"]
        if name == "seeds":
            pool += ["0,-1", f"1,{2**40}"]
    elif typ is str:
        pool = ["no such choice!", "  ", "-"]  # "" can mean a default (transfer: dataset)
    else:
        return []
    return rng.sample(pool, k=min(3, len(pool)))


def _typed_keys(rng):
    import dataclasses
    import importlib
    import typing

    from experiments.core.config import experiment_config

    for name in EXPERIMENTS:
        module = importlib.import_module(f"experiments.{name}")
        config_cls, _ = experiment_config(module)
        hints = typing.get_type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            if f.name in ("profile", "method") or f.name in FREE_TEXT:
                continue
            values = _invalid_values(f.name, hints[f.name], rng)
            if typing.get_origin(hints[f.name]) is list and typing.get_args(hints[f.name])[0] is str:
                continue  # any list of names is a list of str; the experiment's own checks decide
            assert values, f"{name}.{f.name}: no invalid values for type {hints[f.name]}"
            for value in values:
                yield module, f.name, value


def test_every_typed_key_of_every_experiment_refuses_invalid_values(tmp_path, capsys, monkeypatch):
    """Property test: random invalid values (a seeded generator) for every typed key of every
    experiment's config class. Each one: one line on stderr naming the key, exit status 2, and
    nothing written (the results folder is not even made)."""
    import random

    from experiments import convergence
    from experiments.core.config import experiment_config, list_methods

    def no_run(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(runner, "run", no_run)
    monkeypatch.setattr(convergence, "run", no_run)
    rng = random.Random(29)
    results = tmp_path / "results"
    tried = 0
    for module, key, value in _typed_keys(rng):
        toml = experiment_config(module)[1]
        one_method = ["--method", list_methods(toml)[0]] if module is not convergence else []
        with pytest.raises(SystemExit) as exit_:
            errors.cli(lambda: module.main([*one_method, f"results_dir={results}", f"{key}={value}"]))
        captured = capsys.readouterr()
        case = f"{module.__name__} {key}={value!r}: {captured.err!r}"
        assert exit_.value.code == errors.EXIT_USER_ERROR, case
        (line,) = captured.err.splitlines()
        assert line.startswith("error: ") and key in line and "Traceback" not in line, case
        assert not results.exists(), case
        tried += 1
    assert tried > 200


@pytest.mark.parametrize("argv, names", [
    (["--seeds", "0,-1"], "'-1'"),
    (["--seeds", f"0,{2**64}"], str(2**64)),
    (["lr=inf"], "lr=inf"),
    (["weight_decay=inf"], "weight_decay=inf"),
    (["device=gpu0"], "device='gpu0'"),
])
def test_nothing_runs_or_is_written_when_one_run_of_the_command_is_impossible(tmp_path, capsys, argv, names):
    """`--seeds 0,-1` trained seed 0 and wrote its CSV before failing without naming the seed."""
    toml = write_toml(tmp_path / "blobs.toml")
    built = []
    with pytest.raises(SystemExit) as exit_:
        errors.cli(lambda: runner.main([*argv, f"results_dir={tmp_path / 'results'}"], RunConfig, toml,
                                       lambda cfg: built.append(cfg) or Blobs(cfg)))
    assert exit_.value.code == errors.EXIT_USER_ERROR and built == []
    (line,) = capsys.readouterr().err.splitlines()
    assert names in line
    assert not (tmp_path / "results").exists()

"""User errors are one line naming the file or key and the fix, not a traceback (issue 13.7);
`--debug` or MULTIRATE_DEBUG=1 shows the traceback; Ctrl-C says how to resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import errors, runner
from experiments.config import RunConfig
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

"""Nothing lost: runs writing into one results folder at the same time lose no row, a diverging run
stops without failing the runs after it, and a bad config anywhere in a sweep fails before any run.
(Checksummed downloads: tests/test_data.py; unknown keys and impossible values named:
tests/test_config.py; the NaN stop and the skip of finished runs: tests/test_runner.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_preemption import write_toml
from test_runner import Blobs

from experiments import runner
from experiments.config import RunConfig
from experiments.runlog import read_results, read_runs

ROOT = Path(__file__).resolve().parents[1]
CHILD = f"""
import sys

import pytest
sys.path.insert(0, {str(ROOT / "tests")!r})
from experiments import runner
from experiments.config import RunConfig
from test_runner import Blobs
runner.main(sys.argv[2:], RunConfig, sys.argv[1], Blobs)
"""


def test_two_processes_into_one_folder_lose_no_row(tmp_path):
    toml = write_toml(tmp_path / "blobs.toml")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(toml), "--seeds", "1,3",
                              f"results_dir={out}", "epochs=2"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # this process writes its runs while the child writes its own
        ours = runner.main(["--seeds", "0,2", f"results_dir={out}", "epochs=2"], RunConfig, toml, Blobs)
    finally:
        output = child.communicate(timeout=120)[0]
    assert child.returncode == 0, output
    assert [r["status"] for r in ours] == ["complete"] * 4

    folder = out / "quick" / "blobs"
    runs = read_runs(folder)
    assert len(runs) == 2 * 4 and set(runs["status"]) == {"complete"}  # 2 methods x 4 seeds
    frame = read_results(folder)
    # Every run logged 2 epochs x (train_loss, accuracy, test_loss), each once.
    assert len(frame) == 8 * 2 * 3
    assert frame.groupby("run").size().eq(6).all() and set(frame["run"]) == set(runs["run"])
    assert sorted(frame["seed"].unique()) == list(range(4))
    assert not frame.duplicated(["run", "epoch", "metric"]).any()
    assert not list(folder.rglob("*.tmp"))  # no half-written file left behind


def test_a_diverging_run_does_not_fail_its_neighbours(tmp_path, capsys):
    toml = write_toml(tmp_path / "blobs.toml")
    with open(toml, "a") as f:
        f.write('[methods.huge_lr]\nlr = 1e6\n')
    results = runner.main(["--method", "train_all,huge_lr,multirate", f"results_dir={tmp_path}", "epochs=2"],
                          RunConfig, toml, Blobs)
    assert [r["status"] for r in results] == ["complete", "diverged", "complete"]
    runs = read_runs(tmp_path / "quick" / "blobs").set_index("method")["status"]
    assert runs.to_dict() == {"train_all": "complete", "huge_lr": "diverged", "multirate": "complete"}
    assert "diverged" in capsys.readouterr().out


def test_a_bad_config_anywhere_fails_before_any_run(tmp_path):
    toml = write_toml(tmp_path / "blobs.toml")
    with open(toml, "a") as f:
        f.write("[methods.bad]\nmomentum = -0.5\n")
    with pytest.raises(ValueError, match="momentum=-0.5"):
        runner.main(["--method", "train_all,bad", f"results_dir={tmp_path / 'out'}"], RunConfig, toml, Blobs)
    assert not (tmp_path / "out").exists()  # train_all, listed first, did not start

"""Nothing lost: runs writing into one results folder at the same time lose no row, a diverging run
stops without failing the runs after it, and a bad config anywhere in a sweep fails before any run.
Nothing silently wrong (issue 13): a second copy of a running run writes nothing; a damaged or
missing result is refused naming the file; an impossible optimizer value fails before any run.
(Checksummed downloads: tests/test_data.py; unknown keys and impossible values named:
tests/test_config.py; the NaN stop and the skip of finished runs: tests/test_runner.py.)"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.core import runner
from experiments.core.config import RunConfig
from experiments.core.runlog import ResultError, read_results, read_rows, read_runs
from tests.helpers import Blobs, make_cfg, write_toml

ROOT = Path(__file__).resolve().parents[1]
CHILD = f"""
import sys

import pytest
sys.path.insert(0, {str(ROOT / "tests")!r})
from experiments.core import runner
from experiments.core.config import RunConfig
from helpers import Blobs
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


# --- Issue 13: a second copy of a running run, damaged or missing results, impossible optimizer values

HOLD = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT / "tests")!r})
from experiments.core import runner
from experiments.core.config import RunConfig
from helpers import Blobs

class Held(Blobs):  # at its 12th minibatch (mid-epoch 2) it signals, then waits for the go file
    def loss(self, model, batch):
        if self.loss_calls == 11:
            Path(sys.argv[1]).touch()
            deadline = time.monotonic() + 60
            while not Path(sys.argv[2]).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().loss(model, batch)

runner.main(sys.argv[4:], RunConfig, sys.argv[3], Held)
"""
SECOND = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from experiments.core import errors, runner
from experiments.core.config import RunConfig
from helpers import Blobs
errors.cli(lambda: runner.main(sys.argv[2:], RunConfig, sys.argv[1], Blobs))
"""


def test_a_second_copy_of_a_running_run_writes_nothing(tmp_path):
    """Issue 13.1: start a run, start the same command while it trains; the second stops with one
    line naming the run and writes nothing, the first finishes, and its CSV is whole."""
    toml = write_toml(tmp_path / "blobs.toml")
    argv = ["--method", "train_all", f"results_dir={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting, go = tmp_path / "waiting", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(waiting), str(go), str(toml), *argv], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not waiting.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting.exists(), first.communicate()[0] if first.poll() is not None else "first run hung"
        folder = tmp_path / "out" / "quick" / "blobs"
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        second = subprocess.run([sys.executable, "-c", SECOND, str(toml), *argv], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        go.touch()
        output = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and second.stdout == "", second.stderr
    (line,) = second.stderr.splitlines()
    assert "is being trained by pid" in line and ".json" in line and "Traceback" not in line
    assert after == before  # the second copy wrote nothing
    assert first.returncode == 0, output
    runs = read_runs(folder)
    assert list(runs["status"]) == ["complete"]
    frame = read_results(folder)  # verified against the JSON's row count and SHA-256
    assert len(frame) == 4 * 3 and sorted(frame.epoch.unique()) == [1, 2, 3, 4]
    # Once the first has finished, the same command skips the run and leaves its CSV alone.
    csv_file = next(folder.glob("*.csv"))
    finished = csv_file.read_bytes()
    rerun = subprocess.run([sys.executable, "-c", SECOND, str(toml), *argv], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "complete" in rerun.stdout, rerun.stderr
    assert csv_file.read_bytes() == finished


def finished_run(tmp_path, **kw):
    cfg = make_cfg(tmp_path, **kw)
    result = runner.run(cfg, Blobs())
    assert result["status"] == "complete"
    return cfg, result, cfg.run_dir / f"{cfg.run_name}.csv"


def test_a_cut_value_is_refused_naming_the_file(tmp_path):
    """Issue 13.2: `test_accuracy,78.52` cut to `78` (here: one accuracy cut to two digits)."""
    cfg, _, csv_file = finished_run(tmp_path)
    text = csv_file.read_text()
    value = next(r["value"] for r in read_rows(csv_file) if r["metric"] == "accuracy")
    cut = text.replace(f"accuracy,{value!r}", f"accuracy,{value:.2f}"[:-1], 1)
    assert cut != text
    csv_file.write_text(cut)
    for read in (lambda: read_results(cfg.run_dir), lambda: read_results(cfg.run_dir, only_complete=True),
                 lambda: runner.run(cfg, Blobs())):
        with pytest.raises(ResultError, match=re.escape(str(csv_file))) as err:
            read()
        assert "rerun=true" in str(err.value) and "\n" not in str(err.value)
    task = Blobs()  # the remedy it names: rerun=true trains the run again, to the same bits
    again = runner.run(make_cfg(tmp_path, rerun=True), task)
    assert task.loss_calls == 4 * 8 and read_rows(csv_file) == again["rows"]
    assert read_results(cfg.run_dir)["value"].tolist() == [r["value"] for r in again["rows"]]


@pytest.mark.parametrize("keep_checkpoint", [True, False], ids=["from-checkpoint", "retrained"])
def test_the_deleted_csv_of_a_complete_run_is_noticed(tmp_path, keep_checkpoint, capsys):
    """Issue 13.2: readers refuse the folder naming the missing file; the runner rebuilds it (from the
    kept checkpoint without training, else by training again) instead of skipping the run."""
    cfg, done, csv_file = finished_run(tmp_path, checkpoint=keep_checkpoint)
    csv_file.unlink()
    with pytest.raises(ResultError, match=re.escape(str(csv_file)) + ".*missing"):
        read_results(cfg.run_dir)
    task = Blobs()
    again = runner.run(cfg, task)
    assert again["status"] == "complete" and task.loss_calls == (0 if keep_checkpoint else 4 * 8)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in done["rows"]]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in again["rows"]] == strip
    assert str(csv_file) in capsys.readouterr().err
    assert read_results(cfg.run_dir)["value"].tolist() == [r["value"] for r in done["rows"]]


@pytest.mark.parametrize("damage", ["csv-garbage", "csv-header", "json-truncated"])
def test_a_damaged_csv_or_json_is_one_line_naming_the_file(tmp_path, damage):
    cfg, _, csv_file = finished_run(tmp_path)
    json_file = csv_file.with_suffix(".json")
    if damage == "csv-garbage":  # a row that does not parse; its JSON has no digest (an old record)
        record = json.loads(json_file.read_text())
        json_file.write_text(json.dumps({**record, "csv_sha256": None}))
        csv_file.write_text(csv_file.read_text() + "x,y,z,not-a-seed,1,2,m,v,t\n")
        damaged = csv_file
    elif damage == "csv-header":
        csv_file.write_text("run;experiment\n")
        damaged = csv_file
    else:
        json_file.write_text(json_file.read_text()[:40])
        damaged = json_file
    for read in (lambda: read_results(cfg.run_dir), lambda: runner.run(cfg, Blobs())):
        with pytest.raises(ResultError, match=re.escape(str(damaged))) as err:
            read()
        assert "\n" not in str(err.value)
    if damage == "json-truncated":
        with pytest.raises(ResultError, match=re.escape(str(damaged))):
            read_runs(cfg.run_dir)


@pytest.mark.parametrize("overrides", [["momentum=1.5"], ["partition=random_subgroups", "slow_fraction=0"],
                                       ["partition=random_subgroups", "slow_fraction=1"]],
                         ids=["momentum=1.5", "slow_fraction=0", "slow_fraction=1"])
def test_an_impossible_optimizer_value_fails_before_any_run(tmp_path, overrides):
    """Issue 13.4: `--method sgd,multirate momentum=1.5` used to train and record the sgd run, then
    crash on multirate; the optimizer's own checks now refuse it before the first run."""
    toml = write_toml(tmp_path / "blobs.toml")
    with open(toml, "a") as f:
        f.write("[methods.sgd]\n")
    with pytest.raises(ValueError, match=overrides[-1].split("=")[0]):
        runner.main(["--method", "sgd,multirate", f"results_dir={tmp_path / 'out'}", *overrides],
                    RunConfig, toml, Blobs)
    assert not (tmp_path / "out").exists()  # no CSV, no JSON, not even the folder

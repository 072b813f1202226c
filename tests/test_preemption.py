"""Preemption: a real process gets SIGTERM/SIGUSR1 mid-epoch, checkpoints, exits EXIT_PREEMPTED and
requeues itself under Slurm; rerunning the same command ends on the same bits as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.core import preemption, runner
from experiments.core.config import RunConfig
from tests.helpers import Blobs, write_toml

ROOT = Path(__file__).resolve().parents[1]
STOP = 11  # the signal arrives during minibatch STOP + 1 (of 8 per epoch): mid-epoch, mid-cycle for k=3

# The child trains through runner.main, as `python -m experiments.X` does. When its minibatch
# STOP + 1 starts, it tells the parent (a marker file) and waits for the signal inside the loss.
CHILD = f"""
import sys, time
sys.path.insert(0, {str(ROOT / "tests")!r})
from experiments.core import preemption, runner
from experiments.core.config import RunConfig
from helpers import Blobs

class WaitForSignal(Blobs):
    def loss(self, model, batch):
        if self.loss_calls == {STOP}:
            open(sys.argv[1], "w").close()
            deadline = time.monotonic() + 60
            while runner.PREEMPTION.signal is None and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().loss(model, batch)

runner.main(sys.argv[3:], RunConfig, sys.argv[2], WaitForSignal)
"""


def fake_scontrol(folder):
    """An `scontrol` that records its arguments, so the requeue call can be checked without Slurm."""
    folder.mkdir()
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "calls"}\n')
    script.chmod(0o755)
    return folder / "calls"


@pytest.mark.parametrize("sig, slurm", [(signal.SIGTERM, True), (signal.SIGUSR1, False)],
                         ids=["sigterm-under-slurm", "sigusr1"])
def test_signal_mid_epoch_checkpoints_and_the_rerun_matches(tmp_path, sig, slurm):
    toml = write_toml(tmp_path / "blobs.toml")
    argv = ["--method", "multirate", "--seeds", "0,1", f"results_dir={tmp_path / 'out'}"]
    calls = fake_scontrol(tmp_path / "bin")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{calls.parent}:{os.environ['PATH']}"}
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        env.pop(key, None)
    if slurm:
        env.update(SLURM_JOB_ID="80", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")
    marker = tmp_path / "waiting"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(toml), *argv], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), child.communicate()[0] if child.poll() is not None else "child hung"
        child.send_signal(sig)
        output = child.communicate(timeout=60)[0]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == runner.EXIT_PREEMPTED, output
    assert "preempted by a signal" in output
    if slurm:
        assert calls.read_text() == "requeue 77_3\n"  # the array task, not the whole array
    else:
        assert not calls.exists() and "rerun the same command" in output

    folder = tmp_path / "out" / "quick" / "blobs"
    (record,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]  # seed 1 never started
    assert record["status"] == "running" and record["config"]["seed"] == 0
    ckpt = torch.load(folder / "checkpoints" / f"{record['run']}.pt", weights_only=True)
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["batch"] == STOP + 1 - 8  # mid-epoch

    tasks = []

    def counted(cfg):
        tasks.append(Blobs(cfg))
        return tasks[-1]

    resumed = runner.main(argv, RunConfig, toml, counted)
    assert [r["status"] for r in resumed] == ["complete", "complete"]
    assert tasks[0].loss_calls == 4 * 8 - (STOP + 1)  # continued from the checkpoint
    straight = runner.main([*argv[:-1], f"results_dir={tmp_path / 'straight'}"], RunConfig, toml, Blobs)
    for got, expected in zip(resumed, straight):
        assert got["run_name"] == expected["run_name"]
        for name, value in expected["model"].state_dict().items():
            assert torch.equal(got["model"].state_dict()[name], value), name
        strip = [{k: v for k, v in r.items() if k != "time_s"} for r in expected["rows"]]
        assert [{k: v for k, v in r.items() if k != "time_s"} for r in got["rows"]] == strip


def test_signal_handlers_are_restored_after_a_run(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in preemption.PREEMPT_SIGNALS}
    cfg = RunConfig(experiment="blobs", results_dir=str(tmp_path), epochs=1, batch_size=32,
                    wandb="disabled", device="cpu")
    assert runner.run(cfg, Blobs())["status"] == "complete"
    assert {sig: signal.getsignal(sig) for sig in preemption.PREEMPT_SIGNALS} == before


def test_requeue_outside_slurm_does_nothing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert runner.requeue_slurm_job() is None

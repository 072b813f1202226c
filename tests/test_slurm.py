"""experiments.core.slurm: the array scripts it writes, and a real array job on a one-node Slurm cluster.

The cluster tests (marked slurm and slow: `pytest -m slurm`) need `sinfo` to show an idle node.
Under CI (CI set) they start one themselves with .ci/slurm-up.sh (as root: apt-get install slurm-wlm
munge, then the daemons); elsewhere, or where that fails, they are skipped with the reason, printed.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.core import registry, slurm
from experiments.core.runlog import read_results, read_runs

ROOT = Path(__file__).resolve().parents[1]
# Tiny quick-profile transfer runs: seconds each, most of it Python's start.
TINY = ["epochs=1", "target_train=256", "target_test=128", "source_train=512", "source_test=128",
        "pretrain_epochs=1", "batch_size=64", "widths=8,8,16,16", "blocks=1,1,1,1"]


def test_tasks_are_methods_times_seeds_of_every_part():
    tasks = slurm.array_tasks("transfer", "quick", [0, 1])
    assert len(tasks) == 2 * (6 + 7)  # 6 ResNet methods and 7 DistilBERT methods
    assert tasks[0] == ["experiments.transfer", "--profile", "quick", "--method", "train_all", "--seeds", "0",
                        "model=small_resnet"]
    assert tasks[1][-2:] == ["1", "model=small_resnet"]
    assert tasks[-1] == ["experiments.transfer_text", "--profile", "quick",
                         "--method", "distilbert_head_only", "--seeds", "1"]
    paper = slurm.array_tasks("transfer", "paper", [0], ["multirate"], ["lr=0.01"])
    assert paper == [["experiments.transfer", "--profile", "paper", "--method", "multirate", "--seeds", "0",
                      f"model={m}", "lr=0.01"] for m in ("resnet50", "resnet34")]
    with pytest.raises(ValueError, match="unknown method"):
        slurm.array_tasks("transfer", "quick", [0], ["nope"])


@pytest.mark.parametrize("figure", sorted(registry.EXPERIMENTS))
def test_every_figure_names_files_that_exist(figure):
    fig = registry.EXPERIMENTS[figure]
    assert (ROOT / (fig.figure.replace(".", "/") + ".py")).exists()
    for part in fig.parts:
        assert (ROOT / (part.module.replace(".", "/") + ".py")).exists()
        assert part.toml_path.exists()
    assert slurm.array_tasks(figure, "quick", [0, 1])


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_array_script_runs_task_i(tmp_path, gpus):
    tasks = slurm.array_tasks("transfer", "quick", [0, 1], ["train_all", "multirate"])
    text = slurm.array_script(tasks, "job", tmp_path, cpus=4, gpus=gpus, time="01:00:00", partition="p",
                              mem="8G", python="echo")
    assert "#SBATCH --array=0-3" in text and "#SBATCH --requeue" in text and "#SBATCH --partition=p" in text
    assert ("#SBATCH --gres=gpu:" in text) == (gpus > 0)
    assert f"#SBATCH --signal=B:{'TERM' if gpus > 1 else 'USR1'}@120" in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    for i, task in enumerate(tasks):  # with python=echo, each task prints its command line
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_CPUS_PER_TASK": "4"}
        out = subprocess.run(["bash", script], env=env, capture_output=True, text=True, check=True).stdout
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] if gpus > 1 else []
        assert out.split() == [*torchrun, "-m", *task]
    env["SLURM_ARRAY_TASK_ID"] = "4"
    bad = subprocess.run(["bash", script], env=env, capture_output=True)
    assert bad.returncode == 1 and b"no task 4" in bad.stderr


def test_dry_run_writes_both_scripts(tmp_path, capsys):
    assert slurm.main(["transfer", "--seeds", "0", "--method", "multirate", "--dry-run",
                       f"results_dir={tmp_path}"]) is None
    folder = tmp_path / "quick" / "slurm"
    assert "--array=0-0" in (folder / "transfer.sbatch").read_text()
    figure = (folder / "transfer-figure.sbatch").read_text()
    assert f"-m figures.transfer --profile quick --results-dir {tmp_path}" in figure
    assert "not submitted" in capsys.readouterr().out


def _idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and "idle" in done.stdout.split()


@pytest.fixture(scope="module")
def cluster():
    reason = None
    if not _idle():
        if os.environ.get("CI"):
            up = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True,
                                timeout=900)
            if up.returncode != 0:
                reason = f"Slurm test cluster could not start: {up.stderr.strip()[-500:]}"
        else:
            reason = "no Slurm cluster answers `sinfo`; start a one-node one (as root) with .ci/slurm-up.sh"
    if reason:
        print(f"\nSKIPPED tests/test_slurm.py cluster test: {reason}", file=sys.__stderr__, flush=True)
        pytest.skip(reason)


def _wait(jobs: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"],
                                capture_output=True, text=True).stdout.strip()
        if not queued:
            return
        time.sleep(1)
    raise AssertionError(f"jobs still queued after {timeout} s: {queued}")


@pytest.mark.slow
@pytest.mark.slurm
def test_array_job_on_a_real_cluster(cluster, tmp_path):
    start = time.monotonic()
    array_job, figure_job = slurm.main(["transfer", "--profile", "quick", "--seeds", "0,1",
                                        "--method", "train_all,multirate", "--time", "00:10:00",
                                        f"results_dir={tmp_path}", *TINY])
    _wait([array_job, figure_job], timeout=600)
    folder = tmp_path / "quick" / "transfer"
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "quick" / "slurm" / "logs").glob("*.out")))
    runs = read_runs(folder)
    assert sorted(zip(runs["method"], runs["seed"])) == [("multirate", 0), ("multirate", 1),
                                                         ("train_all", 0), ("train_all", 1)], logs
    assert set(runs["status"]) == {"complete"}, logs
    frame = read_results(folder)
    assert frame.groupby("run").size().to_dict() == {run: 3 for run in runs["run"]}  # 1 epoch x 3 metrics
    assert (tmp_path / "quick" / "figures" / "transfer.png").exists(), logs  # the afterany job drew it
    print(f"\nSlurm array job (4 tasks) + figure job: {time.monotonic() - start:.1f} s", file=sys.__stderr__)


@pytest.mark.slow
@pytest.mark.slurm
def test_preempted_task_requeues_and_ends_on_the_same_bits(cluster, tmp_path):
    import torch

    longer = [*TINY[1:], "epochs=8", "target_train=3072"]  # 48 minibatches an epoch, a few seconds in all
    (array_job, figure_job) = slurm.main(["transfer", "--seeds", "0", "--method", "multirate",
                                          f"results_dir={tmp_path / 'slurm'}", *longer])
    task = f"{array_job}_0"
    checkpoints = tmp_path / "slurm" / "quick" / "transfer" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*.pt")) and time.monotonic() < deadline:  # after epoch 1
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", task], check=True)
    log = tmp_path / "slurm" / "quick" / "slurm" / "logs" / f"multirate-transfer-quick-{array_job}_0.out"
    def log_text():
        return log.read_text() if log.exists() else ""

    while time.monotonic() < deadline and "requeued Slurm job" not in log_text():
        time.sleep(0.2)
    assert f"requeued Slurm job {task}" in log_text(), log_text()
    # Slurm starts a requeued job again after AuthInfo=cred_expire seconds (10 in .ci/slurm-up.sh).
    _wait([array_job, figure_job], timeout=300)
    text = log.read_text()
    assert "signal caught, checkpointed at step" in text and text.count("complete") == 1, text

    # The same run, never interrupted, with the Slurm task's thread count (OMP_NUM_THREADS from
    # --cpus-per-task=1): another count sums in another order and gives other bits.
    subprocess.run([sys.executable, "-m", "experiments.transfer", "--method", "multirate", "--seeds", "0",
                    f"results_dir={tmp_path / 'here'}", *longer], cwd=ROOT, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    (got,) = read_results(tmp_path / "slurm" / "quick" / "transfer").groupby("run")
    expected = read_results(tmp_path / "here" / "quick" / "transfer")
    assert got[1]["value"].tolist() == expected["value"].tolist()
    (ckpt,) = checkpoints.glob("*.pt")
    (straight,) = (tmp_path / "here" / "quick" / "transfer" / "checkpoints").glob("*.pt")
    weights = torch.load(ckpt, weights_only=False)["model"]
    for name, value in torch.load(straight, weights_only=False)["model"].items():
        assert torch.equal(weights[name], value), name

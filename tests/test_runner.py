"""The training loop on a tiny real task: logging, learning, resume, skip, divergence, freezing."""

import csv
import json

import pytest
import torch

from experiments.core import accel
from experiments.core.config import RunConfig, load_config
from experiments.core.files import LockedError, run_lock
from experiments.core.runner import checkpoint_path, lock_path, main, run
from tests.helpers import MULTIRATE, Blobs, make_cfg


class NanTask(Blobs):
    def loss(self, model, batch):
        loss = super().loss(model, batch)
        return loss * float("nan") if self.loss_calls >= 5 else loss


RANDOM = dict(optimizer="multirate", k=3, partition="random_subgroups", slow_fraction=0.3)


def test_run_writes_csv_and_json(tmp_path):
    cfg = make_cfg(tmp_path)
    result = run(cfg, Blobs())
    assert result["status"] == "complete"
    with open(cfg.run_dir / f"{cfg.run_name}.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["run", "experiment", "method", "seed", "epoch", "step", "metric",
                                 "value", "time_s"]
    assert len(rows) == 4 * 3  # epochs x (train_loss, accuracy, test_loss)
    assert [(r["epoch"], r["step"]) for r in rows[::3]] == [("1", "8"), ("2", "16"), ("3", "24"), ("4", "32")]
    assert {r["metric"] for r in rows} == {"train_loss", "accuracy", "test_loss"}
    assert {(r["run"], r["experiment"], r["method"], r["seed"]) for r in rows} == {
        (cfg.run_name, "blobs", "train_all", "0")}
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert [float(r["value"]) for r in rows] == [r["value"] for r in result["rows"]]

    record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
    assert record["status"] == "complete" and record["config"]["lr"] == 0.05
    assert record["torch"] == torch.__version__ and record["device"] == "cpu" and record["finished"]
    assert checkpoint_path(cfg).exists()


def test_eval_every(tmp_path):
    result = run(make_cfg(tmp_path, epochs=5, eval_every=2), Blobs())
    assert sorted({r["epoch"] for r in result["rows"]}) == [2, 4, 5]


@pytest.mark.parametrize("opt", [{}, MULTIRATE, RANDOM, dict(schedule="cosine"),
                                 dict(MULTIRATE, linear_drift=False, schedule="multistep", milestones=[2])],
                         ids=["sgd", "multirate", "random", "sgd-cosine", "multirate-nodrift-multistep"])
def test_learns(tmp_path, opt):
    result = run(make_cfg(tmp_path, epochs=6, **opt), Blobs())
    assert result["status"] == "complete"
    metric = {(r["epoch"], r["metric"]): r["value"] for r in result["rows"]}
    assert metric[6, "train_loss"] < 0.5 * metric[1, "train_loss"]
    assert metric[6, "accuracy"] > 0.8  # chance is 0.25


@pytest.mark.parametrize("opt, stop", [
    ({}, 13), ({}, 16), (dict(schedule="cosine"), 21), (MULTIRATE, 11), (MULTIRATE, 16),
    (dict(MULTIRATE, linear_drift=False, momentum=0.5), 20), (RANDOM, 14),
], ids=["sgd-mid-epoch", "sgd-epoch-end", "sgd-cosine", "multirate-k3-mid-cycle",
        "multirate-k3-cycle-pos1", "multirate-nodrift", "random-subgroups"])
def test_resume_is_bit_for_bit(tmp_path, opt, stop):
    straight = run(make_cfg(tmp_path / "a", **opt), Blobs())

    cfg = make_cfg(tmp_path / "b", **opt)
    first = run(cfg, Blobs(), stop_at_step=stop)
    assert first["status"] == "interrupted"
    assert json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())["status"] == "running"
    task = Blobs()
    resumed = run(cfg, task)
    assert resumed["status"] == "complete"
    assert task.loss_calls == 4 * 8 - stop  # continued, did not start over

    expected, got = straight["model"].state_dict(), resumed["model"].state_dict()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    without_time = [{k: v for k, v in r.items() if k != "time_s"} for r in straight["rows"]]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in resumed["rows"]] == without_time


def test_fp16_resume_keeps_the_loss_scale(tmp_path, monkeypatch):
    # The scaler skips a step whose scaled gradients overflow and halves its scale. Started at 2^24,
    # the fp16 gradients overflow for the first steps; a resume that began again from 2^24 would skip
    # other steps than the uninterrupted run.
    monkeypatch.setattr(accel, "grad_scaler",
                        lambda cfg, device: torch.amp.GradScaler("cpu", init_scale=2.0**24))
    opt = dict(MULTIRATE, amp="fp16")
    straight = run(make_cfg(tmp_path / "a", **opt), Blobs())
    cfg = make_cfg(tmp_path / "b", **opt)
    assert run(cfg, Blobs(), stop_at_step=11)["status"] == "interrupted"
    assert torch.load(checkpoint_path(cfg), weights_only=True)["scaler"]["scale"] < 2.0**24  # it moved
    resumed = run(cfg, Blobs())
    expected, got = straight["model"].state_dict(), resumed["model"].state_dict()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_completed_run_is_skipped_unless_rerun(tmp_path):
    cfg = make_cfg(tmp_path)
    done = run(cfg, Blobs())
    task = Blobs()
    again = run(cfg, task)
    assert task.loss_calls == 0 and again["status"] == "complete" and again["model"] is None
    assert again["rows"] == done["rows"]

    task = Blobs()
    rerun = run(make_cfg(tmp_path, rerun=True), task)
    assert task.loss_calls == 4 * 8 and rerun["status"] == "complete"
    assert [r["value"] for r in rerun["rows"]] == [r["value"] for r in done["rows"]]


@pytest.mark.parametrize("task, kw", [(NanTask(), {}), (Blobs(), dict(lr=1e6)),
                                      (Blobs(), dict(MULTIRATE, lr=1e6))],
                         ids=["nan-loss", "sgd-huge-lr", "multirate-huge-lr"])
def test_divergence_stops_cleanly(tmp_path, task, kw):
    cfg = make_cfg(tmp_path, **kw)
    result = run(cfg, task)
    assert result["status"] == "diverged"
    record = json.loads((cfg.run_dir / f"{cfg.run_name}.json").read_text())
    assert record["status"] == "diverged"
    assert result["rows"][-1]["metric"] == "train_loss"
    assert not torch.isfinite(torch.tensor(result["rows"][-1]["value"]))
    assert task.loss_calls < 4 * 8  # stopped early
    skipped = Blobs()
    assert run(cfg, skipped)["status"] == "diverged" and skipped.loss_calls == 0


@pytest.mark.parametrize("opt", [{}, MULTIRATE], ids=["sgd", "multirate"])
def test_train_subset_leaves_the_rest_unchanged(tmp_path, opt):
    task = Blobs()
    result = run(make_cfg(tmp_path, train=["fc"], **opt), task)
    final = result["model"].state_dict()
    for name, value in task.initial.items():
        assert torch.equal(final[name], value) != name.startswith("fc"), name
    assert all(p.requires_grad == n.startswith("fc") for n, p in result["model"].named_parameters())


def test_train_and_fast_together(tmp_path):
    task = Blobs()
    result = run(make_cfg(tmp_path, train=["body.3", "fc"], **MULTIRATE), task)
    final = result["model"].state_dict()
    assert torch.equal(final["body.0.weight"], task.initial["body.0.weight"])
    assert not torch.equal(final["body.3.weight"], task.initial["body.3.weight"])


def test_train_prefix_must_match(tmp_path):
    with pytest.raises(ValueError, match="fcc"):
        run(make_cfg(tmp_path, train=["fcc"]), Blobs())


def test_batch_larger_than_data(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        run(make_cfg(tmp_path, batch_size=1000), Blobs())


def test_no_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, checkpoint=False, epochs=2)
    assert run(cfg, Blobs())["status"] == "complete"
    assert not checkpoint_path(cfg).parent.exists()


def test_main_runs_methods_times_seeds(tmp_path, capsys):
    toml = tmp_path / "blobs.toml"
    toml.write_text('batch_size = 32\nlr = 0.05\nwandb = "disabled"\ndevice = "cpu"\n'
                    "[quick]\nepochs = 2\n[methods.train_all]\n"
                    '[methods.multirate]\noptimizer = "multirate"\nk = 2\n')
    results = main(["--seeds", "0,1", f"results_dir={tmp_path / 'out'}"], RunConfig, toml, Blobs)
    assert [(r["status"], r["run_name"].split("-")[:2]) for r in results] == [
        ("complete", ["train_all", "seed0"]), ("complete", ["train_all", "seed1"]),
        ("complete", ["multirate", "seed0"]), ("complete", ["multirate", "seed1"])]
    assert len(list((tmp_path / "out" / "quick" / "blobs").glob("*.csv"))) == 4
    assert "multirate-seed1" in capsys.readouterr().out

    argv = ["--method", "multirate", f"results_dir={tmp_path / 'out'}", "epochs=1"]
    only = main(argv, RunConfig, toml, Blobs)
    assert len(only) == 1 and only[0]["run_name"].startswith("multirate-seed0")


def test_skip_running_leaves_a_locked_run_to_its_holder(tmp_path, capsys):
    """Two processes given the same runs share them out: one skips what the other is training."""
    toml = tmp_path / "blobs.toml"
    toml.write_text('batch_size = 32\nlr = 0.05\nwandb = "disabled"\ndevice = "cpu"\n'
                    "[quick]\nepochs = 1\n[methods.train_all]\n")
    out = f"results_dir={tmp_path / 'out'}"
    held = load_config(RunConfig, toml, "quick", "train_all", ["seed=1", out])
    with run_lock(lock_path(held), "held by the test"):
        with pytest.raises(LockedError):  # without the flag another process's run is an error
            main(["--seeds", "0,1,2", out], RunConfig, toml, Blobs)
        results = main(["--seeds", "0,1,2", "--skip-running", out], RunConfig, toml, Blobs)
    assert [r["run_name"].split("-")[1] for r in results] == ["seed0", "seed2"]
    assert f"{held.run_name}: another process is training it; left to that one" in capsys.readouterr().out
    # Once the holder is gone, the same command trains what is left and reads back the rest.
    again = main(["--seeds", "0,1,2", "--skip-running", out], RunConfig, toml, Blobs)
    assert [r["status"] for r in again] == ["complete"] * 3
    assert again[1]["run_name"] == held.run_name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_run_and_resume(tmp_path):
    straight = run(make_cfg(tmp_path / "a", device="cuda", **MULTIRATE), Blobs())
    cfg = make_cfg(tmp_path / "b", device="cuda", **MULTIRATE)
    assert run(cfg, Blobs(), stop_at_step=11)["status"] == "interrupted"
    resumed = run(cfg, Blobs())
    assert straight["status"] == resumed["status"] == "complete"
    assert next(resumed["model"].parameters()).is_cuda
    expected, got = straight["model"].state_dict(), resumed["model"].state_dict()
    for name in expected:  # GPU kernels need not be bitwise reproducible; close is enough
        torch.testing.assert_close(got[name], expected[name])

"""W&B fields of a run, decoded from an offline run's .wandb file; the per-epoch line for Slurm logs."""

import io
import json
import time

import pytest

from experiments.core import tracking
from experiments.core.config import RunConfig
from experiments.core.runlog import RunLog
from tests.test_runlog import read_wandb_records


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """W&B may only ever run offline here, with every file it writes under tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-env" / var.lower()))
    monkeypatch.setattr(tracking, "_failed", False)


def offline_run(tmp_path, **kw) -> dict[str, list]:
    """Log two evaluations of a run with wandb="offline"; its .wandb records by type, once complete."""
    cfg = RunConfig(experiment="transfer", method="multirate", results_dir=str(tmp_path), wandb="offline",
                    epochs=2, **kw)
    log = RunLog(cfg)
    log.start("cpu")
    log.log(1, 10, 1.5, {"train_loss": 0.9, "test_accuracy": 60.0, "val_loss": 1.2})
    log.log(2, 20, 3.0, {"train_loss": 0.5, "test_accuracy": 55.0, "val_loss": 1.4})
    log.finish("complete")
    (path,) = (tmp_path / cfg.profile / "wandb").glob("offline-run-*/*.wandb")
    deadline = time.monotonic() + 60  # wandb-core may still be flushing after finish()
    records = read_wandb_records(path)
    while not any(kind == "exit" for kind, _ in records):
        assert time.monotonic() < deadline, f"{path} never got its exit record"
        time.sleep(0.05)
        records = read_wandb_records(path)
    by_kind = {}
    for kind, record in records:
        by_kind.setdefault(kind, []).append(getattr(record, kind))
    return by_kind


def test_offline_run_has_group_job_type_tags_and_metrics(tmp_path):
    records = offline_run(tmp_path)
    run = records["run"][0]
    assert run.run_group == "transfer/multirate" and run.job_type == "transfer"
    assert list(run.tags) == ["quick"]

    metrics = {m.name or m.glob_name: m for m in records["metric"]}
    assert {"epoch", "time_s", "*", "test_accuracy", "clean_accuracy", "val_loss"} <= set(metrics)
    assert metrics["*"].glob_name == "*" and metrics["*"].step_metric == "epoch"
    for name, best in tracking.HEADLINE.items():
        assert metrics[name].step_metric == "epoch"
        assert getattr(metrics[name].summary, best) and metrics[name].summary.last
    assert not metrics["val_loss"].summary.max and not metrics["test_accuracy"].summary.min
    # The summary keeps the best evaluation, not only the last one (epoch 1 was the best).
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for s in records["summary"] for i in s.update}
    assert summary["test_accuracy"] == {"max": 60, "last": 55}
    assert summary["val_loss"] == {"min": 1.2, "last": 1.4}
    assert summary["epoch"] == 2 and summary["time_s"] == 3.0


def test_variant_is_the_group_and_its_prefix_a_tag(tmp_path):
    run = offline_run(tmp_path, variant="k/SGD k=25")["run"][0]
    assert run.run_group == "k/SGD k=25" and run.job_type == "transfer"
    assert list(run.tags) == ["quick", "k"]


def test_group_and_tags_without_wandb():
    cfg = RunConfig(experiment="patch", method="small_lr", profile="paper")
    assert tracking.group(cfg) == "patch/small_lr" and tracking.tags(cfg) == ["paper"]
    cfg = RunConfig(experiment="transfer", method="multirate", variant="transfer_random")
    assert tracking.group(cfg) == "transfer_random" and tracking.tags(cfg) == ["quick", "transfer_random"]


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_one_line_per_evaluation_only_when_not_a_terminal():
    cfg = RunConfig(experiment="transfer", method="multirate", epochs=15)
    for tty in (False, True):
        stream = Stream(tty)
        tracking.print_epoch(cfg, 3, 138, 12.43, {"train_loss": 0.41273, "test_accuracy": 81.2}, stream)
        expected = f"{cfg.run_name}: epoch 3/15 step 138 12.4 s train_loss=0.4127 test_accuracy=81.2\n"
        assert stream.getvalue() == ("" if tty else expected)
    # An epoch without evaluation (eval_every > 1) gets its line too, without metrics.
    assert tracking.epoch_line(cfg, 4, 184, 16.0, {}) == f"{cfg.run_name}: epoch 4/15 step 184 16.0 s"


def test_the_options_chosen_by_the_device_are_in_the_wandb_config(tmp_path):
    run = offline_run(tmp_path, amp="auto")["run"][0]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["amp"] == "auto" and config["resolved"] == {"amp": "none"}

"""Figure scripts read only the CSVs and run JSONs that the runner's logger writes."""

from dataclasses import dataclass

import pandas as pd
import pytest

from experiments.config import RunConfig
from experiments.runlog import RunLog
from figures import transfer


@dataclass
class ModelConfig(RunConfig):
    model: str = "resnet34"


def log_run(tmp_path, model, method, seed, accuracies, seconds_per_epoch, status="complete"):
    cfg = ModelConfig(experiment="transfer", results_dir=str(tmp_path), model=model, method=method,
                      seed=seed, wandb="disabled", epochs=len(accuracies))
    log = RunLog(cfg)
    log.start("cpu")
    for epoch, acc in enumerate(accuracies, 1):
        metrics = {"train_loss": 1.0 / epoch, "test_accuracy": acc}
        log.log(epoch, 10 * epoch, seconds_per_epoch * epoch, metrics)
    log.finish(status)


def test_transfer_figure_from_csvs(tmp_path):
    log_run(tmp_path, "resnet34", "train_all", 0, [50, 70, 80], 10.0)
    log_run(tmp_path, "resnet34", "train_all", 1, [52, 72, 84], 12.0)
    log_run(tmp_path, "resnet34", "multirate", 0, [45, 68, 81], 5.0)
    log_run(tmp_path, "distilbert", "multirate", 0, [60, 70, 75], 2.0)
    log_run(tmp_path, "distilbert", "multirate", 1, [60, 70, 10], 2.0, status="running")  # unfinished
    transfer.main(["--results-dir", str(tmp_path), "--profile", "quick"])

    out = tmp_path / "quick" / "figures"
    assert (out / "transfer.png").stat().st_size > 10_000
    assert (out / "transfer.pdf").exists()
    summary = pd.read_csv(out / "transfer.csv").set_index(["model", "method"])
    assert summary.loc[("resnet34", "train_all"), "accuracy"] == pytest.approx(82.0)
    assert summary.loc[("resnet34", "train_all"), "time_s"] == pytest.approx(33.0)
    assert summary.loc[("resnet34", "train_all"), "seeds"] == 2
    assert summary.loc[("resnet34", "multirate"), "time_s"] == pytest.approx(15.0)
    # The unfinished run is left out.
    assert summary.loc[("distilbert", "multirate"), "accuracy"] == pytest.approx(75.0)
    assert summary.loc[("distilbert", "multirate"), "seeds"] == 1


def test_transfer_figure_without_results(tmp_path):
    with pytest.raises(SystemExit, match="no complete runs"):
        transfer.main(["--results-dir", str(tmp_path)])

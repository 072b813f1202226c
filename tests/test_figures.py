"""Figure scripts read only the CSVs and run JSONs that the runner's logger writes."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from experiments.config import PROFILES, RunConfig
from experiments.runlog import RunLog
from figures import patch, results_root, transfer


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


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_transfer_figure_reads_like_the_papers(tmp_path):
    for seed in (0, 1, 2):
        log_run(tmp_path, "resnet34", "train_all", seed, [50, 70, 80], 10.0)
        log_run(tmp_path, "resnet34", "layer2+3+4+fc", seed, [50, 70, 79], 8.0)
        log_run(tmp_path, "resnet34", "multirate", seed, [45, 68, 81], 5.0)
        log_run(tmp_path, "small_resnet", "multirate", seed, [45, 68, 81], 5.0)
    acc = transfer.load(tmp_path / "quick" / "transfer")
    fig = transfer.plot(acc, transfer.summarise(acc), "quick")
    for ax in fig.axes:  # a legend in every panel, with the paper's names, multirate first
        assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "Multirate"
    resnet_top = fig.axes[0]
    assert [t.get_text() for t in resnet_top.get_legend().get_texts()] == [
        "Multirate", "Train All", "Train Layer 2 + 3 + 4 + fc"]
    lines = {line.get_label(): line for line in resnet_top.get_lines()}
    assert lines["Multirate"].get_linewidth() > lines["Train All"].get_linewidth()  # marked apart
    # The data is named: the run JSONs say CIFAR-10 (ResNet-34's default) or generated.
    assert [ax.get_title() for ax in fig.axes[:2]] == ["ResNet-34, CIFAR-10 data",
                                                       "Small ResNet, generated data"]
    assert any("mean ± sd, n = 3 seeds" in t for t in texts(fig))
    assert not fig.axes[2].texts  # no annotations beside the points: the legend names them


def test_patch_figure_labels_the_step_sizes_and_chance(tmp_path):
    for method, lr in (("small_lr", 0.004), ("large_lr", 0.1), ("multirate", 0.1)):
        cfg = PatchLikeConfig(experiment="patch", results_dir=str(tmp_path), method=method, lr=lr,
                              wandb="disabled", epochs=2)
        log = RunLog(cfg)
        log.start("cpu")
        for epoch in (1, 2):
            log.log(epoch, epoch, epoch, {"clean_accuracy": 50.0, "patched_accuracy": 60.0,
                                          "patch_only_accuracy": 30.0 + epoch})
        log.finish("complete")
    fig = patch.plot(patch.load(tmp_path / "quick" / "patch"), "quick")
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "h = 0.004", "h = 0.1", "Multirate", "chance (10 %)"]
    assert fig.get_suptitle() == "WideResNet-16, patch-augmented generated data"
    assert any("n = 1 seed " in t and "generated data" in t for t in texts(fig))


@dataclass
class PatchLikeConfig(RunConfig):
    dataset: str = "generated"


def test_every_profile_is_accepted():
    for profile in PROFILES:  # every script parses its arguments with results_root
        assert results_root("figure", ["--profile", profile, "--results-dir", "r"]) == Path("r") / profile

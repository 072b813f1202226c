"""Figure scripts read only the CSVs and run JSONs that the runner's logger writes."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from experiments.core.config import PROFILES, RunConfig
from experiments.core.runlog import RunLog
from figures import left_out, patch, regularization, results_root, transfer


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


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_transfer_figure_reads_like_the_papers(tmp_path):
    for seed in (0, 1, 2):
        log_run(tmp_path, "resnet34", "train_all", seed, [50, 70, 80], 10.0)
        log_run(tmp_path, "resnet34", "layer2+3+4+fc", seed, [50, 70, 79], 8.0)
        log_run(tmp_path, "resnet34", "multirate", seed, [45, 68, 81], 5.0)
        log_run(tmp_path, "small_resnet", "multirate", seed, [45, 68, 81], 5.0)
    acc = transfer.load(tmp_path / "quick" / "transfer")
    fig = transfer.plot(acc, transfer.summarise(acc), "quick")
    (resnet_top, small_top), (resnet_loss, _), (resnet_time, small_time) = (
        fig.axes[:2], fig.axes[2:4], fig.axes[4:])
    # One legend per model, under its column (its three panels share it): multirate first, named by
    # its fast part.
    assert [ax.get_legend() for ax in fig.axes[:4]] == [None] * 4
    assert legend_texts(resnet_time) == ["Multirate (fc fast)", "Train All", "Train Layer 2 + 3 + 4 + fc"]
    assert legend_texts(small_time) == ["Multirate (fc fast)"]
    lines = {line.get_label(): line for line in resnet_top.get_lines()}
    assert lines["Multirate (fc fast)"].get_linewidth() > lines["Train All"].get_linewidth()  # marked apart
    # The data is named: the run JSONs say CIFAR-10 (ResNet-34's default) or generated.
    assert [resnet_top.get_title(), small_top.get_title()] == ["ResNet-34, CIFAR-10 data",
                                                               "Small ResNet, generated data"]
    # The training loss under each accuracy panel: is a gap under-fitting?
    assert resnet_loss.get_yscale() == "log" and "training loss" in resnet_loss.get_ylabel()
    assert {line.get_label() for line in resnet_loss.get_lines()} >= {"Multirate (fc fast)", "Train All"}
    assert any("mean ± sd, n = 3 seeds" in t for t in texts(fig))
    assert not any(t.startswith("left out") or "\nleft out" in t for t in texts(fig))  # nothing left out
    assert not resnet_time.texts  # no annotations beside the points: the legend names them
    assert not [line for line in resnet_top.get_lines() if line.get_label().startswith("chance")]


def test_the_accuracy_panel_shows_the_gaps_not_0_to_100(tmp_path):
    # The DistilBERT panel of the quick profile: a 2-point gap at 90-94 %, a 50 % chance level far
    # below every curve. The range is the curves', so the gap takes a visible part of the panel.
    for seed in (0, 1, 2):
        end = seed / 10
        log_run(tmp_path, "distilbert", "distilbert_train_all", seed, [80, 90, 92, 93, 94.3 + end], 10.0)
        log_run(tmp_path, "distilbert", "distilbert_multirate", seed, [82, 89, 90, 92, 92.7 + end], 5.0)
    acc = transfer.load(tmp_path / "quick" / "transfer")
    fig = transfer.plot(acc, transfer.summarise(acc), "quick")
    low, high = fig.axes[0].get_ylim()
    assert 85 < low < 89 and 94.5 < high <= 100
    assert (94.4 - 92.8) / (high - low) > 0.1  # the final gap is over a tenth of the panel's height


def test_the_legend_lies_outside_every_panel(tmp_path):
    # Curves that start low and end high through every corner, as the cpu ResNet panel's do: no
    # legend inside a panel, one under the column, below its lowest panel.
    ends = {"train_all": (92, 99), "multirate": (85, 99), "layer2+3+4+fc": (90, 99),
            "layer3+4+fc": (68, 95), "layer4+fc": (66, 82), "fc": (64, 71)}  # the cpu panel's, 30 epochs
    for seed in (0, 1, 2):
        for method, (first, last) in ends.items():
            log_run(tmp_path, "small_resnet", method, seed,
                    [first + (last - first) * e / 29 + seed for e in range(30)], 5.0)
    acc = transfer.load(tmp_path / "quick" / "transfer")
    fig = transfer.plot(acc, transfer.summarise(acc), "quick")
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    box = legends[0].get_window_extent()
    for ax in fig.axes:
        assert box.y1 <= ax.get_window_extent().y0, "the legend overlaps a panel"
    assert box.y0 >= 0  # inside the figure
    assert fig.axes[0].get_ylim()[0] >= 0


def diverge(tmp_path, model, method, seed, accuracies, epoch):
    """A run that diverged in `epoch`: its evaluations before it, then the non-finite training loss
    logged against that epoch, as the runner does."""
    cfg = ModelConfig(experiment="transfer", results_dir=str(tmp_path), model=model, method=method,
                      seed=seed, wandb="disabled", epochs=10)
    log = RunLog(cfg)
    log.start("cpu")
    for e, acc in enumerate(accuracies, 1):
        log.log(e, 10 * e, 10.0 * e, {"train_loss": 1.0 / e, "test_accuracy": acc})
    log.log(epoch, 10 * epoch, 10.0 * epoch, {"train_loss": float("inf")})
    log.finish("diverged")


def test_a_figure_says_which_runs_it_left_out_and_why(tmp_path):
    for seed in (0, 2):
        log_run(tmp_path, "resnet34", "train_all", seed, [50, 70, 80], 10.0)
        log_run(tmp_path, "resnet34", "multirate", seed, [45, 68, 81], 5.0)
    diverge(tmp_path, "resnet34", "train_all", 1, [50, 60, 70], epoch=4)
    diverge(tmp_path, "resnet34", "fc", 0, [], epoch=1)  # every run of a method diverged
    log_run(tmp_path, "resnet34", "multirate", 1, [45], 5.0, status="running")
    transfer.main(["--results-dir", str(tmp_path), "--profile", "quick"])
    folder = tmp_path / "quick" / "transfer"
    left = left_out.runs(folder, ("model",))
    assert list(zip(left.method, left.seed, left.reason)) == [
        ("fc", 0, "diverged at epoch 1"), ("multirate", 1, "not finished"),
        ("train_all", 1, "diverged at epoch 4")]
    # The figure's note ...
    acc = transfer.load(folder)
    fig = transfer.plot(acc, transfer.summarise(acc, left), "quick", left)
    (note,) = [t for t in texts(fig) if "left out" in t]
    assert ("left out: Train Layer fc: 0 of 1 seed, seed 0 diverged at epoch 1; Multirate (fc fast): 2 of 3 "
            "seeds, seed 1 not finished; Train All: 2 of 3 seeds, seed 1 diverged at epoch 4") in note
    # ... and the table beside it.
    table = pd.read_csv(tmp_path / "quick" / "figures" / "transfer.csv", keep_default_na=False)
    table = table.set_index("method")
    assert table.loc["train_all", "left_out"] == "2 of 3 seeds, seed 1 diverged at epoch 4"
    assert table.loc["train_all", "seeds"] == 2
    assert table.loc["fc", "left_out"] == "0 of 1 seed, seed 0 diverged at epoch 1"
    assert table.loc["fc", "accuracy"] == ""  # no number for a method with no complete run
    assert table.loc["multirate", "left_out"] == "2 of 3 seeds, seed 1 not finished"


def test_a_diverged_run_is_named_in_the_regularization_and_patch_figures(tmp_path, monkeypatch):
    for seed in (0, 1, 2):
        cfg = RegularizationLikeConfig(experiment="regularization_mlp", results_dir=str(tmp_path),
                                       method="sgd", seed=seed, wandb="disabled", epochs=5)
        log = RunLog(cfg)
        log.start("cpu")
        for epoch in (1, 2, 3) if seed != 1 else (1, 2, 3, 4):
            metrics = {"train_loss": 1.0 / epoch, "test_accuracy": 90.0 + epoch}
            log.log(epoch, epoch, epoch, metrics if (seed, epoch) != (1, 4) else {"train_loss": float("nan")})
        log.finish("diverged" if seed == 1 else "complete")
    regularization.main(["--results-dir", str(tmp_path)])
    found = regularization.load(tmp_path / "quick")
    left = {"regularization_mlp": left_out.runs(tmp_path / "quick" / "regularization_mlp")}
    fig = regularization.plot(found, None, "quick", left)
    note = "left out: SGD (Perceptron): 2 of 3 seeds, seed 1 diverged at epoch 4"
    assert any(note in t for t in texts(fig))
    table = pd.read_csv(tmp_path / "quick" / "figures" / "regularization.csv")
    assert table.left_out.tolist() == ["2 of 3 seeds, seed 1 diverged at epoch 4"]

    for method, status in (("small_lr", "complete"), ("multirate", "diverged")):
        cfg = PatchLikeConfig(experiment="patch", results_dir=str(tmp_path), method=method, lr=0.1,
                              wandb="disabled", epochs=3)
        log = RunLog(cfg)
        log.start("cpu")
        log.log(1, 1, 1, {"clean_accuracy": 50.0, "patched_accuracy": 60.0, "patch_only_accuracy": 30.0})
        if status == "diverged":
            log.log(2, 2, 2, {"train_loss": float("inf")})
        log.finish(status)
    saved = {}  # figure name -> (its texts, its table)
    monkeypatch.setattr(patch, "save", lambda fig, table, root, name: saved.setdefault(
        name, (texts(fig), table)))
    patch.main(["--results-dir", str(tmp_path)])
    notes, table = saved["patch"]
    assert any("left out: Multirate (deep half fast): 0 of 1 seed, seed 0 diverged at epoch 2" in t
               for t in notes)
    mean = table[(table.method == "multirate") & (table.seed == "mean")]
    assert mean.left_out.tolist() == ["0 of 1 seed, seed 0 diverged at epoch 2"]


@dataclass
class TextLikeConfig(RunConfig):
    model: str = "distilbert"
    dataset: str = "synthetic_sentiment"


def test_transfer_figure_of_the_generated_text_task_has_its_chance_line(tmp_path):
    for method, accuracies in (("distilbert_multirate", [60, 80]), ("distilbert_head_only", [52, 55])):
        cfg = TextLikeConfig(experiment="transfer", results_dir=str(tmp_path), method=method,
                             wandb="disabled", epochs=2)
        log = RunLog(cfg)
        log.start("cpu")
        for epoch, acc in enumerate(accuracies, 1):
            log.log(epoch, epoch, epoch, {"test_accuracy": acc})
        log.finish("complete")
    acc = transfer.load(tmp_path / "quick" / "transfer")
    fig = transfer.plot(acc, transfer.summarise(acc), "quick")
    assert fig.axes[0].get_title() == "Tiny DistilBERT, generated data"
    # The curves come near chance, so its line is drawn, and named in the column's one legend.
    assert [line.get_label() for line in fig.axes[0].get_lines()][-1] == "chance (50 %)"
    assert legend_texts(fig.axes[2]) == ["Multirate (fc fast)", "Train Layer fc", "chance (50 %)"]


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
    (legend,) = fig.legends  # one, under the three panels, which share it
    assert [t.get_text() for t in legend.get_texts()] == [
        "h = 0.004", "h = 0.1", "Multirate (deep half fast)", "chance (10 %)"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert fig.get_suptitle() == "WideResNet-16, patch-augmented generated data"
    assert any("n = 1 seed " in t and "generated data" in t for t in texts(fig))


def test_patch_figure_gives_the_step_an_lr_for_another_batch_takes(tmp_path):
    # The cpu profile's h = 0.004 is for a batch of 32 (lr_batch); at its batch of 8 the step is 0.001.
    cfg = PatchLikeConfig(experiment="patch", results_dir=str(tmp_path), method="small_lr", lr=0.004,
                          lr_batch=32, batch_size=8, wandb="disabled", epochs=1)
    log = RunLog(cfg)
    log.start("cpu")
    log.log(1, 1, 1, {"clean_accuracy": 50.0, "patched_accuracy": 60.0, "patch_only_accuracy": 30.0})
    log.finish("complete")
    fig = patch.plot(patch.load(tmp_path / "quick" / "patch"), "quick")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "h = 0.004 (0.001 at batch 8)", "chance (10 %)"]


def test_patch_partitions_get_their_own_figure_beside_the_constant_steps(tmp_path, monkeypatch):
    for method, lr in (("small_lr", 0.004), ("large_lr", 0.1), ("multirate", 0.1), ("multirate_bn", 0.1)):
        cfg = PatchLikeConfig(experiment="patch", results_dir=str(tmp_path), method=method, lr=lr,
                              wandb="disabled", epochs=1)
        log = RunLog(cfg)
        log.start("cpu")
        log.log(1, 1, 1, {"clean_accuracy": 50.0, "patched_accuracy": 60.0, "patch_only_accuracy": 30.0})
        log.finish("complete")
    saved = {}  # figure name -> (its legend, its table)
    monkeypatch.setattr(patch, "save", lambda fig, table, root, name: saved.setdefault(
        name, ([t.get_text() for t in fig.legends[0].get_texts()], table)))
    patch.main(["--results-dir", str(tmp_path), "--profile", "quick"])
    constant = ["h = 0.004", "h = 0.1"]
    assert saved["patch"][0] == [*constant, "Multirate (deep half fast)", "chance (10 %)"]
    assert saved["patch-partitions"][0] == [*constant, "Multirate (batch norm fast)", "chance (10 %)"]
    assert set(saved["patch"][1].method) == {"small_lr", "large_lr", "multirate", "multirate_bn"}  # csv: all
    assert saved["patch-partitions"][1] is None


@dataclass
class PatchLikeConfig(RunConfig):
    dataset: str = "generated"


def test_every_profile_is_accepted():
    for profile in PROFILES:  # every script parses its arguments with results_root
        assert results_root("figure", ["--profile", profile, "--results-dir", "r"]) == Path("r") / profile


@dataclass
class RegularizationLikeConfig(RunConfig):
    dataset: str = "generated"


def test_regularization_figure_reads_like_the_papers(tmp_path):
    for seed in (0, 1, 2):
        for method in ("sgd", "dropout", "multirate"):
            gap = {"sgd": 0.3, "dropout": 0.1, "multirate": 0.0}[method]
            for experiment, dataset in (("regularization_lm", "ptb"), ("regularization_mlp", "generated")):
                cfg = RegularizationLikeConfig(experiment=experiment, results_dir=str(tmp_path),
                                               method=method, seed=seed, dataset=dataset, wandb="disabled",
                                               epochs=3)
                log = RunLog(cfg)
                log.start("cpu")
                for epoch in (1, 2, 3):
                    metrics = ({"val_loss": 5.0 - epoch + gap * epoch ** 2 + 0.01 * seed, "test_ppl": 100.0}
                               if experiment == "regularization_lm" else
                               {"test_accuracy": 90.0 + epoch - gap * epoch + 0.1 * seed})
                    metrics["train_loss"] = 4.0 / epoch
                    log.log(epoch, epoch, epoch, metrics)
                log.finish("complete")
    found = regularization.load(tmp_path / "quick")
    fig = regularization.plot(found, regularization.datasets(tmp_path / "quick", found), "quick")
    lm, mlp, lm_train, mlp_train = fig.axes
    (legend,) = fig.legends  # one for the figure: the four panels share it
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in legend.get_texts()] == [
        "SGD", "SGD + dropout", "Multirate (random subgroups)", "minimum of the mean"]
    assert lm.get_title() == "Transformer LM, Penn Treebank data: validation loss"
    assert mlp.get_title() == "One-hidden-layer perceptron, generated data: test accuracy"
    lines = {line.get_label(): line for line in mlp.get_lines()}
    assert lines["Multirate (random subgroups)"].get_linewidth() > lines["SGD"].get_linewidth()  # apart
    # Under each, the training loss: over-fitting is the gap between the two.
    assert lm_train.get_yscale() == mlp_train.get_yscale() == "log"
    assert {line.get_label() for line in lm_train.get_lines()} == {
        "SGD", "SGD + dropout", "Multirate (random subgroups)"}
    note = "mean ± sd, n = 3 seeds · quick profile: Penn Treebank data, generated data"
    assert note in texts(fig)


def test_convergence_figure_labels_only_the_plotted_k_and_T():
    from figures import convergence

    rows = pd.DataFrame([dict(method=method, k=k, T=T, measured=1e-4, measured_sd=1e-5, bound=0.1,
                              bound_M_observed=5e-3, L=0.02, M=1.0, h=2.0, groups=2, seeds=3)
                         for method, ks in (("multirate", (1, 3)), ("sgd", (1,))) for k in ks
                         for T in (30, 90)])
    fig = convergence.plot(rows)
    fig.canvas.draw()
    left, right = fig.axes
    assert [t.get_text() for t in left.get_xticklabels(minor=True)] == []  # no "2 x 10^0"
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "3"]
    assert [t.get_text() for t in right.get_xticklabels()] == ["30", "90"]
    assert [t.get_text() for t in right.get_xticklabels(minor=True)] == []
    assert "Multirate, measured" in [t.get_text() for t in left.get_legend().get_texts()]
    assert "measured: mean ± sd, n = 3 seeds (bars) · bounds: Theorem B.4" in texts(fig)

"""Transfer-learning figure: test accuracy vs epoch (mean ± sd over seeds) and final test accuracy
vs total training time, one column per model, from the CSVs under results/<profile>/transfer/.

    python -m figures.transfer [--profile quick|cpu|paper] [--results-dir results]

Writes results/<profile>/figures/transfer.{png,pdf} and prints (and saves as transfer.csv) the
table behind the lower row: per model and method, the final accuracy and training time over seeds.
"""

from pathlib import Path

import pandas as pd

from experiments.runlog import last_epoch, no_complete_runs, read_results, read_runs
from figures import results_root, save, style
from figures.style import plt

MODELS = {"resnet50": "ResNet-50", "resnet34": "ResNet-34", "small_resnet": "Small ResNet",
          "distilbert": "DistilBERT"}
# The data set a model's runs use when their `dataset` is "" (experiments.transfer's defaults).
DEFAULT_DATA = {"resnet50": "cifar100", "resnet34": "cifar10", "small_resnet": "generated"}
ORDER = ("multirate", "train_all", "layer2+3+4+fc", "layer3+4+fc", "layer4+fc", "fc",
         "distilbert_multirate", "distilbert_multirate_l5", "distilbert_train_all", "distilbert_train_345",
         "distilbert_train_45", "distilbert_train_5", "distilbert_head_only")  # the paper's legend order
METRIC = "test_accuracy"
# Chance accuracy of the two-class data sets, drawn in their panels (the curves start near it); on
# CIFAR (1 %, 10 %) the line would only stretch the axis far below every curve.
CHANCE = {"sst2": 50.0, "synthetic_sentiment": 50.0}


def load(folder: Path) -> pd.DataFrame:
    """The accuracy rows of every complete run, with the run's model and dataset."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        raise SystemExit(no_complete_runs(folder))
    runs = read_runs(folder)
    for column in ("model", "dataset"):
        if column not in runs:
            runs[column] = ""
    runs["dataset"] = [d or DEFAULT_DATA.get(m, "") for m, d in zip(runs.model, runs.dataset.fillna(""))]
    return rows[rows.metric == METRIC].merge(runs[["run", "model", "dataset"]], on="run")


def summarise(acc: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy and total training time per run, then mean and sd over seeds."""
    final = last_epoch(acc)
    return (final.groupby(["model", "method"])
            .agg(accuracy=("value", "mean"), accuracy_sd=("value", "std"),
                 time_s=("time_s", "mean"), time_s_sd=("time_s", "std"), seeds=("seed", "nunique"))
            .reset_index())


def title(model: str, datasets) -> str:
    """"ResNet-50, CIFAR-100 data" as the paper; a stand-in model on generated data says so."""
    data = style.data_name(sorted(datasets)[0]) if len(datasets) == 1 else "mixed data"
    small = model == "distilbert" and data == "generated data"  # the quick profile's tiny DistilBERT
    return f"{'Tiny ' if small else ''}{MODELS.get(model, model)}, {data}"


def plot(acc: pd.DataFrame, summary: pd.DataFrame, profile: str = "quick"):
    present = set(acc.model)
    models = [m for m in MODELS if m in present] + sorted(present - set(MODELS))
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 8.2), squeeze=False)
    for col, model in enumerate(models):
        rows = acc[acc.model == model]
        methods = style.ordered(rows.method.unique(), ORDER)
        colours = style.palette(methods)
        labels = {m: style.name(m) for m in methods}
        top, bottom = axes[0, col], axes[1, col]
        style.mean_sd(top, rows, methods, colours, labels)
        levels = {CHANCE[d] for d in set(rows.dataset) if d in CHANCE}
        if len(levels) == 1:
            style.chance(top, levels.pop())
        top.set(title=title(model, set(rows.dataset)), xlabel="epoch", ylabel="test accuracy (%)")
        style.legend_below_curves(top)  # curves that start low and end high leave no free corner
        for method in methods:  # the legend, not annotations, names the points: they never overlap
            r = summary[(summary.model == model) & (summary.method == method)].iloc[0]
            bottom.errorbar(r.time_s, r.accuracy, xerr=r.time_s_sd, yerr=r.accuracy_sd, color=colours[method],
                            linestyle="none", capsize=3, linewidth=1)
            bottom.plot(r.time_s, r.accuracy, color=colours[method], linestyle="none", label=labels[method],
                        **style.marker_style(method))
        bottom.set(title=f"final accuracy vs training time, {MODELS.get(model, model)}",
                   xlabel="training time (s)", ylabel="final test accuracy (%)")
        style.legend(bottom)
    style.finish(fig, f"{style.seeds_note(summary.seeds)} (bands and bars) · "
                      f"{style.data_note(acc.dataset, profile)}")
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    acc = load(root / "transfer")
    summary = summarise(acc)
    print(summary.to_string(index=False, float_format="%.2f"))
    save(plot(acc, summary, root.name), summary, root, "transfer")


if __name__ == "__main__":
    from experiments import errors

    errors.cli(main)

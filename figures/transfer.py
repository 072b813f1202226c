"""Transfer-learning figure, one column per model: test accuracy vs epoch and training loss vs epoch
(mean ± sd over seeds), and final test accuracy vs total training time, from the CSVs under
results/<profile>/transfer/. The training loss says whether a gap in accuracy is under-fitting
(a higher training loss) or not.

    python -m figures.transfer [--profile quick|cpu|paper] [--results-dir results]

Writes results/<profile>/figures/transfer.{png,pdf} and prints (and saves as transfer.csv) the
table behind the lower row: per model and method, the final accuracy and training time over seeds,
and which runs were left out and why (`figures.left_out`).
"""

from pathlib import Path

import pandas as pd

from experiments.core.runlog import last_epoch, no_complete_runs, read_results, read_runs
from figures import left_out, results_root, save, style
from figures.style import plt

MODELS = {"resnet50": "ResNet-50", "resnet34": "ResNet-34", "small_resnet": "Small ResNet",
          "distilbert": "DistilBERT"}
# The data set a model's runs use when their `dataset` is "" (experiments.transfer's defaults).
DEFAULT_DATA = {"resnet50": "cifar100", "resnet34": "cifar10", "small_resnet": "generated"}
ORDER = ("multirate", "train_all", "layer2+3+4+fc", "layer3+4+fc", "layer4+fc", "fc",
         "distilbert_multirate", "distilbert_multirate_l5", "distilbert_train_all", "distilbert_train_345",
         "distilbert_train_45", "distilbert_train_5", "distilbert_head_only")  # the paper's legend order
METRIC = "test_accuracy"
LOSS = "train_loss"
# Chance accuracy of the two-class data sets, drawn in their panels (the curves start near it); on
# CIFAR (1 %, 10 %) the line would only stretch the axis far below every curve.
CHANCE = {"sst2": 50.0, "synthetic_sentiment": 50.0}


def load(folder: Path) -> pd.DataFrame:
    """The accuracy and training-loss rows of every complete run, with the run's model and dataset."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        raise SystemExit(no_complete_runs(folder))
    runs = read_runs(folder)
    for column in ("model", "dataset"):
        if column not in runs:
            runs[column] = ""
    runs["dataset"] = [d or DEFAULT_DATA.get(m, "") for m, d in zip(runs.model, runs.dataset.fillna(""))]
    return rows[rows.metric.isin((METRIC, LOSS))].merge(runs[["run", "model", "dataset"]], on="run")


def summarise(acc: pd.DataFrame, left: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final accuracy and total training time per run, then mean and sd over seeds; with `left` (the
    runs left out, `left_out.runs(folder, ("model",))`), a ``left_out`` column saying which and why."""
    final = last_epoch(acc[acc.metric == METRIC])
    summary = (final.groupby(["model", "method"])
               .agg(accuracy=("value", "mean"), accuracy_sd=("value", "std"),
                    time_s=("time_s", "mean"), time_s_sd=("time_s", "std"), seeds=("seed", "nunique"))
               .reset_index())
    if left is None:
        return summary
    return left_out.add_column(summary, left, final, ("model", "method"))


def title(model: str, datasets) -> str:
    """"ResNet-50, CIFAR-100 data" as the paper; a stand-in model on generated data says so."""
    data = style.data_name(sorted(datasets)[0]) if len(datasets) == 1 else "mixed data"
    small = model == "distilbert" and data == "generated data"  # the quick profile's tiny DistilBERT
    return f"{'Tiny ' if small else ''}{MODELS.get(model, model)}, {data}"


def plot(acc: pd.DataFrame, summary: pd.DataFrame, profile: str = "quick", left: pd.DataFrame | None = None):
    present = set(acc.model)
    models = [m for m in MODELS if m in present] + sorted(present - set(MODELS))
    fig, axes = plt.subplots(3, len(models), figsize=(5.2 * len(models), 11.5), squeeze=False,
                             gridspec_kw=dict(height_ratios=(1.15, 0.8, 1)))
    summary = summary.dropna(subset=["accuracy"])  # a method whose every run was left out: no point
    for col, model in enumerate(models):
        rows = acc[(acc.model == model) & (acc.metric == METRIC)]
        losses = acc[(acc.model == model) & (acc.metric == LOSS)]
        methods = style.ordered(rows.method.unique(), ORDER)
        colours = style.palette(methods)
        labels = {m: style.name(m) for m in methods}
        top, middle, bottom = axes[:, col]
        style.mean_sd(top, rows, methods, colours, labels)
        style.focus(top, rows, top=100.0)  # the gaps, not 0-100 %: the first epoch may fall below
        levels = {CHANCE[d] for d in set(rows.dataset) if d in CHANCE}
        low, high = top.get_ylim()
        chance = levels.pop() if len(levels) == 1 else None
        if chance is not None and chance >= low - 0.1 * (high - low):  # only where the curves come near it
            style.chance(top, chance)
        else:
            chance = None
        top.set(title=title(model, set(rows.dataset)), xlabel="epoch", ylabel="test accuracy (%)")
        style.mean_sd(middle, losses, methods, colours, labels)
        middle.set(yscale="log", xlabel="epoch", ylabel="training loss (log scale)",
                   title=f"training loss, {MODELS.get(model, model)}")
        for method in methods:
            r = summary[(summary.model == model) & (summary.method == method)].iloc[0]
            bottom.errorbar(r.time_s, r.accuracy, xerr=r.time_s_sd, yerr=r.accuracy_sd, color=colours[method],
                            linestyle="none", capsize=3, linewidth=1)
            bottom.plot(r.time_s, r.accuracy, color=colours[method], linestyle="none", label=labels[method],
                        **style.marker_style(method))
        bottom.set(title=f"final accuracy vs training time, {MODELS.get(model, model)}",
                   xlabel="training time (s)", ylabel="final test accuracy (%)")
        # One legend per model, under its column: the three panels share it (curves and points).
        handles = [style.legend_handle(m, colours[m], labels[m]) for m in methods]
        if chance is not None:
            handles += [h for h in top.get_legend_handles_labels()[0] if h.get_label().startswith("chance")]
        style.legend_under(bottom, handles)
    shown = acc[acc.metric == METRIC]
    left = left if left is not None else left_out.nothing(("model",))
    style.finish(fig, f"{style.seeds_note(summary.seeds)} (bands and bars) · "
                      f"{style.data_note(acc.dataset, profile)}",
                 left_out=left_out.note(left_out.described(left, shown, style.name)))
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    acc = load(root / "transfer")
    left = left_out.runs(root / "transfer", ("model",))
    summary = summarise(acc, left)
    print(summary.to_string(index=False, float_format="%.2f"))
    save(plot(acc, summary, root.name, left), summary, root, "transfer")


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

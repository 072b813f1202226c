"""Patch-augmented data figure: clean, patched and patch-only test accuracy vs epoch (mean ± sd over
seeds), one panel each, as in the paper's Figure 2, from the CSVs under results/<profile>/patch/.

    python -m figures.patch [--profile quick|cpu|paper] [--results-dir results]

Writes results/<profile>/figures/patch.{png,pdf} (the paper's methods and multirate with the other
half fast), patch-partitions.{png,pdf} when other fast parts have run (`make patch-partitions`:
each beside the two constant step sizes), and patch.csv: the final accuracies of every method per
seed and their mean and sd over seeds (seed "mean" and "sd" rows, which also say which runs were
left out and why: `figures.left_out`), which it also prints. Every multirate curve is named by its
fast part.
"""

from pathlib import Path

import pandas as pd

from experiments.core.runlog import last_epoch, no_complete_runs, read_results, read_runs
from figures import left_out, results_root, save, style
from figures.style import plt

PANELS = {"clean_accuracy": "clean test images", "patched_accuracy": "test images with patch",
          "patch_only_accuracy": "patch-only images"}
ORDER = ("small_lr", "large_lr", "multirate")  # the paper's three; other methods follow, sorted
FIGURE = (*ORDER, "multirate_early")  # patch.png; any other method is a fast part of patch-partitions.png
# Every multirate curve by its fast part (the paper does not say which part it made fast).
NAMES = {"multirate": "Multirate (deep half fast)", "multirate_early": "Multirate (shallow half fast)",
         "multirate_biases": "Multirate (biases fast)", "multirate_weights": "Multirate (weights fast)",
         "multirate_random_half": "Multirate (a random half of each tensor fast)",
         "multirate_bn": "Multirate (batch norm fast)"}
LEGEND_ROW = 5  # legend entries that fit in one row under the panels
CHANCE = 10.0  # %: ten classes (CIFAR-10, and the generated task)


def load(folder: Path) -> pd.DataFrame:
    """The accuracy rows of every complete run, with the run's step size h (lr, and lr_batch and
    batch_size, which scale it) and dataset."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        raise SystemExit(no_complete_runs(folder))
    runs = read_runs(folder)
    columns = {"lr": float("nan"), "lr_batch": 0, "batch_size": 0, "dataset": ""}
    for column, default in columns.items():
        if column not in runs:
            runs[column] = default
    return rows[rows.metric.isin(list(PANELS))].merge(runs[["run", *columns]], on="run")


def label(method: str, rows: pd.DataFrame) -> str:
    """The paper's legend: a constant step size as "h = 0.004" (the runs' lr), else the method's name.
    An lr given for another batch size (lr_batch) also shows the step it takes: "h = 0.004 (0.001 at
    batch 8)"."""
    steps = rows[rows.method == method][["lr", "lr_batch", "batch_size"]].dropna(subset=["lr"])
    steps = steps.drop_duplicates()
    if style.is_multirate(method) or len(steps) != 1:
        return style.name(method, NAMES)
    lr, lr_batch, batch = steps.iloc[0]
    if pd.notna(lr_batch) and lr_batch and lr_batch != batch:  # NaN: a run logged before lr_batch existed
        return f"h = {lr:g} ({lr * batch / lr_batch:g} at batch {batch:g})"
    return f"h = {lr:g}"


def final_table(acc: pd.DataFrame, left: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final-epoch accuracy per method and seed (one column per metric), then per method the mean
    and sd over seeds as rows with seed "mean" and "sd"; with `left` (`left_out.runs`), a
    ``left_out`` column on the "mean" rows saying which runs were left out and why."""
    final = last_epoch(acc)
    wide = final.pivot_table(index=["method", "seed"], columns="metric", values="value")[list(PANELS)]
    stats = wide.groupby("method").agg(["mean", "std"])
    summary = [stats.xs(stat, axis=1, level=1).assign(seed=label) for stat, label in
               (("mean", "mean"), ("std", "sd"))]
    per_seed = wide.reset_index().assign(seed=lambda d: d.seed.astype(str))
    table = (pd.concat([per_seed, *(s.reset_index() for s in summary)])
             .sort_values(["method", "seed"]).reset_index(drop=True)[["method", "seed", *PANELS]])
    if left is None:
        return table
    means = left_out.add_column(table[table.seed == "mean"], left, final).assign(seed="mean")
    table = pd.concat([table[table.seed != "mean"], means]).sort_values(["method", "seed"])
    return table.reset_index(drop=True)[["method", "seed", *PANELS, "left_out"]].fillna({"left_out": ""})


def plot(acc: pd.DataFrame, profile: str = "quick", subject: str = "patch-augmented",
         left: pd.DataFrame | None = None):
    methods = style.ordered(acc.method.unique(), ORDER)
    colours = style.palette(methods, style.PATCH_COLOURS)
    labels = {m: label(m, acc) for m in methods}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(14, 4.6))
    for ax, (metric, title) in zip(axes, PANELS.items()):
        style.mean_sd(ax, acc[acc.metric == metric], methods, colours, labels)
        style.chance(ax, CHANCE)
        ax.set(title=title, xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    seeds = acc.groupby("method").seed.nunique()
    note = f"{style.seeds_note(seeds)} · {style.data_note(acc.dataset, profile)}"
    omitted = left_out.note(left_out.described(left if left is not None else left_out.nothing(), acc,
                                               lambda m: label(m, acc)))
    # One legend under the panels: the curves fill every corner of some panel, and the panels share it.
    handles, names = axes[0].get_legend_handles_labels()
    rows = -(-len(names) // LEGEND_ROW)
    style.figure_legend(fig, handles, names, -(-len(names) // rows), note, omitted)  # column by column
    fig.suptitle(f"WideResNet-16, {subject} {style.data_name(sorted(set(acc.dataset))[0])}"
                 if acc.dataset.nunique() == 1 else f"WideResNet-16, {subject} data")
    style.finish(fig, note, legend_rows=rows, left_out=omitted)
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    acc = load(root / "patch")
    left = left_out.runs(root / "patch")
    table = final_table(acc, left)
    print(table.to_string(index=False, float_format="%.2f"))
    paper = acc[acc.method.isin(FIGURE)]
    if not paper.empty:
        save(plot(paper, root.name, left=left[left.method.isin(FIGURE)]), table, root, "patch")
    if not acc.method.isin(FIGURE).all():  # other fast parts, beside the two constant step sizes
        parts = acc[~acc.method.isin(FIGURE) | acc.method.isin(("small_lr", "large_lr"))]
        shown = left[~left.method.isin(FIGURE) | left.method.isin(("small_lr", "large_lr"))]
        save(plot(parts, root.name, "fast parts on patch-augmented", shown),
             None if not paper.empty else table, root, "patch-partitions")


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

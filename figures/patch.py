"""Patch-augmented data figure: clean, patched and patch-only test accuracy vs epoch (mean ± sd over
seeds), one panel each, as in the paper's Figure 2, from the CSVs under results/<profile>/patch/.

    python -m figures.patch [--profile quick|paper] [--results-dir results]

Writes results/<profile>/figures/patch.{png,pdf}, and patch.csv: the final accuracies per method and
seed and their mean and sd over seeds (seed "mean" and "sd" rows), which it also prints.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.runlog import last_epoch, read_results  # noqa: E402
from figures import results_root, save  # noqa: E402

PANELS = {"clean_accuracy": "clean test images", "patched_accuracy": "test images with patch",
          "patch_only_accuracy": "patch-only images"}
ORDER = ("small_lr", "large_lr", "multirate")  # the paper's three; other methods follow, sorted


def load(folder: Path) -> pd.DataFrame:
    """The accuracy rows of every complete run."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        raise SystemExit(f"no complete runs under {folder}: run the experiments first")
    return rows[rows.metric.isin(list(PANELS))]


def final_table(acc: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch accuracy per method and seed (one column per metric), then per method the mean
    and sd over seeds as rows with seed "mean" and "sd"."""
    final = last_epoch(acc)
    wide = final.pivot_table(index=["method", "seed"], columns="metric", values="value")[list(PANELS)]
    stats = wide.groupby("method").agg(["mean", "std"])
    summary = [stats.xs(stat, axis=1, level=1).assign(seed=label) for stat, label in
               (("mean", "mean"), ("std", "sd"))]
    per_seed = wide.reset_index().assign(seed=lambda d: d.seed.astype(str))
    return (pd.concat([per_seed, *(s.reset_index() for s in summary)])
            .sort_values(["method", "seed"]).reset_index(drop=True)[["method", "seed", *PANELS]])


def plot(acc: pd.DataFrame):
    present = set(acc.method)
    methods = [m for m in ORDER if m in present] + sorted(present - set(ORDER))
    colours = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(14, 4.2))
    for ax, (metric, title) in zip(axes, PANELS.items()):
        sns.lineplot(acc[acc.metric == metric], x="epoch", y="value", hue="method", hue_order=methods,
                     palette=colours, errorbar="sd", ax=ax, legend=ax is axes[0])
        ax.set(title=title, ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    acc = load(root / "patch")
    table = final_table(acc)
    print(table.to_string(index=False, float_format="%.2f"))
    save(plot(acc), table, root, "patch")


if __name__ == "__main__":
    main()

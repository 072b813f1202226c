"""Transfer-learning figure: test accuracy vs epoch (mean ± sd over seeds) and final test accuracy
vs total training time, one column per model, from the CSVs under results/<profile>/transfer/.

    python -m figures.transfer [--profile quick|paper] [--results-dir results]

Writes results/<profile>/figures/transfer.{png,pdf} and prints (and saves as transfer.csv) the
table behind the lower row: per model and method, the final accuracy and training time over seeds.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.runlog import last_epoch, read_results, read_runs  # noqa: E402
from figures import results_root, save  # noqa: E402

TITLES = {
    "resnet50": "ResNet-50 on CIFAR-100",
    "resnet34": "ResNet-34 on CIFAR-10",
    "distilbert": "DistilBERT on SST-2",
}
METRIC = "test_accuracy"


def load(folder: Path) -> pd.DataFrame:
    """The accuracy rows of every complete run, with the run's model and dataset."""
    rows = read_results(folder, only_complete=True)
    if rows.empty:
        raise SystemExit(f"no complete runs under {folder}: run the experiments first")
    runs = read_runs(folder)
    keep = [c for c in ("run", "model", "dataset") if c in runs.columns]
    return rows[rows.metric == METRIC].merge(runs[keep], on="run")


def summarise(acc: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy and total training time per run, then mean and sd over seeds."""
    final = last_epoch(acc)
    return (final.groupby(["model", "method"])
            .agg(accuracy=("value", "mean"), accuracy_sd=("value", "std"),
                 time_s=("time_s", "mean"), time_s_sd=("time_s", "std"), seeds=("seed", "nunique"))
            .reset_index())


def plot(acc: pd.DataFrame, summary: pd.DataFrame, title_of=TITLES):
    present = set(acc.model)
    models = [m for m in title_of if m in present] + sorted(present - set(title_of))
    methods = sorted(acc.method.unique())
    colours = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    fig, axes = plt.subplots(2, len(models), figsize=(4.8 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0, col], axes[1, col]
        sns.lineplot(acc[acc.model == model], x="epoch", y="value", hue="method", palette=colours,
                     errorbar="sd", ax=top, legend=col == 0)
        top.set(title=title_of.get(model, model), ylabel="test accuracy (%)")
        for _, r in summary[summary.model == model].iterrows():
            bottom.errorbar(r.time_s, r.accuracy, xerr=r.time_s_sd, yerr=r.accuracy_sd, fmt="o",
                            color=colours[r.method], capsize=3)
            bottom.annotate(r.method, (r.time_s, r.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        bottom.set(xlabel="training time (s)", ylabel="final test accuracy (%)")
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    acc = load(root / "transfer")
    summary = summarise(acc)
    print(summary.to_string(index=False, float_format="%.2f"))
    save(plot(acc, summary), summary, root, "transfer")


if __name__ == "__main__":
    main()

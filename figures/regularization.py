"""Regularisation figure: validation loss vs epoch of the transformer LM and test accuracy vs epoch of
the perceptron, per method (mean ± sd over seeds), from the CSVs under
results/<profile>/regularization_lm/ and results/<profile>/regularization_mlp/.

    python -m figures.regularization [--profile quick|paper] [--results-dir results]

Writes results/<profile>/figures/regularization.{png,pdf} and prints (and saves as
regularization.csv) the summary: per experiment and method, means over seeds of the minimum
validation loss and its epoch, the final validation loss, the rise from one to the other, the test
perplexity at the best-validation epoch (LM), and the final and best test accuracy (perceptron).
Either experiment may be missing; the figure then has only the other panel.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.runlog import read_results  # noqa: E402
from figures import results_root, save  # noqa: E402

METHODS = ("sgd", "dropout", "multirate")  # plotting order; other methods follow
TITLES = {"regularization_lm": "Transformer LM: validation loss",
          "regularization_mlp": "One-hidden-layer perceptron: test accuracy"}
PANELS = {"regularization_lm": ("val_loss", "validation loss (nats/token)"),
          "regularization_mlp": ("test_accuracy", "test accuracy (%)")}


def load(root: Path) -> dict[str, pd.DataFrame]:
    """The rows of every complete run, per experiment folder that has any."""
    found = {name: read_results(root / name, only_complete=True) for name in PANELS}
    found = {name: rows for name, rows in found.items() if not rows.empty}
    if not found:
        raise SystemExit(f"no complete runs under {root}/regularization_lm or {root}/regularization_mlp: "
                         "run the experiments first")
    return found


def per_run_lm(rows: pd.DataFrame) -> pd.DataFrame:
    """Per LM run: min validation loss, its epoch, final validation loss, test ppl at that epoch."""
    wide = rows.pivot_table(index=["method", "seed", "run", "epoch"], columns="metric", values="value")
    wide = wide.reset_index().sort_values(["run", "epoch"])
    out = []
    for (method, seed, _run), r in wide.groupby(["method", "seed", "run"]):
        best = r.loc[r.val_loss.idxmin()]
        out.append(dict(method=method, seed=seed, min_val_loss=best.val_loss, best_epoch=best.epoch,
                        final_val_loss=r.val_loss.iloc[-1], rise=r.val_loss.iloc[-1] - best.val_loss,
                        test_ppl_at_best=best.test_ppl))
    return pd.DataFrame(out)


def per_run_mlp(rows: pd.DataFrame) -> pd.DataFrame:
    """Per perceptron run: final and best test accuracy, and the epoch of the best."""
    acc = rows[rows.metric == "test_accuracy"].sort_values(["run", "epoch"])
    out = []
    for (method, seed, _run), r in acc.groupby(["method", "seed", "run"]):
        best = r.loc[r.value.idxmax()]
        out.append(dict(method=method, seed=seed, final_accuracy=r.value.iloc[-1],
                        best_accuracy=best.value, best_epoch=best.epoch))
    return pd.DataFrame(out)


def summarise(found: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Means (and sds, columns ``*_sd``) over seeds of the per-run numbers, one row per experiment
    and method."""
    tables = []
    for name, rows in found.items():
        runs = per_run_lm(rows) if name == "regularization_lm" else per_run_mlp(rows)
        stats = runs.drop(columns="seed").groupby("method")
        mean, sd = stats.mean(), stats.std().add_suffix("_sd")
        table = pd.concat([mean, sd], axis=1)[[c for col in mean for c in (col, f"{col}_sd")]]
        table["seeds"] = runs.groupby("method").seed.nunique()
        tables.append(table.reset_index().assign(experiment=name))
    summary = pd.concat(tables, ignore_index=True)
    order = {m: i for i, m in enumerate(METHODS)}
    summary = summary.sort_values(["experiment", "method"], key=lambda c: c.map(order) if c.name == "method"
                                  else c).reset_index(drop=True)
    values = [c for c in summary.columns if c not in ("experiment", "method", "seeds")]
    return summary[["experiment", "method", *values, "seeds"]]


def plot(found: dict[str, pd.DataFrame]):
    names = [n for n in PANELS if n in found]
    methods = sorted({m for rows in found.values() for m in rows.method},
                     key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))
    colours = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    fig, axes = plt.subplots(1, len(names), figsize=(5.6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        metric, label = PANELS[name]
        rows = found[name]
        sns.lineplot(rows[rows.metric == metric], x="epoch", y="value", hue="method", hue_order=methods,
                     palette=colours, errorbar="sd", ax=ax)
        if metric == "val_loss":  # mark each method's minimum of the mean curve
            mean = rows[rows.metric == metric].groupby(["method", "epoch"]).value.mean()
            for method, curve in mean.groupby(level="method"):
                epoch = curve.droplevel("method").idxmin()
                ax.plot(epoch, curve.min(), "v", color=colours[method], markersize=7)
            # From the lowest minimum to the highest final loss: the first epochs' high losses
            # would flatten the part that matters.
            lo, hi = mean.min(), mean.groupby(level="method").last().max()
            ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))
        else:
            final = rows[(rows.metric == metric) & (rows.epoch > rows.epoch.max() // 10)].value
            ax.set_ylim(final.min() - 0.5, final.max() + 0.5)
        ax.set(title=TITLES[name], ylabel=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    found = load(root)
    summary = summarise(found)
    save(plot(found), summary, root, "regularization")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        for _, table in summary.groupby("experiment", sort=False):
            print(table.dropna(axis=1, how="all").to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    main()

"""Regularisation figure: validation loss vs epoch of the transformer LM and test accuracy vs epoch of
the perceptron, per method (mean ± sd over seeds), and under each its training loss (the claims are
about over-fitting: the gap between the two), from the CSVs under
results/<profile>/regularization_lm/ and results/<profile>/regularization_mlp/.

    python -m figures.regularization [--profile quick|cpu|paper] [--results-dir results]

Writes results/<profile>/figures/regularization.{png,pdf} and prints (and saves as
regularization.csv) the summary: per experiment and method, means over seeds of the minimum
validation loss and its epoch, the final validation loss, the rise from one to the other, the test
perplexity at the best-validation epoch (LM), the final and best test accuracy (perceptron), and
which runs were left out and why (`figures.left_out`). Either experiment may be missing; the figure
then has only the other column.
"""

from pathlib import Path

import pandas as pd

from experiments.core.runlog import no_complete_runs, read_results, read_runs
from figures import left_out, results_root, save, style
from figures.style import plt

METHODS = ("sgd", "dropout", "multirate")  # plotting order; other methods follow
NAMES = {"multirate": "Multirate (random subgroups)"}  # its fast part: a fresh random subset each cycle
TITLES = {"regularization_lm": "Transformer LM, {data}: validation loss",
          "regularization_mlp": "One-hidden-layer perceptron, {data}: test accuracy"}
SHORT = {"regularization_lm": "Transformer LM", "regularization_mlp": "Perceptron"}
PANELS = {"regularization_lm": ("val_loss", "validation loss (nats/token)"),
          "regularization_mlp": ("test_accuracy", "test accuracy (%)")}


def load(root: Path) -> dict[str, pd.DataFrame]:
    """The rows of every complete run, per experiment folder that has any."""
    found = {name: read_results(root / name, only_complete=True) for name in PANELS}
    found = {name: rows for name, rows in found.items() if not rows.empty}
    if not found:
        raise SystemExit("; ".join(no_complete_runs(root / name) for name in PANELS))
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


def summarise(found: dict[str, pd.DataFrame], left: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Means (and sds, columns ``*_sd``) over seeds of the per-run numbers, one row per experiment
    and method; with `left` (per experiment, `left_out.runs`), a ``left_out`` column saying which
    runs were left out and why."""
    tables = []
    for name, rows in found.items():
        runs = per_run_lm(rows) if name == "regularization_lm" else per_run_mlp(rows)
        stats = runs.drop(columns="seed").groupby("method")
        mean, sd = stats.mean(), stats.std().add_suffix("_sd")
        table = pd.concat([mean, sd], axis=1)[[c for col in mean for c in (col, f"{col}_sd")]]
        table["seeds"] = runs.groupby("method").seed.nunique()
        table = table.reset_index()
        if left is not None:
            table = left_out.add_column(table, left[name], rows)
        tables.append(table.assign(experiment=name))
    summary = pd.concat(tables, ignore_index=True)
    order = {m: i for i, m in enumerate(METHODS)}
    summary = summary.sort_values(["experiment", "method"], key=lambda c: c.map(order) if c.name == "method"
                                  else c).reset_index(drop=True)
    values = [c for c in summary.columns if c not in ("experiment", "method", "seeds", "left_out")]
    return summary[["experiment", "method", *values, "seeds", *(["left_out"] if left is not None else [])]]


def datasets(root: Path, found: dict[str, pd.DataFrame]) -> dict[str, set[str]]:
    """The `dataset` field of each experiment's runs (from their JSONs)."""
    out = {}
    for name in found:
        runs = read_runs(root / name)
        out[name] = set(runs.dataset) if "dataset" in runs else {""}
    return out


def plot(found: dict[str, pd.DataFrame], data: dict[str, set[str]] | None = None, profile: str = "quick",
         left: dict[str, pd.DataFrame] | None = None):
    names = [n for n in PANELS if n in found]
    data = data or {name: {""} for name in names}
    methods = style.ordered({m for rows in found.values() for m in rows.method}, METHODS)
    colours = style.palette(methods)
    labels = {m: style.name(m, NAMES) for m in methods}
    fig, axes = plt.subplots(2, len(names), figsize=(5.8 * len(names), 7.6), squeeze=False,
                             gridspec_kw=dict(height_ratios=(1.3, 1)))
    seeds = []
    for (ax, below), name in zip(axes.T, names):
        metric, label = PANELS[name]
        rows = found[name][found[name].metric == metric]
        present = [m for m in methods if m in set(rows.method)]
        style.mean_sd(ax, rows, present, colours, labels)
        seeds += list(rows.groupby("method").seed.nunique())
        if metric == "val_loss":  # mark each method's minimum of the mean curve
            mean = rows.groupby(["method", "epoch"]).value.mean()
            for method, curve in mean.groupby(level="method"):
                epoch = curve.droplevel("method").idxmin()
                ax.plot(epoch, curve.min(), "v", color=colours[method], markersize=8, zorder=5,
                        markeredgecolor="k")
            ax.plot([], [], "v", color="0.6", markeredgecolor="k", markersize=8, label="minimum of the mean")
            # From the lowest minimum to the highest final loss: the first epochs' high losses
            # would flatten the part that matters.
            lo, hi = mean.min(), mean.groupby(level="method").last().max()
            ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))
        else:
            final = rows[rows.epoch > rows.epoch.max() // 10].value
            ax.set_ylim(final.min() - 0.5, min(final.max() + 0.5, 100.0))  # never above 100 %
        ax.set(title=TITLES[name].format(data=style.data_name(sorted(data[name])[0]) if len(data[name]) == 1
                                         else "mixed data"), xlabel="epoch", ylabel=label)
        train = found[name][found[name].metric == "train_loss"]
        style.mean_sd(below, train, [m for m in methods if m in set(train.method)], colours, labels)
        below.set(yscale="log", title=f"{SHORT[name]}: training loss", xlabel="epoch",
                  ylabel="training loss (log scale)")
    # One legend for the figure: every panel draws the same methods in the same colours.
    entries = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    datasets_shown = [d for name in names for d in data[name]]
    note = f"{style.seeds_note(seeds)} · {style.data_note(datasets_shown, profile)}"
    left = left or {}
    omitted = left_out.note([part for name in names for part in left_out.described(
        left.get(name, left_out.nothing()), found[name],
        lambda m, name=name: f"{style.name(m, NAMES)} ({SHORT[name]})")])
    style.figure_legend(fig, list(entries.values()), list(entries), len(entries), note, omitted)
    style.finish(fig, note, legend_rows=1, left_out=omitted)
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    found = load(root)
    left = {name: left_out.runs(root / name) for name in found}
    summary = summarise(found, left)
    save(plot(found, datasets(root, found), root.name, left), summary, root, "regularization")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        for _, table in summary.groupby("experiment", sort=False):
            print(table.dropna(axis=1, how="all").to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

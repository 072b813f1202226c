"""Ablation figures: one per ablation of `experiments.ablations`, from the run CSVs and JSONs alone.

    python -m figures.ablations [--profile quick|paper] [--results-dir results]

For every ablation with complete runs under ``<results>/ablations/<name>/<profile>/<experiment>/``,
writes ``<results>/<profile>/figures/ablation_<name>.{png,pdf}`` and ``ablation_<name>.csv``: one
row per variant and metric with the variant's config fields (from the run JSONs), the final-epoch
value and the training time (mean and sd over seeds). A run belongs to a variant when its method
and every field that any variant of the ablation overrides have the variant's values. The ``k``
table adds, per base optimizer, the speed-up over train-all (train-all's time / the run's time)
and the accuracy gap (accuracy - train-all's accuracy, in points).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on clusters and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments import ablations  # noqa: E402
from experiments.runlog import last_epoch, read_results, read_runs  # noqa: E402
from figures import results_root, save  # noqa: E402

# The final-epoch metrics each experiment is judged by.
METRICS = {"transfer": ["test_accuracy"], "regularization_mlp": ["test_accuracy"],
           "regularization_lm": ["val_loss"],
           "patch": ["clean_accuracy", "patched_accuracy", "patch_only_accuracy"]}
FIELDS = ["optimizer", "lr", "k", "linear_drift", "fast", "train", "slow_fraction"]


def _field(value):
    """Config values as the table shows them: lists joined with "+"."""
    return "+".join(map(str, value)) if isinstance(value, list) else value


def final_rows(name: str, results_dir: str | Path, profile: str) -> pd.DataFrame:
    """One row per complete run of ablation `name` and metric, at the run's last evaluation."""
    # Every field some variant of this ablation sets: a variant that leaves one at the
    # experiment's value must not claim its neighbours' runs.
    varied = dict.fromkeys(o.partition("=")[0] for v in ablations.ABLATIONS[name] for o in v.overrides)
    keys = ["method", *varied]
    logs = {}  # experiment -> (its rows, its runs): the variants of an ablation share folders
    frames = []
    for variant in ablations.ABLATIONS[name]:
        if variant.experiment not in logs:
            folder = ablations.ablation_results_dir(results_dir, name) / profile / variant.experiment
            rows = read_results(folder, only_complete=True)
            logs[variant.experiment] = (rows, None if rows.empty else read_runs(folder))
        rows, runs = logs[variant.experiment]
        if rows.empty:
            continue
        want = ablations.variant_config(variant, profile, 0, results_dir, name)
        match = runs[runs.status == "complete"]
        for key in keys:
            match = match.loc[[value == getattr(want, key) for value in match[key]]]
        rows = rows[rows.run.isin(match.run) & rows.metric.isin(METRICS[variant.experiment])]
        rows = last_epoch(rows)
        config = match.set_index("run")[FIELDS].map(_field)
        frames.append(rows.join(config, on="run").assign(label=variant.label, experiment=variant.experiment))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def summarise(final: pd.DataFrame, name: str) -> pd.DataFrame:
    """Mean and sd over seeds per variant and metric, in the ablation's order; k adds the trade-off."""
    order = {v.label: i for i, v in enumerate(ablations.ABLATIONS[name])}
    table = (final.groupby(["label", "experiment", "metric", *FIELDS], sort=False)
             .agg(value=("value", "mean"), value_sd=("value", "std"), time_s=("time_s", "mean"),
                  time_s_sd=("time_s", "std"), seeds=("seed", "nunique"))
             .reset_index())
    table = table.sort_values("label", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    if name == "k":
        table = tradeoff(table)
    return table


def base_of(optimizer: str) -> str:
    """The base algorithm of an optimizer name: "sgd" for sgd/multirate, "adamw" for adamw/multirate_adamw."""
    return "adamw" if optimizer.endswith("adamw") else "sgd"


def tradeoff(table: pd.DataFrame) -> pd.DataFrame:
    """Add `base`, `speedup` (train-all time / time) and `accuracy_gap` (value - train-all value)
    against the train-all run of the same base optimizer and metric."""
    table = table.assign(base=table.optimizer.map(base_of))
    reference = (table[~table.optimizer.str.startswith("multirate")]
                 .set_index(["base", "metric"])[["value", "time_s"]].add_prefix("reference_"))
    table = table.join(reference, on=["base", "metric"])
    table["speedup"] = table.reference_time_s / table.time_s
    table["accuracy_gap"] = table.value - table.reference_value
    return table.drop(columns=["reference_value", "reference_time_s"])


def plot(table: pd.DataFrame, name: str):
    """A figure per ablation: k -> accuracy vs time and speed-up vs k; otherwise bars per variant."""
    metrics = list(dict.fromkeys(table.metric))
    if name == "k":
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for base, part in table.groupby("base"):
            multi = part[part.optimizer.str.startswith("multirate")]
            line = left.errorbar(multi.time_s, multi.value, yerr=multi.value_sd.fillna(0), fmt="o-",
                                 capsize=3, label=f"multirate ({base})")
            for _, r in multi.iterrows():
                left.annotate(f"k={r.k}", (r.time_s, r.value), textcoords="offset points", xytext=(4, 4),
                              fontsize=8)
            ref = part[~part.optimizer.str.startswith("multirate")]
            left.errorbar(ref.time_s, ref.value, yerr=ref.value_sd.fillna(0), fmt="*", markersize=12,
                          color=line[0].get_color(), label=f"train-all ({base})")
            right.plot(multi.k, multi.speedup, "o-", label=base)
        left.set(xlabel="training time (s)", ylabel="final test accuracy (%)", title="accuracy vs time")
        right.axhline(1, color="grey", lw=0.8)
        right.set(xlabel="k", ylabel="speed-up over train-all", title="speed-up vs k")
        ks = sorted(table[table.optimizer.str.startswith("multirate")].k.unique())
        if ks:
            right.set_xscale("log")
            right.set_xticks(ks, labels=[str(k) for k in ks])
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    elif name == "subgroups":
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        multi = table[table.optimizer == "multirate"]
        sgd = table[table.optimizer == "sgd"]
        k_fixed = multi.k.mode().iloc[0] if len(multi) else 2  # the k of the fraction sweep
        f_fixed = multi.slow_fraction.mode().iloc[0] if len(multi) else 0.2
        for ax, x, part, title in (
                (axes[0], "slow_fraction", multi[multi.k == k_fixed], f"k = {k_fixed}"),
                (axes[1], "k", multi[multi.slow_fraction == f_fixed], f"slow fraction = {f_fixed}")):
            part = part.sort_values(x)
            ax.errorbar(part[x], part.value, yerr=part.value_sd.fillna(0), fmt="o-", capsize=3,
                        label="multirate, random subgroups")
            for _, r in sgd.iterrows():
                ax.axhline(r.value, color="grey", ls="--", label="SGD")
            ax.set(xlabel=x.replace("_", " ") + (" (redraw period)" if x == "k" else ""), title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set(ylabel=f"final {metrics[0]}")
    else:
        fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 + 3.5 * len(metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], [*metrics, "time_s"]):
            part = table[table.metric == metric]
            if metric == "time_s":
                part = table.drop_duplicates("label")
                ax.barh(part.label, part.time_s, xerr=part.time_s_sd.fillna(0), capsize=3, color="grey")
                ax.set(xlabel="training time (s)")
            else:
                bars = ax.barh(part.label, part.value, xerr=part.value_sd.fillna(0), capsize=3)
                ax.bar_label(bars, fmt="%.2f", label_type="center", color="white", fontsize=8)
                # Zoomed in on the values: the bars' lengths are not proportional to accuracy.
                pad = 3 * max(part.value_sd.fillna(0).max(), 1)
                limits = (max(part.value.min() - pad, 0), min(part.value.max() + pad, 100))
                ax.set(xlabel=f"final {metric}", xlim=limits if "accuracy" in metric else None)
            ax.invert_yaxis()
            ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"ablation: {name}")
    fig.tight_layout()
    return fig


def main(argv=None):
    parser_root = results_root(__doc__.splitlines()[0], argv)
    results_dir, profile = parser_root.parent, parser_root.name
    written = []
    for name in ablations.ABLATIONS:
        final = final_rows(name, results_dir, profile)
        if final.empty:
            print(f"ablation {name}: no complete runs yet (python -m experiments.ablations --only {name})")
            continue
        table = summarise(final, name)
        print(f"ablation {name}:\n{table.to_string(index=False, float_format='%.3g')}")
        save(plot(table, name), table, parser_root, f"ablation_{name}")
        written.append(name)
    return written


if __name__ == "__main__":
    main()

"""Ablation figures: one per ablation of `experiments.ablations`, from the run CSVs and JSONs alone.

    python -m figures.ablations [--profile quick|cpu|paper] [--results-dir results]

For every ablation with complete runs under ``<results>/ablations/<name>/<profile>/<experiment>/``,
writes ``<results>/<profile>/figures/ablation_<name>.{png,pdf}`` and ``ablation_<name>.csv``: one
row per variant and metric with the variant's config fields (from the run JSONs), the final-epoch
value and the training time (mean and sd over seeds). A run belongs to a variant when its method
and every field that any variant of the ablation overrides have the variant's values. The tables are
``experiments.ablations.final_rows`` and ``summarise`` (the report reads them too); the ``k``
table adds, per base optimizer, the speed-up over train-all (train-all's time / the run's time)
and the accuracy gap (accuracy - train-all's accuracy, in points). Runs left out of a figure (diverged,
not finished: ``experiments.ablations.left_out_runs``) are named with the reason in its note and in
the table's ``left_out`` column.
"""

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from experiments import ablations
from figures import left_out, results_root, save, style
from figures.style import plt

METRIC_NAMES = {"test_accuracy": "test accuracy (%)", "val_loss": "validation loss",
                "clean_accuracy": "clean accuracy (%)", "patched_accuracy": "accuracy with patch (%)",
                "patch_only_accuracy": "patch-only accuracy (%)"}

BASES = {"sgd": ("SGD", "o", "-"), "adamw": ("AdamW", "s", "--")}  # base -> name, marker, line style
BASELINE = "#8c8c8c"  # bars of the non-multirate variants; multirate's are style.COLOURS["multirate"]


def plot(table: pd.DataFrame, name: str, profile: str = "quick", omitted: str = ""):
    """A figure per ablation: k -> accuracy vs time and speed-up vs k; otherwise bars per variant;
    `omitted`: the note on the runs it leaves out (`omitted_note`)."""
    metrics = list(dict.fromkeys(table.metric))
    if name == "k":
        fig = _plot_k(table)
    elif name == "subgroups":
        fig = _plot_subgroups(table, metrics)
    else:
        fig = _plot_bars(table, metrics)
    fig.suptitle(f"Ablation: {name}")
    data = "generated data" if profile != "paper" else "the paper's data sets"
    style.finish(fig, f"{style.seeds_note(table.seeds)} · {profile} profile: {data}", left_out=omitted)
    return fig


def _plot_k(table: pd.DataFrame):
    """Accuracy against training time (colour: k, shape: the base) and the speed-up against k."""
    multirate_colour = style.COLOURS["multirate"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    ks = sorted(table[table.optimizer.str.startswith("multirate")].k.unique())
    viridis = plt.get_cmap("viridis")
    k_colour = {k: viridis(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
    handles = [Line2D([], [], marker="o", color=k_colour[k], linestyle="none", label=f"k = {k}")
               for k in ks]
    for base, part in table.groupby("base"):
        base_name, marker, line = BASES.get(base, (base, "D", ":"))
        multi = part[part.optimizer.str.startswith("multirate")].sort_values("k")
        # Colour says k, shape says the base: no text labels beside points that may coincide.
        left.plot(multi.time_s, multi.value, color="0.7", linestyle=line, zorder=1)
        for _, r in multi.iterrows():
            left.errorbar(r.time_s, r.value, yerr=0 if pd.isna(r.value_sd) else r.value_sd, marker=marker,
                          color=k_colour[r.k], markersize=8, capsize=3, linestyle="none", zorder=3)
        ref = part[~part.optimizer.str.startswith("multirate")]
        left.errorbar(ref.time_s, ref.value, yerr=ref.value_sd.fillna(0), marker="*", markersize=14,
                      color="k", markerfacecolor="k" if base == "sgd" else "w", linestyle="none",
                      capsize=3)
        right.plot(multi.k, multi.speedup, marker=marker, color=multirate_colour, linestyle=line,
                   linewidth=2.4, label=f"Multirate, {base_name} base")
        handles.append(Line2D([], [], marker=marker, color="0.4", linestyle=line,
                              label=f"Multirate, {base_name} base"))
    handles.append(Line2D([], [], marker="*", color="k", markersize=12, linestyle="none",
                          label="Train All (filled: SGD, open: AdamW)"))
    left.legend(handles=handles, ncol=2)
    left.set(xlabel="training time (s)", ylabel="final test accuracy (%)",
             title="accuracy vs training time")
    right.axhline(1, color="0.45", linestyle=":", linewidth=1.2, label="Train All (= 1)")
    right.set(xlabel="k", ylabel="speed-up over Train All", title="speed-up vs k")
    if ks:
        right.set_xscale("log")
        right.set_xticks(ks, labels=[str(k) for k in ks])
        right.minorticks_off()  # else the log axis labels its minor ticks too ("3 x 10^0")
    right.legend()
    return fig


def _plot_subgroups(table: pd.DataFrame, metrics: list[str]):
    """Random subgroups: the final metric against the slow fraction (k fixed) and against k, with SGD."""
    multirate_colour = style.COLOURS["multirate"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    multi = table[table.optimizer == "multirate"]
    sgd = table[table.optimizer == "sgd"]
    k_fixed = multi.k.mode().iloc[0] if len(multi) else 2  # the k of the fraction sweep
    f_fixed = multi.slow_fraction.mode().iloc[0] if len(multi) else 0.2
    for ax, x, part, title in (
            (axes[0], "slow_fraction", multi[multi.k == k_fixed], f"k = {k_fixed}"),
            (axes[1], "k", multi[multi.slow_fraction == f_fixed], f"slow fraction = {f_fixed}")):
        part = part.sort_values(x)
        ax.errorbar(part[x], part.value, yerr=part.value_sd.fillna(0), marker="x", markersize=9,
                    markeredgewidth=2, capsize=3, color=multirate_colour, linewidth=2.4,
                    label="Multirate, random subgroups")
        for i, value in enumerate(sgd.value):
            ax.axhline(value, color=style.COLOURS["sgd"], linestyle="--", label=None if i else "SGD")
        ax.set(xlabel=x.replace("_", " ") + (" (redraw period)" if x == "k" else ""), title=title)
        ax.legend()
    axes[0].set(ylabel=f"final {METRIC_NAMES.get(metrics[0], metrics[0])}")
    return fig


def _plot_bars(table: pd.DataFrame, metrics: list[str]):
    """A bar per variant for each metric and for the training time."""
    multirate_colour = style.COLOURS["multirate"]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.4 + 3.6 * len(metrics), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], [*metrics, "time_s"]):
        part = table[table.metric == metric] if metric != "time_s" else table.drop_duplicates("label")
        colours = [multirate_colour if o.startswith("multirate") else BASELINE for o in part.optimizer]
        if metric == "time_s":
            ax.barh(part.label, part.time_s, xerr=part.time_s_sd.fillna(0), capsize=3, color=colours)
            ax.set(xlabel="training time (s)")
        else:
            bars = ax.barh(part.label, part.value, xerr=part.value_sd.fillna(0), capsize=3, color=colours)
            ax.bar_label(bars, fmt="%.2f", label_type="center", color="white", fontsize=8)
            # Zoomed in on the values: the bars' lengths are not proportional to accuracy.
            pad = 3 * max(part.value_sd.fillna(0).max(), 1)
            limits = (max(part.value.min() - pad, 0), min(part.value.max() + pad, 100))
            ax.set(xlabel=f"final {METRIC_NAMES.get(metric, metric)}",
                   xlim=limits if "accuracy" in metric else None)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    # One legend for all the bar panels: they share the colours, and a legend inside a panel
    # would hide bars.
    fig.legend(handles=[Patch(color=multirate_colour, label="Multirate"),
                        *([Patch(color=BASELINE, label="baseline")]
                          if not table.optimizer.str.startswith("multirate").all() else [])],
               loc="upper right")
    return fig


def omitted_note(left: pd.DataFrame, final: pd.DataFrame) -> str:
    """"left out: k = 5: 2 of 3 seeds, seed 1 diverged at epoch 4" for the variants with runs left
    out (`left`: `experiments.ablations.left_out_runs`; `final`: the complete runs' rows); "" if none."""
    texts = left_out.by_method(left, final, ("label",))
    return left_out.note([f"{label}: {text}" for label, text in texts.items()])


def main(argv=None):
    parser_root = results_root(__doc__.splitlines()[0], argv)
    results_dir, profile = parser_root.parent, parser_root.name
    written = []
    for name in ablations.grids():
        final = ablations.final_rows(name, results_dir, profile)
        left = ablations.left_out_runs(name, results_dir, profile)
        omitted = omitted_note(left, final)
        if final.empty:
            print(f"ablation {name}: no complete runs yet (python -m experiments.ablations --only {name})"
                  + (f"; {omitted}" if omitted else ""))
            continue
        table = ablations.summarise(final, name)
        print(f"ablation {name}:\n{table.to_string(index=False, float_format='%.3g')}"
              + (f"\n{omitted}" if omitted else ""))
        save(plot(table, name, profile, omitted), left_out.add_column(table, left, final, ("label",)),
             parser_root, f"ablation_{name}")
        written.append(name)
    return written


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

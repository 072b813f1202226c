"""The look every figure shares: the paper's method names and colours, multirate drawn apart (bold
line, cross marker, on top), mean ± sd curves, chance lines, and the note under each figure that
says what was averaged and on which data.

Importing it selects matplotlib's file-only backend (Agg: clusters and CI have no display).
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

plt.rcParams.update({
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "legend.framealpha": 0.9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.4,
})

# Method names as the paper's figures write them (DistilBERT: "fc" is the classification head).
NAMES = {
    "train_all": "Train All", "multirate": "Multirate",
    "layer2+3+4+fc": "Train Layer 2 + 3 + 4 + fc", "layer3+4+fc": "Train Layer 3 + 4 + fc",
    "layer4+fc": "Train Layer 4 + fc", "fc": "Train Layer fc",
    "distilbert_multirate": "Multirate, fast: fc", "distilbert_multirate_l5": "Multirate, fast: Layer 5 + fc",
    "distilbert_train_all": "Train All", "distilbert_train_345": "Train Layer 3 + 4 + 5 + fc",
    "distilbert_train_45": "Train Layer 4 + 5 + fc", "distilbert_train_5": "Train Layer 5 + fc",
    "distilbert_head_only": "Train Layer fc",
    "sgd": "SGD", "dropout": "SGD + dropout",
    "small_lr": "h = 0.004", "large_lr": "h = 0.1", "multirate_early": "Multirate, fast: shallow half",
    "multirate_biases": "Multirate, fast: biases", "multirate_weights": "Multirate, fast: weights",
    "multirate_random_half": "Multirate, fast: a random half of each tensor",
    "multirate_bn": "Multirate, fast: batch norm",
}
# The paper's colours: multirate blue in the transfer figure, green in the patch figure.
COLOURS = {
    "multirate": "#1f3fdf", "train_all": "#2e8b2e", "layer2+3+4+fc": "#8a2be2", "layer3+4+fc": "#e83ee8",
    "layer4+fc": "#c9788a", "fc": "#d62839",
    "distilbert_multirate": "#1f3fdf", "distilbert_multirate_l5": "#3d9be9",
    "distilbert_train_all": "#2e8b2e",
    "distilbert_train_345": "#8a2be2", "distilbert_train_45": "#e83ee8", "distilbert_train_5": "#c9788a",
    "distilbert_head_only": "#d62839",
    "sgd": "#e08a00", "dropout": "#7f7f7f",
}
PATCH_COLOURS = {"small_lr": "#1f3fdf", "large_lr": "#f0a000", "multirate": "#1e8c1e",
                 "multirate_early": "#8c564b", "multirate_biases": "#17becf", "multirate_weights": "#9467bd",
                 "multirate_random_half": "#e377c2", "multirate_bn": "#7f7f7f"}
DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "sst2": "SST-2", "ptb": "Penn Treebank",
            "mnist": "MNIST"}
BAND_ALPHA = 0.18


def name(method: str) -> str:
    """The paper's name of `method` (the method itself when the paper has none)."""
    return NAMES.get(method, method)


def is_multirate(method: str) -> bool:
    return "multirate" in method


def ordered(methods: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    """`methods` with those of `first` first, in that order, then the others sorted."""
    present, first = set(methods), list(first)
    return [m for m in first if m in present] + sorted(present - set(first))


def palette(methods: Iterable[str], colours: dict[str, str] = COLOURS) -> dict[str, str]:
    """A colour per method: `colours` where it has one, else the next tab10 colour not yet used."""
    spare = plt.get_cmap("tab10").colors
    out, i = {}, 0
    for method in methods:
        if method in colours:
            out[method] = colours[method]
        else:
            out[method], i = spare[i % len(spare)], i + 1
    return out


def line_style(method: str) -> dict:
    """Multirate apart: a bold line drawn above the others."""
    return dict(linewidth=2.4, zorder=4) if is_multirate(method) else dict(linewidth=1.4, zorder=3)


def marker_style(method: str) -> dict:
    """Multirate apart: a cross, as in the paper's accuracy-vs-time panels; the others dots."""
    return (dict(marker="x", markersize=10, markeredgewidth=2.5) if is_multirate(method)
            else dict(marker="o", markersize=7))


def mean_sd(ax, rows: pd.DataFrame, methods: list[str], colours: dict[str, str], labels: dict[str, str],
            x: str = "epoch", y: str = "value") -> None:
    """One line per method: the mean of `y` over seeds at each `x`, with a band of ± 1 sd (none
    where a single seed ran)."""
    for method in methods:
        stats = rows[rows.method == method].groupby(x)[y].agg(["mean", "std"])
        if stats.empty:
            continue
        ax.plot(stats.index, stats["mean"], color=colours[method], label=labels[method], **line_style(method))
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=colours[method], alpha=BAND_ALPHA, linewidth=0, zorder=2)
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def chance(ax, level: float, text: str = "chance") -> None:
    """A dotted grey line at the accuracy of guessing, in the legend as `text`; the axis is extended
    a little below it when it would lie on the frame (call it after drawing the curves)."""
    ax.axhline(level, color="0.45", linestyle=":", linewidth=1.2, zorder=1, label=f"{text} ({level:g} %)")
    low, high = ax.get_ylim()
    if level - low < 0.03 * (high - low):
        ax.set_ylim(level - 0.05 * (high - level), high)


def legend(ax, **kw) -> None:
    ax.legend(**{"loc": "best", **kw})


def legend_below_curves(ax) -> None:
    """The legend in an empty strip added under the curves: for panels whose curves pass through
    every corner, where "best" would still cover one."""
    entries = len(ax.get_legend_handles_labels()[1])
    strip = min(0.6, 0.052 * entries + 0.05)  # the legend's height, as a fraction of the axes
    low, high = ax.get_ylim()
    below = low - strip / (1 - strip) * (high - low)
    ax.set_ylim(max(below, 0.0) if low >= 0 else below, high)  # no accuracy axis below 0 %
    ax.legend(loc="lower right")


def seeds_note(seeds: Iterable[int]) -> str:
    """"mean ± sd, n = 3 seeds" from the number of seeds of each curve or point ("n = 1–3" if they differ)."""
    counts = sorted(set(int(n) for n in seeds))
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± sd, n = {n} seed{'s' if counts[-1] > 1 else ''}"


def data_name(dataset: str) -> str:
    """"CIFAR-100 data", or "generated data" for every stand-in data set of the quick and cpu profiles."""
    return f"{DATASETS[dataset]} data" if dataset in DATASETS else "generated data"


def data_note(datasets: Iterable[str], profile: str) -> str:
    """Which data the figure shows, for its note: real (named) or generated (and why)."""
    names = sorted({data_name(d) for d in datasets})
    if names == ["generated data"]:
        return f"{profile} profile: generated data (offline stand-ins for the paper's data sets)"
    return f"{profile} profile: " + ", ".join(names)


def finish(fig, note: str, legend_rows: int = 0) -> None:
    """Lay the figure out with `note` in small grey type along its bottom edge (above it, room for
    a figure legend of `legend_rows` rows)."""
    fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04 + 0.045 * legend_rows + (0.01 if legend_rows else 0), 1, 1))

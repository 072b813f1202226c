"""The look every figure shares: the paper's method names and colours, multirate drawn apart (bold
line, cross marker, on top, named by its fast part), mean ± sd curves, chance lines, one legend
for panels that share it, and the note under each figure that says what was averaged, on which
data, and which runs were left out and why.

Importing it selects matplotlib's file-only backend (Agg: clusters and CI have no display).
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

plt.rcParams.update({
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "legend.framealpha": 0.9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.4,
})

# Method names as the paper's figures write them, every multirate curve named by its fast part
# (DistilBERT: "fc" is the classification head). The patch and regularisation figures name their
# own multirate methods (`figures.patch.NAMES`, `figures.regularization.NAMES`).
NAMES = {
    "train_all": "Train All", "multirate": "Multirate (fc fast)",
    "layer2+3+4+fc": "Train Layer 2 + 3 + 4 + fc", "layer3+4+fc": "Train Layer 3 + 4 + fc",
    "layer4+fc": "Train Layer 4 + fc", "fc": "Train Layer fc",
    "distilbert_multirate": "Multirate (fc fast)", "distilbert_multirate_l5": "Multirate (Layer 5 + fc fast)",
    "distilbert_train_all": "Train All", "distilbert_train_345": "Train Layer 3 + 4 + 5 + fc",
    "distilbert_train_45": "Train Layer 4 + 5 + fc", "distilbert_train_5": "Train Layer 5 + fc",
    "distilbert_head_only": "Train Layer fc",
    "sgd": "SGD", "dropout": "SGD + dropout",
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


def name(method: str, names: dict[str, str] | None = None) -> str:
    """The paper's name of `method` (`names` first, then `NAMES`; the method itself when neither has
    one)."""
    return (names or {}).get(method) or NAMES.get(method, method)


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


def legend_under(ax, handles=None, columns: int = 2) -> None:
    """The panel's legend under its x-axis label, outside the curves: for a legend that also names
    the curves of the panels above it (they share it)."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=columns, frameon=False)


def legend_handle(method: str, colour, label: str):
    """One legend entry for a method drawn both as a curve and as a point: its line and its marker."""
    return Line2D([], [], color=colour, label=label, **line_style(method), **marker_style(method))


def focus(ax, rows: pd.DataFrame, x: str = "epoch", y: str = "value", top: float | None = None) -> None:
    """A y-range that shows the gaps between the mean curves: from the lowest mean − sd to the
    highest mean + sd, with a margin, never above `top` (e.g. 100 %); the first evaluation is left
    below the range when it lies so far below the rest that it would squeeze them into half of it."""
    stats = rows.groupby(["method", x])[y].agg(["mean", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0)
    later = stats[stats[x] > stats[x].min()]
    later = later if not later.empty else stats
    low, high = (stats["mean"] - stats["std"]).min(), (stats["mean"] + stats["std"]).max()
    low_later = (later["mean"] - later["std"]).min()
    if low_later - low > high - low_later:  # the first evaluation would squeeze the rest into half
        low = low_later
    margin = 0.08 * max(high - low, 1e-9)
    high = high + margin if top is None else min(high + margin, top)
    ax.set_ylim(low - margin, high)


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


NOTE_LINE_IN = 0.16  # the height of a line of the note (8-point type), inches
NOTE_CHAR_IN = 0.062  # the width of a character of it, about, inches
LEGEND_ROW_IN = 0.21  # the height of a row of a figure legend, inches


def note_lines(fig, note: str, left_out: str = "") -> int:
    """How many lines the note of `finish` takes, wrapped to the figure's width."""
    width = int(0.9 * fig.get_figwidth() / NOTE_CHAR_IN)  # characters in a wrapped line
    return sum(-(-len(line) // width) for line in (note, left_out) if line)


def figure_legend(fig, handles, labels, columns: int, note: str, left_out: str = "") -> None:
    """One legend for all panels, under them and above the note that `finish` writes (give both the
    same `note` and `left_out`, and `finish` the legend's rows)."""
    fig.legend(handles, labels, loc="lower center", frameon=False, ncol=columns,
               bbox_to_anchor=(0.5, (0.03 + NOTE_LINE_IN * note_lines(fig, note, left_out))
                               / fig.get_figheight()))


def finish(fig, note: str, legend_rows: int = 0, left_out: str = "") -> None:
    """Lay the figure out with `note` in small grey type along its bottom edge, and under it
    `left_out` (the runs the figure leaves out and why; `figures.left_out.note`) when there are any;
    above them, room for a figure legend of `legend_rows` rows (`figure_legend`)."""
    fig.text(0.5, 0.01, "\n".join(line for line in (note, left_out) if line), ha="center", va="bottom",
             fontsize=8, color="0.3", wrap=True)
    lines = note_lines(fig, note, left_out)
    inches = 0.05 + NOTE_LINE_IN * lines + (LEGEND_ROW_IN * legend_rows + 0.05 if legend_rows else 0)
    fig.tight_layout(rect=(0, inches / fig.get_figheight(), 1, 1))

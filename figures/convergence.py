"""Convergence-check figure: measured (1/T) sum |grad f(theta_t)|^2 against the bound of Theorem B.4,
from results/<profile>/convergence/convergence.csv (``python -m experiments.convergence``).

    python -m figures.convergence [--profile quick|cpu|paper] [--results-dir results]

Left: against k at the largest T (vanilla SGD beside k = 1). Right: against T, one colour per k.
Measured values are means over seeds (bars: sd); the bound is drawn dashed, and dotted with M
replaced by the largest minibatch gradient actually sampled (not a bound: the slack due to M).
Writes results/<profile>/figures/convergence.{png,pdf}.
"""


import pandas as pd

from figures import results_root, save, style
from figures.style import plt


def plot(rows: pd.DataFrame):
    multirate = rows[rows.method == "multirate"].sort_values(["k", "T"])
    sgd = rows[rows.method == "sgd"].sort_values("T")
    first = rows.iloc[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))

    at_T = multirate[multirate["T"] == multirate["T"].max()]
    left.errorbar(at_T.k, at_T.measured, yerr=at_T.measured_sd, marker="x", markersize=9, markeredgewidth=2,
                  capsize=3, color=style.COLOURS["multirate"], linewidth=2.4, label="Multirate, measured")
    left.plot(at_T.k, at_T.bound, "k--", marker="s", label="bound (Theorem B.4)")
    left.plot(at_T.k, at_T.bound_M_observed, "k:", label="bound with sampled max |g|² as M")
    sgd_T = sgd[sgd["T"] == at_T["T"].max()]
    left.errorbar([0.93] * len(sgd_T), sgd_T.measured, yerr=sgd_T.measured_sd, fmt="x", color="C3",
                  capsize=3, label="vanilla SGD, measured")
    left.set(xscale="log", yscale="log", xlabel="k", ylabel="(1/T) Σ |∇f(θ_t)|²",
             title=f"T = {int(at_T['T'].max())}")
    left.set_xticks(sorted(at_T.k.unique()), labels=[str(k) for k in sorted(at_T.k.unique())])
    left.minorticks_off()  # else the log axes label their minor ticks too ("2 x 10^0")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    ks = sorted(multirate.k.unique())
    colours = dict(zip(ks, plt.get_cmap("viridis")([i / max(len(ks) - 1, 1) for i in range(len(ks))])))
    for k, part in multirate.groupby("k"):
        right.errorbar(part["T"], part.measured, yerr=part.measured_sd, marker="o", ms=3, capsize=2,
                       color=colours[k], label=f"k = {k}")
        right.plot(part["T"], part.bound, "--", color=colours[k])
    right.plot(sgd["T"], sgd.measured, "x", color="C3", label="vanilla SGD")
    right.set(xscale="log", yscale="log", xlabel="T (steps)", ylabel="(1/T) Σ |∇f(θ_t)|²",
              title="measured (solid) and bound (dashed)")
    steps = sorted(rows["T"].unique())
    right.set_xticks(steps, labels=[str(int(t)) for t in steps])
    right.minorticks_off()
    right.legend(fontsize=8)
    fig.suptitle(f"Logistic regression on generated data: L = {first.L:.3g}, M = {first.M:.3g}, "
                 f"h = {first.h:g}, ℓ = {int(first.groups)}")
    style.finish(fig, f"measured: {style.seeds_note([first.seeds])} (bars) · bounds: Theorem B.4")
    return fig


def main(argv=None):
    root = results_root(__doc__.splitlines()[0], argv)
    path = root / "convergence" / "convergence.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: run python -m experiments.convergence first")
    return save(plot(pd.read_csv(path)), None, root, "convergence")


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

"""The paper's claims, each as the quantity it is about, measured per seed from the reference rows.

Our tasks differ from the paper's (generated data on a CPU), so a claim is compared through what it
says -- a gap to Train All, a time ratio, a rise of the validation loss after its minimum, a
trade-off between clean and patch accuracy -- never through absolute accuracies across tasks. Each
claim has a stated rule for "reproduced", "in direction only" and "not reproduced", written down
before the runs it judges (here, one list per experiment, which its entry in
``experiments/core/registry.py`` names: `claims` gathers them in registry order); `table` renders them for
the README and the report. A claim's paper value is derived from the paper's numbers in the registry
(`Experiment.paper`), never typed again.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from experiments import protocol
from experiments.core import registry
from experiments.reporting.reference import CURVE

OPS = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}


@dataclass(frozen=True)
class Rule:
    """Reproduced when `value op reproduced`; in direction only when `value op direction`."""

    op: str
    reproduced: float
    direction: float

    def __call__(self, value: float) -> str:
        check = OPS[self.op]
        if check(float(value), self.reproduced):
            return "reproduced"
        return "in direction only" if check(float(value), self.direction) else "not reproduced"

    def __str__(self) -> str:
        return f"{self.op} {self.reproduced:g}: reproduced; {self.op} {self.direction:g}: direction"


@dataclass(frozen=True)
class Claim:
    name: str  # what the paper says
    quantity: str  # what is measured, with its sign convention
    paper: float  # the paper's value of the quantity, from `registry.paper()` (~ read off its plots)
    measure: Callable  # (runs, seed) -> the quantity for one seed, or None when not run
    rule: Rule  # judged on the mean over seeds
    # (runs) -> None when the runs have the regime the claim presupposes, else why not (one phrase);
    # a claim whose premise fails is "not testable", whatever its quantity says
    premise: Callable | None = None
    # False for a claim about wall-clock time: a step size does not change the work, and the held-out
    # trials ran side by side under varying load, so their time ratios measure the machine
    step_size_dependent: bool = True


def _reads(experiment: str, *methods: str) -> Callable:
    """Mark a claim's measure with the runs it reads (`methods` of `experiment`), so that a table can
    say which of them it left out (`omitted`)."""
    def mark(measure: Callable) -> Callable:
        measure.reads = (experiment, methods)
        return measure
    return mark


def _value(runs, experiment: str, method: str, metric: str, seed: int) -> float | None:
    for r in runs.by_experiment.get(experiment, {}).values():
        if r["method"] == method and r["seed"] == seed and metric in r:
            return r[metric]
    return None


def _gap(multi: str, full: str):
    """Train All's final accuracy minus multirate's (points; > 0: multirate below)."""
    @_reads("transfer", full, multi)
    def measure(runs, seed):
        a, b = (_value(runs, "transfer", m, "test_accuracy", seed) for m in (full, multi))
        return None if a is None or b is None else a - b
    return measure


def _speedup(multi: str, full: str):
    """Train All's training time over multirate's (same machine, same run)."""
    @_reads("transfer", full, multi)
    def measure(runs, seed):
        a, b = (_value(runs, "transfer", m, "time_s", seed) for m in (full, multi))
        return None if a is None or b is None else a / b
    return measure


def _patch_margin(metric: str, rival: str):
    """Multirate's accuracy minus the rival constant step size's (points): on clean images against
    the large step (the paper: better), on patch-only images against the small step (about equal)."""
    @_reads("patch", "multirate", rival)
    def measure(runs, seed):
        a, b = (_value(runs, "patch", m, metric, seed) for m in ("multirate", rival))
        return None if a is None or b is None else a - b
    return measure


def patch_premise_failures(small: float, small_only: float, large: float, large_only: float) -> list[str]:
    """The paper's premise for the patch claim (patch.toml, written before the runs it judges), from
    the two constant step sizes' clean and patch-only accuracies: clean within 10 points, small h's
    patch-only >= 80 %, large h's <= 40 %. Returns what fails (empty: the premise holds)."""
    return [text for ok, text in (
        (abs(large - small) <= 10, f"clean accuracies {large - small:.1f} points apart (<= 10)"),
        (small_only >= 80, f"small h patch-only {small_only:.1f} % (>= 80)"),
        (large_only <= 40, f"large h patch-only {large_only:.1f} % (<= 40)")) if not ok]


def _patch_premise(runs) -> str | None:
    """Why the patch runs lack the premise (`patch_premise_failures`, on means over seeds), or None."""
    def mean_of(method, metric):
        values = [r[metric] for r in runs.by_experiment.get("patch", {}).values()
                  if r["method"] == method and metric in r]
        return statistics.mean(values) if values else None
    small, large = (mean_of(m, "clean_accuracy") for m in ("small_lr", "large_lr"))
    small_only, large_only = (mean_of(m, "patch_only_accuracy") for m in ("small_lr", "large_lr"))
    if None in (small, large, small_only, large_only):
        return None  # not run: the table says so
    return "; ".join(patch_premise_failures(small, small_only, large, large_only)) or None


def _rise(method: str):
    """Final validation loss minus its minimum over training (nats)."""
    @_reads("regularization_lm", method)
    def measure(runs, seed):
        final, low = (_value(runs, "regularization_lm", method, m, seed)
                      for m in ("val_loss", "val_loss@min"))
        return None if final is None or low is None else final - low
    return measure


@_reads("regularization_lm", "multirate", "sgd")
def _rise_ratio(runs, seed):
    """Multirate's rise after its minimum over SGD's (the paper: 0.04 / 0.12 = 0.33)."""
    a, b = _rise("multirate")(runs, seed), _rise("sgd")(runs, seed)
    return None if a is None or b is None or b <= 0 else a / b


def _val_curve(runs, method: str, seed: int) -> dict[int, float]:
    """{epoch: validation loss} of the LM run of `method` and `seed` ({} where not recorded)."""
    for r in runs.by_experiment.get("regularization_lm", {}).values():
        if r["method"] == method and r["seed"] == seed:
            return {int(m[len(CURVE):]): v for m, v in r.items() if m.startswith(CURVE)}
    return {}


def _matched_span(runs, seed) -> tuple[dict, dict, int, int, int] | None:
    """(multirate's curve, SGD's, their minima's epochs, S): S is the number of epochs SGD has after
    its minimum, to the end of its run."""
    curves = [_val_curve(runs, m, seed) for m in ("multirate", "sgd")]
    if not all(curves):
        return None
    lows = [min(c, key=lambda e: (c[e], e)) for c in curves]  # as val_loss@min_epoch
    return (*curves, *lows, max(curves[1]) - lows[1])


@_reads("regularization_lm", "multirate", "sgd")
def _matched_rise_ratio(runs, seed):
    """Multirate's rise over SGD's, each over the same S epochs after its own minimum, S being what
    SGD has after its minimum: a method whose minimum comes later is not credited with the shorter
    climb it had time for, as the final-minus-minimum ratio credits it. None where multirate's
    minimum leaves its run fewer than S epochs (`_late_minimum` says why)."""
    found = _matched_span(runs, seed)
    if found is None:
        return None
    multirate, sgd, multirate_low, sgd_low, span = found
    if span == 0 or multirate_low + span not in multirate:
        return None
    rise, sgd_rise = (c[low + span] - c[low] for c, low in ((multirate, multirate_low), (sgd, sgd_low)))
    return None if sgd_rise <= 0 else rise / sgd_rise


def _late_minimum(runs) -> str | None:
    """Why no seed measures `_matched_rise_ratio` though both methods ran, or None."""
    seeds = sorted({r["seed"] for r in runs.by_experiment.get("regularization_lm", {}).values()})
    found = {s: f for s in seeds if (f := _matched_span(runs, s)) is not None}
    if not found or any(_matched_rise_ratio(runs, s) is not None for s in found):
        return None
    lows = ", ".join(f"{f[2]} vs {f[3]}" for f in found.values())
    ends = {max(f[0]) for f in found.values()}
    return (f"multirate's minimum comes too late for SGD's span after it: epochs {lows} (multirate vs "
            f"SGD) of {'/'.join(map(str, sorted(ends)))}")


@_reads("regularization_lm", "multirate", "sgd")
def _min_gap(runs, seed):
    """Multirate's minimum validation loss minus SGD's (nats)."""
    a, b = (_value(runs, "regularization_lm", m, "val_loss@min", seed) for m in ("multirate", "sgd"))
    return None if a is None or b is None else a - b


def margin(experiment: str, metric: str, method: str, rival: str):
    """`method`'s final `metric` minus `rival`'s, in the results folder `experiment` (a claim's
    measure for any registered experiment)."""
    @_reads(experiment, method, rival)
    def measure(runs, seed):
        a, b = (_value(runs, experiment, m, metric, seed) for m in (method, rival))
        return None if a is None or b is None else a - b
    return measure


def claims() -> list[Claim]:
    """Every claim, each experiment's (its registry entry's ``claims``) in registry order."""
    return registry.claims()


def _paper(setting: str, method: str, metric: str) -> float:
    """The paper's `metric` of `method` in `setting` (`registry.paper`)."""
    return registry.paper()[setting][method][metric]


def _time_ratio(setting: str, multi: str, full: str) -> float:
    return _paper(setting, full, "time") / _paper(setting, multi, "time")


def _paper_minus(setting: str, metric: str, a: str, b: str) -> float:
    """The paper's `metric` of method `a` minus method `b`'s, in `setting`."""
    return _paper(setting, a, metric) - _paper(setting, b, metric)


def _paper_rise(method: str) -> float:
    """The paper's final validation loss of `method` minus its minimum (nats)."""
    final, low = (_paper("regularization_lm", method, m) for m in ("final_val_loss", "min_val_loss"))
    return final - low


GAP, RATIO = Rule("<=", 1.0, 3.0), Rule(">=", 1.8, 1.2)
TRANSFER = [
    Claim("ResNet transfer: multirate matches Train All", "Train All − Multirate, final accuracy (points)",
          _paper_minus("transfer_resnet50", "accuracy", "train_all", "multirate"),
          _gap("multirate", "train_all"), GAP),
    Claim("ResNet transfer: in about half the time", "Train All time / Multirate time",
          _time_ratio("transfer_resnet50", "multirate", "train_all"),
          _speedup("multirate", "train_all"), RATIO, step_size_dependent=False),
    Claim("DistilBERT transfer: multirate matches Train All",
          "Train All − Multirate, final accuracy (points)",
          _paper_minus("transfer_distilbert", "accuracy", "distilbert_train_all", "distilbert_multirate"),
          _gap("distilbert_multirate", "distilbert_train_all"), GAP),
    Claim("DistilBERT transfer: in about half the time", "Train All time / Multirate time",
          _time_ratio("transfer_distilbert", "distilbert_multirate", "distilbert_train_all"),
          _speedup("distilbert_multirate", "distilbert_train_all"), RATIO, step_size_dependent=False),
]
PATCH = [
    Claim("Patch: multirate generalises like the large step", "Multirate − large h, clean accuracy (points)",
          _paper_minus("patch", "clean_accuracy", "multirate", "large_lr"),
          _patch_margin("clean_accuracy", "large_lr"), Rule(">=", -1.0, -10.0), _patch_premise),
    Claim("Patch: and memorises the patch like the small step",
          "Multirate − small h, patch-only accuracy (points)",
          _paper_minus("patch", "patch_only_accuracy", "multirate", "small_lr"),
          _patch_margin("patch_only_accuracy", "small_lr"), Rule(">=", -5.0, -30.0), _patch_premise),
]
REGULARIZATION = [
    Claim("LM: random subgroups reach SGD's minimum", "Multirate − SGD, min validation loss (nats)",
          _paper_minus("regularization_lm", "min_val_loss", "multirate", "sgd"),
          _min_gap, Rule("<=", 0.02, 0.1)),
    Claim("LM: SGD overfits after its minimum", "SGD: final − min validation loss (nats)",
          _paper_rise("sgd"), _rise("sgd"), Rule(">", 0.05, 0.0)),
    # The first rule (a fixed 0.06 nats) was written with this table; our tasks overfit far more than
    # PTB did (SGD's rise 0.7-1.1 nats against 0.12), so the second, relative to SGD's rise, was
    # written (2026-12-04) after the earlier runs' ratios were known, before the protocol's runs.
    Claim("LM: random subgroups overfit less", "Multirate: final − min validation loss (nats)",
          _paper_rise("multirate"), _rise("multirate"), Rule("<", 0.06, 0.2)),
    Claim("LM: random subgroups overfit less, relative to SGD", "Multirate's rise / SGD's rise",
          _paper_rise("multirate") / _paper_rise("sgd"), _rise_ratio, Rule("<=", 0.5, 1.0)),
    # Written (2026-12-04) with the ratio's thresholds. The paper's value is the ratio above: both of
    # its minima lie near epochs 90-100 of 150, so its spans already match. A first version (the
    # shorter of the two spans after the minima) was computed once on the quick reference (0.78 ±
    # 0.41 from 2 seeds; the third was dropped, its minimum being its last epoch) and replaced before
    # any other: its 4-epoch rises were at the noise of the curves, and it dropped seeds silently.
    Claim("LM: random subgroups overfit less, over a matched span",
          "Multirate's rise / SGD's rise, over SGD's epochs after its minimum",
          _paper_rise("multirate") / _paper_rise("sgd"), _matched_rise_ratio, Rule("<=", 0.5, 1.0),
          _late_minimum),
    Claim("Perceptron: random subgroups test at least as well as SGD",
          "Multirate − SGD, final accuracy (points)",
          _paper_minus("regularization_mlp", "test_accuracy", "multirate", "sgd"),
          margin("regularization_mlp", "test_accuracy", "multirate", "sgd"), Rule(">=", 0.0, -0.5)),
]


def per_seed(claim: Claim, runs) -> list[float]:
    seeds = sorted({r["seed"] for exp in runs.by_experiment.values() for r in exp.values()})
    return [v for v in (claim.measure(runs, s) for s in seeds) if v is not None]


def summary(values: list[float], seeds: str = "") -> str:
    """"mean ± sd (N seeds)"; `seeds` in place of "N seeds" when some were left out (`omitted`)."""
    if not values:
        return "not run"
    seeds = seeds or f"{len(values)} seed{'s' if len(values) != 1 else ''}"
    if len(values) == 1:
        return f"{values[0]:.2f} ({seeds})"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({seeds})"


def omitted(claim: Claim, runs, left: dict | None = None) -> str:
    """"2 of 3 seeds; multirate seed 1 diverged at epoch 4" when the claim's values come from fewer
    seeds than its experiment ran, else "". The seeds it ran are those of every run in the experiment,
    complete or left out (`left`: {experiment: `experiments.reporting.left_out.runs` of its folder}, which
        says
    why). The reference keeps complete runs only: without `left`, a run is said to have none."""
    experiment, methods = claim.measure.reads
    runs_of = runs.by_experiment.get(experiment, {}).values()
    left = (left or {}).get(experiment)
    ran = {r["seed"] for r in runs_of} | (set(left.seed) if left is not None else set())
    used = {seed for seed in ran if claim.measure(runs, seed) is not None}
    if not used or used == ran:
        return ""
    why = []
    for seed in sorted(ran - used):
        complete = {r["method"] for r in runs_of if r["seed"] == seed}
        for method in (m for m in methods if m not in complete):
            reason = [] if left is None else list(left.reason[(left.method == method) & (left.seed == seed)])
            why.append(f"{method} seed {seed} {reason[0] if reason else 'has no complete run'}")
        if all(m in complete for m in methods):  # every run there, the quantity undefined for them
            why.append(f"seed {seed} not measurable")
    return f"{len(used)} of {len(ran)} seeds; {', '.join(why)}"


def verdict(claim: Claim, runs, left: dict | None = None) -> str | None:
    """'<mean ± sd>: <verdict>' of `claim` on `runs`, or None where they hold none of its runs; the
    seeds it left out and why (`omitted`, with `left`) where some were."""
    values = per_seed(claim, runs)
    text = summary(values, omitted(claim, runs, left))
    why = claim.premise(runs) if claim.premise else None
    if why:  # the regime lacks what the claim presupposes: no verdict, whatever the quantity says
        return f"{text if values else 'not measured'}: not testable here ({why})"
    if not values:
        return None
    return f"{text}: {claim.rule(statistics.mean(values))}"


# ----------------------------------------------------------------------------- views of the reference

BEFORE = "before/"  # reference rows kept from before a change of protocol or construction


def view(runs, by_experiment: dict) -> object:
    """A copy of `runs` (a readme_tables.Runs) that holds `by_experiment` instead."""
    out = copy.copy(runs)
    out.by_experiment = by_experiment
    return out


def before(runs):
    """The runs recorded before the comparison protocol and the patch construction fix, under the
    experiment names the claims read (``before/transfer`` -> ``transfer``)."""
    return view(runs, {name[len(BEFORE):]: exp for name, exp in runs.by_experiment.items()
                       if name.startswith(BEFORE)})


POINTS = ("chosen", "one step down", "one step up", "2× epochs")


def sensitivity_views(runs) -> dict[str, object]:
    """The held-out trials (experiments/protocol.py) as runs the claims can read, per point: every
    method at its chosen step size, all one grid step down, all one step up, and at 2× the epochs."""
    views = {point: {} for point in POINTS}
    for p in protocol.PROTOCOLS.values():
        for method, choice in protocol.select(p, runs.rows).items():
            if choice.h is None:
                continue
            i = p.grid.index(choice.h)
            where = {"chosen": protocol.point_name(choice.h), "2× epochs": protocol.EPOCHS_POINT,
                     "one step down": protocol.point_name(p.grid[i - 1]) if i > 0 else None,
                     "one step up": protocol.point_name(p.grid[i + 1]) if i + 1 < len(p.grid) else None}
            for point, folder in where.items():
                trials = runs.by_experiment.get(f"tune/{folder}/{p.folder}", {}) if folder else {}
                views[point].setdefault(p.folder, {}).update(
                    {run: r for run, r in trials.items() if r["method"] == method})
    return {point: view(runs, by_experiment) for point, by_experiment in views.items()}


def sensitivity(claim: Claim, views: dict) -> tuple[dict[str, str], str]:
    """Per point, the claim's held-out value and verdict (seed 0); and "robust", "fragile" (the
    verdict differs between points) or "—" (no trials)."""
    cells, verdicts = {}, set()
    if not claim.step_size_dependent:
        return dict.fromkeys(views, "—"), "—"
    for point, runs in views.items():
        value = claim.measure(runs, 0)
        if value is None:
            cells[point] = "—"
            continue
        verdicts.add(claim.rule(value))
        cells[point] = f"{value:.2f}: {claim.rule(value)}"
    if not verdicts:
        return cells, "—"
    return cells, "robust" if len(verdicts) == 1 else "fragile"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(profiles: dict[str, object], missing: str = "not run", left_out: dict[str, dict] | None = None
          ) -> str:
    """A Markdown table: each claim's paper value, then per profile the mean ± sd and the verdict
    (`missing` where a profile has no runs for the claim), the same before the comparison protocol and
    the patch construction fix where the profile kept those runs, and whether the held-out verdict is
    robust to the step size and the epochs (`sensitivity_table` has the values). A claim whose values
    come from fewer seeds than its experiment ran says which were left out (`omitted`), and why where
    `left_out` ({profile: {experiment: its left-out runs}}) knows."""
    header = ["claim", "quantity", "paper"]
    columns = []  # (profile's runs, kind, its left-out runs)
    for name, runs in profiles.items():
        columns.append((runs, "ours", (left_out or {}).get(name)))
        header.append(f"{name}: ours, verdict")
        if any(e.startswith(BEFORE) for e in runs.by_experiment):
            columns.append((before(runs), "before", None))
            header.append(f"{name}: before the protocol / construction fix")
        if any(e.startswith("tune/") for e in runs.by_experiment):
            columns.append((sensitivity_views(runs), "sensitivity", None))
            header.append(f"{name}: sensitivity (held out)")
    header.append("rule (mean over seeds)")
    lines = [_row(header), _row(["---"] * len(header))]
    for claim in claims():
        cells = [claim.name, claim.quantity, f"{claim.paper:.2f}"]
        for source, kind, left in columns:
            if kind == "sensitivity":
                cells.append(sensitivity(claim, source)[1])
            else:
                cells.append(verdict(claim, source, left) or (missing if kind == "ours" else "—"))
        cells.append(str(claim.rule))
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def sensitivity_table(runs) -> str:
    """Each claim's verdict on the held-out data (seed 0) at the chosen step sizes, one grid step
    below and above them, and at 2× the epochs; "fragile" where the verdict changes."""
    views = sensitivity_views(runs)
    header = ["claim", *POINTS, "sensitivity"]
    lines = [_row(header), _row(["---"] * len(header))]
    for claim in claims():
        cells, word = sensitivity(claim, views)
        if word != "—":
            lines.append(_row([claim.name, *(cells[p] for p in POINTS), word]))
    return "\n".join(lines) + "\n" if len(lines) > 2 else "not run\n"

"""The paper's claims, each as the quantity it is about, measured per seed from the reference rows.

Our tasks differ from the paper's (generated data on a CPU), so a claim is compared through what it
says -- a gap to Train All, a time ratio, a rise of the validation loss after its minimum, a
trade-off between clean and patch accuracy -- never through absolute accuracies across tasks. Each
claim has a stated rule for "reproduced", "in direction only" and "not reproduced", written down
before the runs it judges (here, in `CLAIMS`); `table` renders them for the README and the report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

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
    paper: float  # the paper's value of the quantity (/work/shared/paper-notes.md; ~ read off plots)
    measure: Callable  # (runs, seed) -> the quantity for one seed, or None when not run
    rule: Rule  # judged on the mean over seeds


def _value(runs, experiment: str, method: str, metric: str, seed: int) -> float | None:
    for r in runs.by_experiment.get(experiment, {}).values():
        if r["method"] == method and r["seed"] == seed and metric in r:
            return r[metric]
    return None


def _gap(multi: str, full: str):
    """Train All's final accuracy minus multirate's (points; > 0: multirate below)."""
    def measure(runs, seed):
        a, b = (_value(runs, "transfer", m, "test_accuracy", seed) for m in (full, multi))
        return None if a is None or b is None else a - b
    return measure


def _speedup(multi: str, full: str):
    """Train All's training time over multirate's (same machine, same run)."""
    def measure(runs, seed):
        a, b = (_value(runs, "transfer", m, "time_s", seed) for m in (full, multi))
        return None if a is None or b is None else a / b
    return measure


def _patch_margin(metric: str, rival: str):
    """Multirate's accuracy minus the rival constant step size's (points): on clean images against
    the large step (the paper: better), on patch-only images against the small step (about equal)."""
    def measure(runs, seed):
        a, b = (_value(runs, "patch", m, metric, seed) for m in ("multirate", rival))
        return None if a is None or b is None else a - b
    return measure


def _rise(method: str):
    """Final validation loss minus its minimum over training (nats)."""
    def measure(runs, seed):
        final, low = (_value(runs, "regularization_lm", method, m, seed)
                      for m in ("val_loss", "val_loss@min"))
        return None if final is None or low is None else final - low
    return measure


def _min_gap(runs, seed):
    """Multirate's minimum validation loss minus SGD's (nats)."""
    a, b = (_value(runs, "regularization_lm", m, "val_loss@min", seed) for m in ("multirate", "sgd"))
    return None if a is None or b is None else a - b


def _mlp_margin(runs, seed):
    a, b = (_value(runs, "regularization_mlp", m, "test_accuracy", seed) for m in ("multirate", "sgd"))
    return None if a is None or b is None else a - b


GAP, RATIO = Rule("<=", 1.0, 3.0), Rule(">=", 1.8, 1.2)
CLAIMS = [
    Claim("ResNet transfer: multirate matches Train All", "Train All − Multirate, final accuracy (points)",
          83.2 - 83.4, _gap("multirate", "train_all"), GAP),
    Claim("ResNet transfer: in about half the time", "Train All time / Multirate time",
          9870 / 4950, _speedup("multirate", "train_all"), RATIO),
    Claim("DistilBERT transfer: multirate matches Train All",
          "Train All − Multirate, final accuracy (points)",
          89.7 - 89.4, _gap("distilbert_multirate", "distilbert_train_all"), GAP),
    Claim("DistilBERT transfer: in about half the time", "Train All time / Multirate time",
          380 / 198, _speedup("distilbert_multirate", "distilbert_train_all"), RATIO),
    Claim("Patch: multirate generalises like the large step", "Multirate − large h, clean accuracy (points)",
          76.5 - 72.0, _patch_margin("clean_accuracy", "large_lr"), Rule(">=", -1.0, -10.0)),
    Claim("Patch: and memorises the patch like the small step",
          "Multirate − small h, patch-only accuracy (points)",
          96.5 - 98.5, _patch_margin("patch_only_accuracy", "small_lr"), Rule(">=", -5.0, -30.0)),
    Claim("LM: random subgroups reach SGD's minimum", "Multirate − SGD, min validation loss (nats)",
          4.85 - 4.85, _min_gap, Rule("<=", 0.02, 0.1)),
    Claim("LM: SGD overfits after its minimum", "SGD: final − min validation loss (nats)",
          4.97 - 4.85, _rise("sgd"), Rule(">", 0.05, 0.0)),
    Claim("LM: random subgroups overfit less", "Multirate: final − min validation loss (nats)",
          4.89 - 4.85, _rise("multirate"), Rule("<", 0.06, 0.2)),
    Claim("Perceptron: random subgroups test at least as well as SGD",
          "Multirate − SGD, final accuracy (points)", 98.3 - 98.1, _mlp_margin, Rule(">=", 0.0, -0.5)),
]


def per_seed(claim: Claim, runs) -> list[float]:
    seeds = sorted({r["seed"] for exp in runs.by_experiment.values() for r in exp.values()})
    return [v for v in (claim.measure(runs, s) for s in seeds) if v is not None]


def summary(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def table(profiles: dict[str, object], missing: str = "not run") -> str:
    """A Markdown table: each claim's paper value, then per profile the mean ± sd and the verdict
    (`missing` where a profile has no runs for the claim)."""
    header = ["claim", "quantity", "paper", *(f"{p}: ours, verdict" for p in profiles),
              "rule (mean over seeds)"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for claim in CLAIMS:
        cells = [claim.name, claim.quantity, f"{claim.paper:.2f}"]
        for runs in profiles.values():
            values = per_seed(claim, runs)
            cells.append(f"{summary(values)}: {claim.rule(statistics.mean(values))}" if values else missing)
        cells.append(str(claim.rule))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

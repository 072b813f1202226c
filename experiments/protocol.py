"""The comparison protocol: every compared method gets the same tuning budget, its step size is
chosen on data held out from the training set, and the test set is read once, at the chosen setting.

    python -m experiments.protocol tune FIGURE [--profile quick] [--results-dir results] [--skip-running]
    python -m experiments.protocol select FIGURE [--profile quick] [--results-dir DIR] [--check]

FIGURE is one of `PROTOCOLS` (transfer_resnet, transfer_distilbert, regularization_lm,
regularization_mlp) or ``all``. The protocol, written down before any of its runs:

1. **The same trials for every method.** Each method of the figure trains once per point of the
   same log-spaced grid of step sizes h = base × (1/4, 1/2, 1, 2, 4) (`FACTORS`), seed 0, on the
   training set less a fixed held-out fifth (``holdout = 0.2``: `experiments.datasets.data.holdout_split`, the
   same split for every run), and is scored on that fifth. A trial never reads the test set.
   Where a figure's convention gives a method k times the step size per unit h (random subgroups:
   its fast step h/k is SGD's step), its lr is that multiple of h (`Protocol.lr_scale`).
2. **The choice.** Each method's h is the grid point with the best held-out score (`Protocol.metric`;
   ties go to the smaller h), read from the trials' summary rows: from ``results/`` after `tune`, or
   from the committed reference, so anyone can recheck it (`select`).
3. **The figure.** The chosen step sizes stand in the figure's TOML as ``[<profile>.methods.<method>]
   lr = ...`` (`select --check` fails if they do not); the figure's seeds then train on the whole
   training set and their test metrics are the numbers the figure and the claims report.
4. **Sensitivity.** Each method also trains at 2× the epochs at its chosen h (seed 0, held out).
   `sensitivity` gives each claim's verdict on the held-out data at the chosen setting, one grid step
   below and above it (every compared method moved together) and at 2× the epochs; a claim whose
   verdict differs between them is *fragile*.

The trials live in ``<results>/tune/<point>/<profile>/<folder>/`` (``<point>`` is ``h<h>`` or
``epochs_x2``), beside the ablations, never among a figure's runs; the reference records them as
experiment ``tune/<point>/<folder>``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from experiments.core import registry
from experiments.core.config import PROFILES, experiment_config, load_config
from experiments.core.errors import UserError
from experiments.datasets import pretraining
from experiments.reporting import reference

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the grid, relative to a figure's base step size
HOLDOUT = 0.2
TUNE_SEEDS = (0,)
EPOCHS_POINT = "epochs_x2"


@dataclass(frozen=True)
class Protocol:
    """How one figure's methods are tuned: the grid around `base_h` and the held-out score."""

    name: str
    entry: str  # the experiment entry point (experiments.core.registry): "transfer", "regularization_lm", ...
    methods: tuple[str, ...]
    base_h: float  # the step size every method had before the protocol: the grid's centre
    metric: str  # a reference summary metric of the held-out evaluation
    higher_is_better: bool
    lr_scale: dict[str, float] = field(default_factory=dict)  # method -> lr per unit h (default 1)

    @property
    def grid(self) -> tuple[float, ...]:
        return tuple(self.base_h * f for f in FACTORS)

    @property
    def folder(self) -> str:
        return registry.part(self.entry).results_folder

    def lr(self, method: str, h: float) -> float:
        return self.lr_scale.get(method, 1.0) * h


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("transfer_resnet", "transfer",
             ("train_all", "multirate", "layer2+3+4+fc", "layer3+4+fc", "layer4+fc", "fc"),
             0.1, "test_accuracy", True),
    Protocol("transfer_distilbert", "transfer_text",
             ("distilbert_train_all", "distilbert_multirate", "distilbert_multirate_l5",
              "distilbert_train_345", "distilbert_train_45", "distilbert_train_5", "distilbert_head_only"),
             0.01, "test_accuracy", True),
    # The language model is judged by its validation curve: the choice is the lowest held-out loss
    # reached at any epoch. Multirate's lr is h = k x (SGD's step), k = 2 (regularization_lm.toml).
    Protocol("regularization_lm", "regularization_lm", ("sgd", "dropout", "multirate"),
             0.05, "val_loss@min", False, {"multirate": 2.0}),
    Protocol("regularization_mlp", "regularization_mlp", ("sgd", "dropout", "multirate"),
             0.01, "test_accuracy", True, {"multirate": 2.0}),
)}


def point_name(h: float) -> str:
    return f"h{h:g}"


def trial_dir(results_dir: str | Path, point: str) -> Path:
    return Path(results_dir) / "tune" / point


def trial_overrides(protocol: Protocol, method: str, h: float, results_dir: str | Path, point: str,
                    epochs: int | None = None) -> list[str]:
    """The key=value overrides of one trial: `method` at step size h, held out, in its folder."""
    return [f"results_dir={trial_dir(results_dir, point)}", f"holdout={HOLDOUT}",
            f"lr={protocol.lr(method, h)!r}", *([f"epochs={epochs}"] if epochs else [])]


# ----------------------------------------------------------------------------- the choice

@dataclass(frozen=True)
class Choice:
    h: float | None  # None: no trial of this method finished
    scores: dict[float, float]  # grid h -> held-out score (seed mean), the trials that finished


def scores(protocol: Protocol, rows: list[dict], method: str, point: str) -> list[float]:
    """The held-out score of `method`'s trials at `point`, one per seed, from summary rows."""
    experiment = f"tune/{point}/{protocol.folder}"
    return [r["value"] for r in rows if r["experiment"] == experiment and r["method"] == method
            and r["metric"] == protocol.metric and r["seed"] in TUNE_SEEDS]


def select(protocol: Protocol, rows: list[dict]) -> dict[str, Choice]:
    """Each method's chosen h from the trials' summary rows (reference rows or `reference.collect`).
    Only rows of ``tune/h*/`` folders are read: nothing of a figure's runs, so no test metric."""
    out = {}
    for method in protocol.methods:
        found = {h: sum(v) / len(v) for h in protocol.grid
                 if (v := scores(protocol, rows, method, point_name(h)))}
        finite = {h: s for h, s in found.items() if math.isfinite(s)}
        best = None
        if finite:
            sign = 1 if protocol.higher_is_better else -1
            best = max(finite, key=lambda h: (sign * finite[h], -h))  # ties: the smaller h
        out[method] = Choice(best, found)
    return out


def check_tomls(protocol: Protocol, profile: str, choices: dict[str, Choice]) -> list[str]:
    """Where the figure's TOML does not run a method at its chosen step size (one line each)."""
    config_cls, toml = experiment_config(registry.entry_point(protocol.entry))
    problems = []
    for method, choice in choices.items():
        if choice.h is None:
            problems.append(f"{method}: no finished trial, nothing chosen")
            continue
        lr, want = load_config(config_cls, toml, profile, method).lr, protocol.lr(method, choice.h)
        if not math.isclose(lr, want, rel_tol=1e-9):
            problems.append(f"{toml} [{profile}.methods.{method}]: lr = {lr:g}, the protocol chose "
                            f"{want:g} (h = {choice.h:g}); set lr = {want!r}")
    return problems


def selection_table(protocol: Protocol, choices: dict[str, Choice]) -> str:
    """A Markdown table: every trial's held-out score per method, the choice in bold."""
    header = ["method", *(f"h = {h:g}" for h in protocol.grid), "chosen h"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for method, choice in choices.items():
        cells = [method]
        for h in protocol.grid:
            s = choice.scores.get(h)
            text = "—" if s is None else f"{s:.4g}"
            cells.append(f"**{text}**" if h == choice.h else text)
        cells.append("—" if choice.h is None else f"{choice.h:g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the trials

def tune(protocol: Protocol, profile: str, results_dir: str | Path = "results", skip_running: bool = False
         ) -> None:
    """Every grid trial of every method, then each method's 2x-epochs trial at its chosen h.
    Finished trials are skipped, so a rerun continues where it stopped."""
    entry = registry.entry_point(protocol.entry)
    config_cls, toml = experiment_config(entry)

    def trial(method: str, h: float, point: str, epochs: int | None = None) -> None:
        overrides = trial_overrides(protocol, method, h, results_dir, point, epochs)
        # Trials reuse the pretrained networks cached under results/ (keyed by what made them).
        run_dir = load_config(config_cls, toml, profile, method, overrides).run_dir
        pretraining.share_caches(run_dir, results_dir)
        seeds = ",".join(map(str, TUNE_SEEDS))
        entry.main(["--profile", profile, "--method", method, "--seeds", seeds, *overrides,
                    *(["--skip-running"] if skip_running else [])])

    for h in protocol.grid:
        for method in protocol.methods:
            trial(method, h, point_name(h))
    for method, choice in select(protocol, reference.collect(results_dir, profile)).items():
        if len(choice.scores) < len(protocol.grid):  # a trial another process still trains: its turn
            print(f"{protocol.name}: {method} has {len(choice.scores)} of {len(protocol.grid)} trials; "
                  "its 2x-epochs trial waits for the rest (rerun tune)", flush=True)
            continue
        if choice.h is None:  # every trial diverged: nothing to train longer
            continue
        trial(method, choice.h, EPOCHS_POINT, 2 * load_config(config_cls, toml, profile, method).epochs)


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("tune", "select"))
    parser.add_argument("figure", help=f"one of {', '.join(PROTOCOLS)}, or all")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--results-dir", default=None,
                        help="tune: where the trials go (default results); select: read the trials "
                             "from here instead of the committed reference")
    parser.add_argument("--skip-running", action="store_true",
                        help="tune: leave a trial another process is training to it")
    parser.add_argument("--check", action="store_true",
                        help="select: exit 1 unless every TOML runs its methods at the chosen step sizes")
    args = parser.parse_args(argv)
    if args.figure != "all" and args.figure not in PROTOCOLS:
        raise UserError(f"figure {args.figure!r}: one of {', '.join(PROTOCOLS)}, or all")
    protocols = list(PROTOCOLS.values()) if args.figure == "all" else [PROTOCOLS[args.figure]]
    if args.command == "tune":
        for protocol in protocols:
            tune(protocol, args.profile, args.results_dir or "results", args.skip_running)
        return 0
    rows = (reference.collect(args.results_dir, args.profile) if args.results_dir
            else reference.read(reference.path(args.profile)))
    failed = False
    for protocol in protocols:
        choices = select(protocol, rows)
        print(f"## {protocol.name} ({args.profile}): held-out {protocol.metric}, seed "
              f"{','.join(map(str, TUNE_SEEDS))}\n\n{selection_table(protocol, choices)}")
        if args.check:
            problems = check_tomls(protocol, args.profile, choices)
            for line in problems:
                print(line)
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

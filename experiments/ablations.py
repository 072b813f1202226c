"""Ablations of multirate training, run through the ordinary experiment entry points.

    python -m experiments.ablations [--profile quick|paper] [--only k,drift,...] [--seeds 0,1,2]

Every ablation is a list of variants: an experiment module, one of its methods, and key=value
overrides on top of that method. Each variant is an ordinary run of that experiment's `main`
(finished runs are skipped, results land as CSV + JSON), but with ``results_dir`` moved to
``<results>/ablations/<name>``, so its runs live in ``<results>/ablations/<name>/<profile>/<experiment>/``
and never mix with the runs the figures of the main experiments read.

The grids (`grids`, from each experiment's ``ablations`` in ``experiments/core/registry.py``):

- ``k``: k in {1, 2, 5, 10, 25} on the transfer setting (fast = fc, linear drift) with the SGD base
  (h = 0.1, the transfer config's) and the AdamW base (h = 0.003), each beside train-all with its
  base optimizer: final accuracy against training time;
- ``drift``: linear drift vs none at the same h and k, on transfer (SGD and AdamW bases, k = 5)
  and on patch (multirate, fast = block3+bn+fc, k = 25);
- ``fast``: which part of the transfer network is fast: fc, layer4+fc, layer3+layer4+fc (SGD base,
  k = 5, linear drift);
- ``zeroing``: random subgroups on the language model, the slow subset zeroed on k - 1 of the k
  steps of a cycle (the headline) or on all k (``zero_slow_every_step``);
- ``subgroups``: random subgroups on the regularisation perceptron: the slow fraction at k = 2, and
  the redraw period k (the slow part is redrawn every cycle) at fraction 0.2, with h = k x 0.01 so
  that the fast step h/k stays SGD's 0.01 (the regularisation configs' convention), beside SGD.
  The perceptron, not transfer or patch: random subgroups are the regularisation partition (a
  layer-wise net like the transfer ResNet has no use for it), and its runs are the cheapest.

Seeds: the quick profile runs seed 0 only (the 20-minute budget on 2 CPU cores); the cpu and paper
profiles run seeds 0, 1, 2. Epochs and every other setting are those of the experiment's profile.

A variant's experiment is an entry point of ``experiments.core.registry`` by name. The tables of the
results (`final_rows`, `summarise`) are here, where both ``figures.ablations`` and the report
read them: each variant's final-epoch value of the metrics its experiment is judged by (the
registry's ``Part.metrics``), mean and sd over seeds; so are the runs they leave out, and why
(`left_out_runs`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.core import registry
from experiments.core.config import OPTIMIZERS, PROFILES, experiment_config, load_config, parse_seeds
from experiments.core.optimizers import check_optimizer
from experiments.core.runlog import last_epoch, read_results, read_runs
from experiments.datasets import pretraining
from experiments.reporting import left_out

SEEDS = {"quick": [0], "cpu": [0, 1, 2], "paper": [0, 1, 2]}
ADAMW_LR = 0.003  # AdamW base on transfer: h of the best runs in experiments/sweeps (quick profile)
# SGD base on transfer: every variant at one step size, the transfer figure's before the comparison
# protocol gave each of its methods its own (docs/protocol.md); pinned so the variants keep it.
SGD_LR = 0.1


@dataclass(frozen=True)
class Variant:
    """One point of an ablation: `experiment`'s `method` with `overrides` (key=value strings)."""

    label: str
    experiment: str  # an entry point of experiments.core.registry: transfer, patch, regularization_mlp, ...
    method: str
    overrides: tuple[str, ...] = ()


def _k_grid() -> list[Variant]:
    sgd = [Variant("SGD train-all", "transfer", "train_all", (f"lr={SGD_LR}",))]
    sgd += [Variant(f"SGD k={k}", "transfer", "multirate", (f"lr={SGD_LR}", f"k={k}"))
            for k in (1, 2, 5, 10, 25)]
    adamw = [Variant("AdamW train-all", "transfer", "train_all", ("optimizer=adamw", f"lr={ADAMW_LR}"))]
    adamw += [Variant(f"AdamW k={k}", "transfer", "multirate",
                      ("optimizer=multirate_adamw", f"lr={ADAMW_LR}", f"k={k}")) for k in (1, 2, 5, 10, 25)]
    return sgd + adamw


def _drift_grid() -> list[Variant]:
    settings = [("transfer SGD", "transfer", (f"lr={SGD_LR}", "k=5")),
                ("transfer AdamW", "transfer", ("optimizer=multirate_adamw", f"lr={ADAMW_LR}", "k=5")),
                ("patch", "patch", ("k=25",))]
    return [Variant(f"{setting} {'drift' if drift == 'true' else 'no drift'}", experiment, "multirate",
                    (*overrides, f"linear_drift={drift}"))
            for setting, experiment, overrides in settings for drift in ("true", "false")]


def _subgroup_grid() -> list[Variant]:
    grid = [Variant("SGD", "regularization_mlp", "sgd")]
    grid += [Variant(f"fraction={f} k=2", "regularization_mlp", "multirate",
                     (f"slow_fraction={f}", "k=2", "lr=0.02")) for f in (0.1, 0.2, 0.4, 0.6)]
    grid += [Variant(f"fraction=0.2 k={k}", "regularization_mlp", "multirate",
                     ("slow_fraction=0.2", f"k={k}", f"lr={0.01 * k:g}")) for k in (1, 5, 10)]
    return grid


# The grids, each named by the registry entry of the experiment it ablates (experiments/core/registry.py),
# which orders them: `grids`.
K = _k_grid()
DRIFT = _drift_grid()
FAST = [Variant(f"fast = {name}", "transfer", "multirate", (f"lr={SGD_LR}", "k=5", f"fast={fast}"))
        for name, fast in (("fc", "fc"), ("layer4+fc", "layer4,fc"),
                           ("layer3+layer4+fc", "layer3,layer4,fc"))]
SUBGROUPS = _subgroup_grid()
# Which reading of "the slow subset is zeroed during the k fast steps" (multirate.partition.
# random_subgroups): zeroed on the k - 1 fast steps and restored for the step that takes its
# gradient (the headline, as Algorithm 1 takes every slow gradient at the full network), or
# zeroed on all k steps. On the language model, whose claim it is.
ZEROING = [Variant("zeroed on k − 1 of k steps (headline)", "regularization_lm", "multirate"),
           Variant("zeroed on all k steps", "regularization_lm", "multirate", ("zero_slow_every_step=true",))]


def grids() -> dict[str, list[Variant]]:
    """Every ablation, name -> its variants, from the registry (`registry.ablations`)."""
    return registry.ablations()


def ablation_results_dir(results_dir: str | Path, name: str) -> Path:
    """Where ablation `name` keeps its runs: `<results>/ablations/<name>` (then <profile>/<experiment>)."""
    return Path(results_dir) / "ablations" / name


def argv(variant: Variant, profile: str, seeds: list[int], results_dir: str | Path, name: str) -> list[str]:
    """The command line of the experiment's `main` that runs `variant` of ablation `name`."""
    return ["--profile", profile, "--method", variant.method, "--seeds", ",".join(map(str, seeds)),
            f"results_dir={ablation_results_dir(results_dir, name)}", f"variant={name}/{variant.label}",
            *variant.overrides]


def variant_config(variant: Variant, profile: str, seed: int, results_dir: str | Path, name: str):
    """The RunConfig the variant's run has (as `main` builds it)."""
    config_cls, toml = experiment_config(registry.entry_point(variant.experiment))
    return load_config(config_cls, toml, profile, variant.method,
                       [f"results_dir={ablation_results_dir(results_dir, name)}",
                        f"variant={name}/{variant.label}", *variant.overrides, f"seed={seed}"])


def check_ablations(names: list[str], profile: str, seeds: list[int], results_dir: str | Path) -> None:
    """Load the config of every variant x seed of the ablations `names` and build its optimizer on a
    stand-in model: an impossible one raises ValueError (naming the variant) before any run starts."""
    for name in names:
        for variant in grids()[name]:
            for seed in seeds:
                try:
                    check_optimizer(variant_config(variant, profile, seed, results_dir, name))
                except ValueError as err:
                    raise ValueError(f"ablation {name}, variant {variant.label!r}: {err}") from None


def run_ablation(name: str, profile: str, seeds: list[int], results_dir: str | Path = "results"
                 ) -> list[dict]:
    """Run every variant x seed of ablation `name`; returns the runs' results (as `main` gives them)."""
    results = []
    for variant in grids()[name]:
        # Pretrained networks cached elsewhere under results_dir (keyed by what determines them).
        run_dir = variant_config(variant, profile, seeds[0], results_dir, name).run_dir
        pretraining.share_caches(run_dir, results_dir)
        print(f"[ablation {name}] {variant.label}", flush=True)
        entry = registry.entry_point(variant.experiment)
        for result in entry.main(argv(variant, profile, seeds, results_dir, name)):
            results.append(dict(result, label=variant.label, ablation=name))
    return results


# ----------------------------------------------------------------------------- the result tables

FIELDS = ["optimizer", "lr", "k", "linear_drift", "fast", "train", "slow_fraction"]


def _field(value):
    """Config values as the table shows them: lists joined with "+"."""
    return "+".join(map(str, value)) if isinstance(value, list) else value


def _keys(name: str) -> list[str]:
    """The config fields that tell the variants of ablation `name` apart: the method and every field
    some variant sets (a variant that leaves one at the experiment's value must not claim its
    neighbours' runs)."""
    return ["method", *dict.fromkeys(o.partition("=")[0] for v in grids()[name] for o in v.overrides)]


def _folder(variant: Variant, name: str, results_dir: str | Path, profile: str) -> Path:
    folder = registry.part(variant.experiment).results_folder
    return ablation_results_dir(results_dir, name) / profile / folder


def _matching(runs: pd.DataFrame, want, keys: list[str]) -> pd.DataFrame:
    """The rows of `runs` (one per run, with its config fields) whose `keys` have `want`'s values."""
    for key in keys:
        runs = runs.loc[[value == getattr(want, key) for value in runs[key]]]
    return runs


def final_rows(name: str, results_dir: str | Path, profile: str) -> pd.DataFrame:
    """One row per complete run of ablation `name` and metric, at the run's last evaluation."""
    keys = _keys(name)
    logs = {}  # experiment -> (its rows, its runs): the variants of an ablation share folders
    frames = []
    for variant in grids()[name]:
        if variant.experiment not in logs:
            folder = _folder(variant, name, results_dir, profile)
            rows = read_results(folder, only_complete=True)
            logs[variant.experiment] = (rows, None if rows.empty else read_runs(folder))
        rows, runs = logs[variant.experiment]
        if rows.empty:
            continue
        want = variant_config(variant, profile, 0, results_dir, name)
        match = _matching(runs[runs.status == "complete"], want, keys)
        rows = rows[rows.run.isin(match.run) & rows.metric.isin(registry.part(variant.experiment).metrics)]
        rows = last_epoch(rows)
        config = match.set_index("run")[FIELDS].map(_field)
        frames.append(rows.join(config, on="run").assign(label=variant.label, experiment=variant.experiment))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def left_out_runs(name: str, results_dir: str | Path, profile: str) -> pd.DataFrame:
    """The runs of ablation `name` that `final_rows` leaves out (diverged or not finished), one row
    each: its variant's ``label``, ``seed`` and ``reason`` (`experiments.reporting.left_out.runs`)."""
    keys, left, frames = _keys(name), {}, []
    for variant in grids()[name]:
        if variant.experiment not in left:
            folder = _folder(variant, name, results_dir, profile)
            left[variant.experiment] = left_out.runs(folder, tuple(keys[1:]))
        if left[variant.experiment].empty:
            continue
        want = variant_config(variant, profile, 0, results_dir, name)
        frames.append(_matching(left[variant.experiment], want, keys).assign(label=variant.label))
    if not frames:
        return pd.DataFrame(columns=["label", "seed", "reason"])
    return pd.concat(frames, ignore_index=True)[["label", "seed", "reason"]]


def summarise(final: pd.DataFrame, name: str) -> pd.DataFrame:
    """Mean and sd over seeds per variant and metric, in the ablation's order; k adds the trade-off."""
    order = {v.label: i for i, v in enumerate(grids()[name])}
    table = (final.groupby(["label", "experiment", "metric", *FIELDS], sort=False)
             .agg(value=("value", "mean"), value_sd=("value", "std"), time_s=("time_s", "mean"),
                  time_s_sd=("time_s", "std"), seeds=("seed", "nunique"))
             .reset_index())
    table = table.sort_values("label", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    if name == "k":
        table = tradeoff(table)
    return table


def base_of(optimizer: str) -> str:
    """The base algorithm of an optimizer name (`experiments.core.config.OPTIMIZERS`): "sgd" for
    sgd/multirate, "adamw" for adamw/multirate_adamw."""
    return OPTIMIZERS[optimizer]


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


# ----------------------------------------------------------------------------- command line

def main(argv_: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ablation grids (finished runs are skipped).")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    known = grids()
    parser.add_argument("--only", default=",".join(known), help=f"comma-separated, of {', '.join(known)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: quick 0, paper 0,1,2)")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv_)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown ablation(s) {unknown}; known: {list(known)}")
    seeds = parse_seeds(args.seeds) if args.seeds else SEEDS[args.profile]
    check_ablations(names, args.profile, seeds, args.results_dir)  # every run possible, or nothing runs
    for name in names:
        start = time.perf_counter()
        run_ablation(name, args.profile, seeds, args.results_dir)
        print(f"[ablation {name}] done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

"""Ablations of multirate training, run through the ordinary experiment entry points.

    python -m experiments.ablations [--profile quick|paper] [--only k,drift,...] [--seeds 0,1,2]

Every ablation is a list of variants: an experiment module, one of its methods, and key=value
overrides on top of that method. Each variant is an ordinary run of that experiment's `main`
(finished runs are skipped, results land as CSV + JSON), but with ``results_dir`` moved to
``<results>/ablations/<name>``, so its runs live in ``<results>/ablations/<name>/<profile>/<experiment>/``
and never mix with the runs the figures of the main experiments read.

The grids (``ABLATIONS``):

- ``k``: k in {1, 2, 5, 10, 25} on the transfer setting (fast = fc, linear drift) with the SGD base
  (h = 0.1, the transfer config's) and the AdamW base (h = 0.003), each beside train-all with its
  base optimizer: final accuracy against training time;
- ``drift``: linear drift vs none at the same h and k, on transfer (SGD and AdamW bases, k = 5)
  and on patch (multirate, fast = block3+bn+fc, k = 25);
- ``fast``: which part of the transfer network is fast: fc, layer4+fc, layer3+layer4+fc (SGD base,
  k = 5, linear drift);
- ``subgroups``: random subgroups on the regularisation perceptron: the slow fraction at k = 2, and
  the redraw period k (the slow part is redrawn every cycle) at fraction 0.2, with h = k x 0.01 so
  that the fast step h/k stays SGD's 0.01 (the regularisation configs' convention), beside SGD.
  The perceptron, not transfer or patch: random subgroups are the regularisation partition (a
  layer-wise net like the transfer ResNet has no use for it), and its runs are the cheapest.

Seeds: the quick profile runs seed 0 only (the 20-minute budget on 2 CPU cores); the paper
profile runs seeds 0, 1, 2. Epochs and every other setting are those of the experiment's profile.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.config import PROFILES, experiment_config, load_config

SEEDS = {"quick": [0], "paper": [0, 1, 2]}
ADAMW_LR = 0.003  # AdamW base on transfer: h of the best runs in experiments/sweeps (quick profile)


@dataclass(frozen=True)
class Variant:
    """One point of an ablation: `experiment`'s `method` with `overrides` (key=value strings)."""

    label: str
    experiment: str  # module under experiments/: transfer, patch, regularization_mlp, ...
    method: str
    overrides: tuple[str, ...] = ()


def _k_grid() -> list[Variant]:
    sgd = [Variant("SGD train-all", "transfer", "train_all")]
    sgd += [Variant(f"SGD k={k}", "transfer", "multirate", (f"k={k}",)) for k in (1, 2, 5, 10, 25)]
    adamw = [Variant("AdamW train-all", "transfer", "train_all", ("optimizer=adamw", f"lr={ADAMW_LR}"))]
    adamw += [Variant(f"AdamW k={k}", "transfer", "multirate",
                      ("optimizer=multirate_adamw", f"lr={ADAMW_LR}", f"k={k}")) for k in (1, 2, 5, 10, 25)]
    return sgd + adamw


def _drift_grid() -> list[Variant]:
    settings = [("transfer SGD", "transfer", ("k=5",)),
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


ABLATIONS: dict[str, list[Variant]] = {
    "k": _k_grid(),
    "drift": _drift_grid(),
    "fast": [Variant("fast = fc", "transfer", "multirate", ("k=5", "fast=fc")),
             Variant("fast = layer4+fc", "transfer", "multirate", ("k=5", "fast=layer4,fc")),
             Variant("fast = layer3+layer4+fc", "transfer", "multirate", ("k=5", "fast=layer3,layer4,fc"))],
    "subgroups": _subgroup_grid(),
}


def module(experiment: str):
    """The experiment's module (it has TOML, its config class and `main`)."""
    return importlib.import_module(f"experiments.{experiment}")


def ablation_results_dir(results_dir: str | Path, name: str) -> Path:
    """Where ablation `name` keeps its runs: `<results>/ablations/<name>` (then <profile>/<experiment>)."""
    return Path(results_dir) / "ablations" / name


def argv(variant: Variant, profile: str, seeds: list[int], results_dir: str | Path, name: str) -> list[str]:
    """The command line of the experiment's `main` that runs `variant` of ablation `name`."""
    return ["--profile", profile, "--method", variant.method, "--seeds", ",".join(map(str, seeds)),
            f"results_dir={ablation_results_dir(results_dir, name)}", *variant.overrides]


def variant_config(variant: Variant, profile: str, seed: int, results_dir: str | Path, name: str):
    """The RunConfig the variant's run has (as `main` builds it)."""
    config_cls, toml = experiment_config(module(variant.experiment))
    return load_config(config_cls, toml, profile, variant.method,
                       [f"results_dir={ablation_results_dir(results_dir, name)}", *variant.overrides,
                        f"seed={seed}"])


def share_pretrained(cfg, results_dir: str | Path) -> None:
    """Copy the quick transfer profile's cached pretrained network into this run's folder if any
    other folder under `results_dir` holds it: it is keyed by everything that determines it, and
    pretraining again costs about a minute per ablation."""
    from experiments.transfer import pretrained_path

    if cfg.experiment != "transfer" or cfg.model != "small_resnet" or not cfg.pretrained:
        return
    target = pretrained_path(cfg)
    if target.exists():
        return
    for source in Path(results_dir).glob(f"**/{cfg.profile}/transfer/pretrained/{target.name}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return


def run_ablation(name: str, profile: str, seeds: list[int], results_dir: str | Path = "results"
                 ) -> list[dict]:
    """Run every variant x seed of ablation `name`; returns the runs' results (as `main` gives them)."""
    results = []
    for variant in ABLATIONS[name]:
        share_pretrained(variant_config(variant, profile, seeds[0], results_dir, name), results_dir)
        print(f"[ablation {name}] {variant.label}", flush=True)
        for result in module(variant.experiment).main(argv(variant, profile, seeds, results_dir, name)):
            results.append(dict(result, label=variant.label, ablation=name))
    return results


def main(argv_: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ablation grids (finished runs are skipped).")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--only", default=",".join(ABLATIONS),
                        help=f"comma-separated, of {', '.join(ABLATIONS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: quick 0, paper 0,1,2)")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv_)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablation(s) {unknown}; known: {list(ABLATIONS)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else SEEDS[args.profile]
    for name in names:
        start = time.perf_counter()
        run_ablation(name, args.profile, seeds, args.results_dir)
        print(f"[ablation {name}] done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

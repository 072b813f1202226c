"""Hyperparameter sweeps: grid or random search over config fields, run locally or as a W&B sweep.

    python -m experiments.sweep SWEEP.toml              # run every trial (finished runs are skipped)
    python -m experiments.sweep SWEEP.toml --dry-run    # list the trials, their runs and status
    python -m experiments.sweep SWEEP.toml --summary    # score per trial from the CSVs, best first
    python -m experiments.sweep SWEEP.toml --wandb [FILE]   # the W&B sweep config (YAML), then
    wandb sweep FILE && wandb agent ENTITY/PROJECT/SWEEP_ID

A sweep file (examples in ``experiments/sweeps/``)::

    module = "experiments.transfer"   # the experiment's entry point, python -m <module>
    method = "multirate"              # its [methods.*] table that every trial starts from
    profile = "quick"
    search = "random"                 # "grid": every combination; "random": `trials` samples
    trials = 9
    seed = 0                          # of the random sampler (the trials are reproducible)
    seeds = [0]                       # run seeds of every trial
    metric = "test_accuracy"          # a trial's score: the metric's last logged value, mean over seeds
    goal = "maximize"
    [fixed]                           # overrides shared by every trial
    epochs = 15
    [parameters]                      # config fields searched over
    lr = { distribution = "log_uniform", min = 0.03, max = 0.3 }
    k = { distribution = "int_uniform", min = 2, max = 10 }
    linear_drift = { values = [true, false] }

A parameter is either ``values = [...]`` (grid: each one; random: a uniform choice) or, for random
search, a distribution: ``uniform``, ``log_uniform`` (uniform in log, as step sizes should be) or
``int_uniform`` (both ends included). Sampled floats are rounded to 4 significant digits, so run
names and command lines stay readable.

Each trial is an ordinary run of the experiment through its entry point with ``key=value``
overrides, so its results land in the same CSVs under ``results/<profile>/<experiment>/`` and a
finished run is not trained again. The W&B export calls the same entry point: W&B's
``${args_no_hyphens}`` expands to exactly these ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from experiments.core import registry
from experiments.core.config import (
    MAX_SEED,
    PROFILES,
    RunConfig,
    check_fields,
    experiment_config,
    load_config,
    read_toml,
    require,
)
from experiments.core.optimizers import check_optimizer
from experiments.core.runlog import read_rows, read_status

SEARCHES = ("grid", "random")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
# W&B's names: "log_uniform_values" takes min and max as values ("log_uniform" takes their logs).
WANDB_DISTRIBUTIONS = {"uniform": "uniform", "log_uniform": "log_uniform_values",
                       "int_uniform": "int_uniform"}


@dataclass
class Sweep:
    """One sweep description (a TOML file; see the module docstring)."""

    module: str
    method: str
    parameters: dict[str, dict[str, Any]]
    name: str = "sweep"
    profile: str = "quick"
    search: str = "grid"
    trials: int = 0  # random search only
    seed: int = 0  # random search only: the sampler's seed
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: str = "test_accuracy"
    goal: str = "maximize"
    fixed: dict[str, Any] = field(default_factory=dict)
    file: str = ""  # the sweep file, named in messages

    def __post_init__(self) -> None:
        check_fields(self)  # types and finite numbers, before the checks below compare them
        checks = [
            ("profile", self.profile in PROFILES, f"one of {PROFILES}"),
            ("search", self.search in SEARCHES, f"one of {SEARCHES}"),
            ("goal", self.goal in GOALS, f"one of {GOALS}"),
            ("parameters", len(self.parameters) > 0, "a non-empty table"),
            ("trials", (self.trials >= 1) == (self.search == "random"),
             ">= 1 for random search, unset for grid"),
            ("seeds", len(self.seeds) > 0 and all(0 <= s <= MAX_SEED for s in self.seeds),
             f"a non-empty list of integers in [0, {MAX_SEED}]"),
        ]
        require(self, checks)
        for key, spec in self.parameters.items():
            _check_parameter(key, spec, self.search)
            if key in self.fixed or key in ("seed", "profile", "method"):
                raise ValueError(f"parameter {key!r}: also set in [fixed], or chosen by the sweep itself")


def _check_parameter(key: str, spec: dict, search: str) -> None:
    where = f"parameter {key!r}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a table, e.g. {{ values = [...] }}")
    if "values" in spec:
        if set(spec) != {"values"} or not isinstance(spec["values"], list) or not spec["values"]:
            raise ValueError(f"{where}: `values` must be a non-empty list, alone")
        return
    if search == "grid":
        raise ValueError(f"{where}: grid search needs `values`, got {spec}")
    if set(spec) != {"distribution", "min", "max"} or spec["distribution"] not in DISTRIBUTIONS:
        raise ValueError(f"{where}: needs `values`, or `distribution` (one of {DISTRIBUTIONS}) "
                         f"with `min` and `max`; got {spec}")
    lo, hi = spec["min"], spec["max"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
        raise ValueError(f"{where}: `min` and `max` must be finite numbers, got {spec}")
    if not lo <= hi or (spec["distribution"] == "log_uniform" and lo <= 0):
        raise ValueError(f"{where}: needs min <= max (and min > 0 for log_uniform), got {spec}")
    if spec["distribution"] == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise ValueError(f"{where}: int_uniform needs integer min and max, got {spec}")


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep TOML file; its name is the file's stem. A malformed file, an unknown key or an
    impossible value raises ValueError naming the file."""
    path = Path(path)
    data = read_toml(path)
    known = {f.name for f in fields(Sweep)} - {"name", "file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {unknown}; known: {sorted(known)}")
    try:
        return Sweep(**{"module": None, "method": None, "parameters": None, **data}, name=path.stem,
                     file=str(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- the trials

def trials(sweep: Sweep) -> list[dict[str, Any]]:
    """The parameter values of every trial, in order: the grid's product (first parameter slowest)
    or `sweep.trials` random draws from a generator seeded with `sweep.seed`."""
    keys = list(sweep.parameters)
    if sweep.search == "grid":
        grid = itertools.product(*(sweep.parameters[key]["values"] for key in keys))
        return [dict(zip(keys, combo)) for combo in grid]
    rng = random.Random(sweep.seed)
    return [{key: sample(sweep.parameters[key], rng) for key in keys} for _ in range(sweep.trials)]


def sample(spec: dict, rng: random.Random) -> Any:
    """One draw from a parameter's `values` or distribution."""
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    if spec["distribution"] == "int_uniform":
        return rng.randint(lo, hi)
    if spec["distribution"] == "log_uniform":
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        value = rng.uniform(lo, hi)
    return min(max(float(f"{value:.4g}"), lo), hi)


def format_value(value: Any) -> str:
    """A value as a `key=value` override reads it (see experiments.core.config.convert)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)  # str(float) is repr: it round-trips


def overrides(sweep: Sweep, trial: dict[str, Any]) -> list[str]:
    """The `key=value` overrides of one trial: the fixed ones, then the trial's."""
    return [f"{key}={format_value(value)}" for key, value in {**sweep.fixed, **trial}.items()]


def variant(sweep: Sweep, trial: dict[str, Any] | None = None) -> str:
    """The override that labels a sweep's runs (their W&B group and tag; not part of their identity):
    the sweep's name, and with `trial` its parameters, so that W&B never averages one trial's seeds
    with another's."""
    if trial is None:
        return f"variant={sweep.name}"
    return f"variant={sweep.name}/" + " ".join(f"{k}={format_value(v)}" for k, v in trial.items())


def argv(sweep: Sweep, trial: dict[str, Any]) -> list[str]:
    """The experiment's command-line arguments for one trial (all its seeds)."""
    return ["--profile", sweep.profile, "--method", sweep.method,
            "--seeds", ",".join(map(str, sweep.seeds)), *overrides(sweep, trial)]


def configs(sweep: Sweep) -> list[tuple[dict[str, Any], list[RunConfig]]]:
    """Every trial with the run config of each of its seeds, as the entry point will build them; an
    unknown key or impossible value raises ValueError naming the sweep file's table it came from."""
    config_cls, toml = experiment_config(registry.entry_point(sweep.module))
    where = sweep.file or sweep.name

    def config(trial, seed):
        layers = [(f"{where} [fixed]", overrides(sweep, {}) if sweep.fixed else []),
                  (f"{where} [parameters]", [f"{k}={format_value(v)}" for k, v in trial.items()])]
        return load_config(config_cls, toml, sweep.profile, sweep.method, [f"seed={seed}"], layers)

    return [(trial, [config(trial, seed) for seed in sweep.seeds]) for trial in trials(sweep)]


# ----------------------------------------------------------------------------- local runs, summary

def run_local(sweep: Sweep, dry_run: bool = False) -> None:
    """Run every trial through the experiment's `main`, or with `dry_run` only list them. Every
    trial's configs and optimizers are checked first: nothing runs unless all are possible."""
    module = registry.entry_point(sweep.module)
    every = configs(sweep)
    for _, cfgs in every:
        for cfg in cfgs:
            check_optimizer(cfg)
    for i, (trial, cfgs) in enumerate(every, 1):
        print(f"[{i}] python -m {sweep.module} {' '.join(argv(sweep, trial))}", flush=True)
        if dry_run:
            for cfg in cfgs:
                print(f"      {cfg.run_dir / cfg.run_name}: {read_status(cfg) or 'not started'}")
        else:
            module.main([*argv(sweep, trial), variant(sweep, trial)])


def summary(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial: its parameters, the mean over seeds of the metric's last logged value
    (None without a finished run), the number of seeds it averages, and their mean training time;
    sorted best first (trials without a score last)."""
    rows = []
    for trial, cfgs in configs(sweep):
        scores, times = [], []
        for cfg in cfgs:
            csv_file = cfg.run_dir / f"{cfg.run_name}.csv"
            if read_status(cfg) != "complete" or not csv_file.exists():
                continue
            logged = [r for r in read_rows(csv_file) if r["metric"] == sweep.metric]
            if logged:
                scores.append(logged[-1]["value"])
                times.append(logged[-1]["time_s"])
        rows.append({**trial, "score": statistics.mean(scores) if scores else None, "seeds": len(scores),
                     "time_s": statistics.mean(times) if times else None})
    sign = -1 if sweep.goal == "maximize" else 1
    return sorted(rows, key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0)))


def format_summary(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = list(sweep.parameters)
    lines = [f"{sweep.name}: {sweep.search} search, {sweep.metric} ({sweep.goal}), method {sweep.method}",
             "  ".join(f"{k:>12}" for k in [*keys, sweep.metric, "seeds", "time_s"])]
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        time_s = "-" if r["time_s"] is None else f"{r['time_s']:.1f}"
        cells = [format_value(r[k]) for k in keys] + [score, str(r["seeds"]), time_s]
        lines.append("  ".join(f"{c:>12}" for c in cells))
    if rows and rows[0]["score"] is not None:
        best = " ".join(f"{k}={format_value(rows[0][k])}" for k in keys)
        lines.append(f"best: {best} ({sweep.metric} = {rows[0]['score']:.4g})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- W&B

def wandb_config(sweep: Sweep) -> dict[str, Any]:
    """The sweep as the config `wandb sweep` expects: its project (the runs' `wandb_project`),
    method, metric, parameters and a command that calls the same entry point with `key=value`
    overrides, `variant=<sweep name>` among them (the runs' W&B group and tag)."""
    parameters = {}
    for key, spec in sweep.parameters.items():
        if "values" in spec:
            parameters[key] = {"values": list(spec["values"])}
        else:
            parameters[key] = {"distribution": WANDB_DISTRIBUTIONS[spec["distribution"]],
                               "min": spec["min"], "max": spec["max"]}
    fixed = [*overrides(sweep, {}), variant(sweep)]
    config_cls, toml = experiment_config(registry.entry_point(sweep.module))
    project = load_config(config_cls, toml, sweep.profile, sweep.method, fixed).wandb_project
    if len(sweep.seeds) == 1:
        fixed.append(f"seed={sweep.seeds[0]}")
    else:  # one W&B run is one seed: crossed with the grid, drawn at random in random search
        parameters["seed"] = {"values": list(sweep.seeds)}
    config = {
        "name": sweep.name,
        "project": project,
        "method": sweep.search,
        "metric": {"name": sweep.metric, "goal": sweep.goal},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "-m", sweep.module, "--profile", sweep.profile,
                    "--method", sweep.method, *fixed, "${args_no_hyphens}"],
    }
    if sweep.search == "random":
        config["run_cap"] = sweep.trials * len(sweep.seeds)
    return config


def main(argv_: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run, list, summarise or export a hyperparameter sweep.")
    parser.add_argument("sweep", help="a sweep TOML file, e.g. experiments/sweeps/transfer_grid.toml")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="list the trials and runs, train nothing")
    action.add_argument("--summary", action="store_true", help="score per trial from the result CSVs")
    action.add_argument("--wandb", nargs="?", const="-", metavar="FILE",
                        help="write the W&B sweep config as YAML to FILE (default: stdout)")
    args = parser.parse_args(argv_)
    sweep = load_sweep(args.sweep)
    if args.wandb:
        import yaml

        text = yaml.safe_dump(wandb_config(sweep), sort_keys=False)
        if args.wandb == "-":
            sys.stdout.write(text)
        else:
            Path(args.wandb).write_text(text)
            print(f"wrote {args.wandb}: wandb sweep {args.wandb}, then wandb agent <the printed id>")
    elif args.summary:
        print(format_summary(sweep, summary(sweep)))
    else:
        run_local(sweep, dry_run=args.dry_run)
        if not args.dry_run:
            print(format_summary(sweep, summary(sweep)))


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

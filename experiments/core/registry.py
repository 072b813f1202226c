"""The experiments, one entry each: what produces a figure's runs, what draws it, what reports it.

    python -m experiments.core.registry                        # every experiment and its parts
    python -m experiments.core.registry patch --commands [--profile P] [--seeds 0,1,2] [key=value ...]
    python -m experiments.core.registry patch --run [--processes 2] [--profile P] [--seeds 0,1,2] [key=value
        ...]
    python -m experiments.core.registry --check-imports       # the import-graph rules below; exit 1 if broken

An `Experiment` is one paper figure: its `Part` s (an entry point ``python -m <module>`` over the
methods of its TOML file its figure draws, once per override set of the profile: the transfer figure
runs the ResNet module once per torchvision model in the paper profile, and the DistilBERT module),
the figure script (``python -m <figure> --profile P --results-dir R``), the report section (a function
``results/<profile> -> Markdown``; without one, `experiments.reporting.report` writes a generic table of the
final value of each judged metric per method), the paper's numbers (the one table of them), its
claims, its README/docs tables, its ablations and whether each part is in the cost plan. Everything
that goes over "every experiment" reads `EXPERIMENTS`: ``experiments.reporting.report`` (the sections, the
paper's numbers, the ablation sections), ``experiments.reporting.claims`` (`claims`; each claim's paper value
from `paper`), ``experiments.reporting.readme_tables`` (the blocks), ``benchmarks.plan`` (`planned`),
``experiments.ablations`` (`ablations`), ``experiments.core.slurm`` (job arrays), ``experiments.sweep``
(an entry point by name: `entry_point`), the Makefile (``make fig-NAME``: ``--run``, `schedule`;
``make slurm-NAME``), and the tests.

Adding an experiment: its module (a RunConfig subclass, ``TOML``, a ``runner.Task`` and ``main``),
its TOML file in ``experiments/configs/``, its figure script in ``figures/``, one `Experiment`
below, and its tests: five places. Where the generic one is not enough, the entry names code of its
own: claims (a list of ``claims.Claim``; ``claims.margin`` measures a difference of two methods),
README tables (functions of ``readme_tables.Runs``; else `readme_tables.generic_table` under its
name), a report section, ablation grids (lists of ``ablations.Variant``), each beside its kind
(``claims.py``, ``readme_tables.py``, ``report.py``, ``ablations.py``) or anywhere importable; a
table is shown where a page has its markers. ``tests/test_registry.py`` adds a toy experiment at
run time and gets its runs, figure, claims row, README tables, cost plan, ablation, report sections,
Slurm array and sweep from its entry alone.

Counted from the code. Before this entry carried all of that, an experiment on a par with the
paper's three touched 14 places in 8 files: the five above, ``plan.PLANNED``, ``report.PAPER`` (the
paper's numbers), a ``report`` section, ``claims.CLAIMS`` (the same numbers typed again),
``readme_tables.BLOCKS`` and ``ABLATION_METRICS``, ``ablations.ABLATIONS``, and the Makefile's
``fig-NAME`` and ``slurm-NAME`` recipes. Now: the five, plus the code its entry names (claims,
tables, a report section, grids; up to four, none of them a list to extend); ``make fig-NAME`` and
``make slurm-NAME`` are the Makefile's pattern rules.

Adding a base optimizer (the multirate cycle over another base algorithm), counted from the code:
its direction in ``multirate/_functional.py``; a ``Multirate`` subclass that supplies it (as
``multirate/adamw.py`` does for AdamW and Adam); its row in ``multirate.bases.BASES`` (which the
runner, the Hugging Face integration and ``check_hyperparameters`` read); its export in
``multirate/__init__.py``; its two optimizer names in ``experiments.core.config.OPTIMIZERS`` (and a
``RunConfig`` field per new hyperparameter); its case in the conformance tests
(``tests/test_optimizer_bases.py``): six places; and, for the k-ablation figure only, its marker in
``figures/ablations.BASES``. (``ablations.base_of`` read the optimizer's name suffix, a seventh
place; it now reads ``OPTIMIZERS``.)

Import rules (`import_violations`, run by ``--check-imports`` and the tests): no module under
``experiments/`` imports an experiment entry point (a `Part`'s module), directly or through other
modules: experiments do not import each other (shared code lives in modules of its own:
``synthetic_images``, ``synthetic_text``, ``pretraining``, ``data``, ...), and the drivers
(ablations, sweeps, Slurm, the report) find them by name here; nothing under ``experiments/``
imports ``figures/`` (figures read results and may import experiments, not the other way); the
library ``multirate/`` imports only itself. Names are given as strings, so reading the
registry imports no experiment (Slurm and the Makefile need no torch to list the commands).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("experiments", "figures", "multirate", "benchmarks")  # what import_graph reads
CONFIGS = ROOT / "experiments" / "configs"


@dataclass(frozen=True)
class Part:
    """``python -m <module>`` over the figure's methods of ``configs/<toml>`` (`methods`; none named:
    every method), once per override set of the profile (`variants`: profile -> override sets; a
    profile not named runs once, with none)."""

    module: str
    toml: str  # a file name in experiments/configs/ (or an absolute path)
    variants: dict[str, list[list[str]]] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # the final-epoch metrics it is judged by (ablation tables, report)
    # The summary metrics (experiments.reporting.reference.summarize) of the README's ablation tables; () ->
    # metrics
    table_metrics: tuple[str, ...] = ()
    plan: bool = True  # in the cost plan (`benchmarks.plan all`): a training run to time
    methods: tuple[str, ...] = ()  # the methods the figure draws, costliest first; (): every method
    shared: bool = True  # processes side by side can share its runs (--skip-running); False: one run
    run_records: bool = True  # a JSON record and a CSV per run; False: one table (the convergence check)

    @property
    def name(self) -> str:
        """The module's own name: "transfer" for experiments.transfer (what ablations call it)."""
        return self.module.rpartition(".")[2]

    @property
    def toml_path(self) -> Path:
        return CONFIGS / self.toml

    @property
    def results_folder(self) -> str:
        """``results/<profile>/<this>/``: the TOML's ``experiment`` key, else its file name's stem
        (as `experiments.core.config.load_config` sets it)."""
        with open(self.toml_path, "rb") as f:
            return tomllib.load(f).get("experiment", self.toml_path.stem)

    def override_sets(self, profile: str) -> list[list[str]]:
        return [list(v) for v in self.variants.get(profile, [[]])]


@dataclass(frozen=True)
class Experiment:
    """One figure: the parts whose runs it draws, its figure module, its report section, the
    paper's numbers, its claims, its README/docs tables and its ablations.

    Code is named by ``"module:name"`` strings (resolved when used, `load`), so this file imports none
    of it; an entry made elsewhere (a test's, one's own) may hold the objects instead."""

    name: str
    parts: tuple[Part, ...]
    figure: str  # module: python -m <figure> --profile P --results-dir R
    report: str | None = None  # "module:function", function(results/<profile>) -> Markdown; None: generic
    title: str = ""  # the generic report section's heading
    # The paper's numbers, the one table of them (the report prints them, the claims derive theirs):
    # {setting: {our method: {metric: value}}}; ~ read off the paper's plots (about ±0.5 point, ±5 % in
    # time); "time" is seconds of the paper's run.
    paper: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # Each of the next three is given as "module:name" or as the object itself (`load`).
    claims: str | Sequence | None = None  # its experiments.reporting.claims.Claim s
    # README/docs blocks: block name -> function(readme_tables.Runs) -> Markdown; none: one block
    # named after the experiment, `experiments.reporting.readme_tables.generic_table`
    tables: dict[str, str | Callable] = field(default_factory=dict)
    # ablation name -> its experiments.ablations.Variant s
    ablations: dict[str, str | Sequence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"experiment {self.name!r}: needs at least one Part")

    @property
    def run_folders(self) -> list[str]:
        """The results folders of its parts that hold run records, each once, in part order."""
        return list(dict.fromkeys(part.results_folder for part in self.parts if part.run_records))


# The paper: T. Vlaar and B. Leimkuhler, "Multirate Training of Neural Networks", ICML 2022 (PMLR 162;
# arXiv 2106.10771). Its numbers below are read off its figures (marked ~ in the text: about ±0.5
# point and ±5 % in time).
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("transfer", (
        Part("experiments.transfer", "transfer_resnet.toml",
             {"quick": [["model=small_resnet"]], "paper": [["model=resnet50"], ["model=resnet34"]]},
             metrics=("test_accuracy",)),
        Part("experiments.transfer_text", "transfer_distilbert.toml", metrics=("test_accuracy",))),
        "figures.transfer", "experiments.reporting.report:transfer_section", "Transfer learning",
        paper={
            # Section "Transfer learning", ResNet-50 fine-tuned on CIFAR-100 (50 epochs): the figure of
            # test accuracy against training time, at the final epoch.
            "transfer_resnet50": {
                "multirate": {"accuracy": 83.4, "time": 4950}, "train_all": {"accuracy": 83.2, "time": 9870},
                "layer2+3+4+fc": {"accuracy": 83.2, "time": 7920},
                "layer3+4+fc": {"accuracy": 81.3, "time": 6520},
                "layer4+fc": {"accuracy": 75.2, "time": 4400}, "fc": {"accuracy": 53.6, "time": 3830},
            },
            # The same section, DistilBERT fine-tuned on SST-2: test accuracy against training time.
            "transfer_distilbert": {
                "distilbert_multirate": {"accuracy": 89.4, "time": 198},
                "distilbert_multirate_l5": {"accuracy": 89.7, "time": 224},
                "distilbert_train_all": {"accuracy": 89.7, "time": 380},
                "distilbert_train_345": {"accuracy": 88.6, "time": 247},
                "distilbert_train_45": {"accuracy": 87.8, "time": 212},
                "distilbert_train_5": {"accuracy": 88.0, "time": 173},
                "distilbert_head_only": {"accuracy": 77.0, "time": 142},
            }},
        claims="experiments.reporting.claims:TRANSFER",
        tables={"transfer-resnet": "experiments.reporting.readme_tables:transfer_resnet_table",
                "transfer-distilbert": "experiments.reporting.readme_tables:transfer_distilbert_table",
                "transfer-resnet-before": "experiments.reporting.readme_tables:transfer_resnet_before_table",
                "transfer-distilbert-before":
                    "experiments.reporting.readme_tables:transfer_distilbert_before_table",
                "protocol-transfer": "experiments.reporting.readme_tables:protocol_transfer_table"},
        ablations={"k": "experiments.ablations:K", "drift": "experiments.ablations:DRIFT",
                   "fast": "experiments.ablations:FAST"}),
    Experiment("patch", (
        Part("experiments.patch", "patch.toml",
             metrics=("clean_accuracy", "patched_accuracy", "patch_only_accuracy"),
             methods=("small_lr", "large_lr", "multirate_early", "multirate"),
             table_metrics=("clean_accuracy", "patch_only_accuracy")),),
        "figures.patch", "experiments.reporting.report:patch_section", "Patch-augmented data",
        # Section "Latent time scales" (its Figure 2), WideResNet-16 on patch-augmented CIFAR-10 at epoch
        # 50; where the plot gives a range (patch-only 98-99, 25-38, 96-97; clean 76-77), its middle.
        paper={"patch": {
            "small_lr": {"clean_accuracy": 68.0, "patched_accuracy": 93.0, "patch_only_accuracy": 98.5},
            "large_lr": {"clean_accuracy": 72.0, "patched_accuracy": 65.0, "patch_only_accuracy": 31.5},
            "multirate": {"clean_accuracy": 76.5, "patched_accuracy": 93.0, "patch_only_accuracy": 96.5},
        }},
        claims="experiments.reporting.claims:PATCH",
        tables={"patch": "experiments.reporting.readme_tables:patch_table",
                "patch-partitions": "experiments.reporting.readme_tables:patch_partitions_table",
                "patch-before": "experiments.reporting.readme_tables:patch_before_table",
                "patch-premise": "experiments.reporting.readme_tables:patch_premise_table"}),
    Experiment("regularization", (
        Part("experiments.regularization_mlp", "regularization_mlp.toml", metrics=("test_accuracy",)),
        Part("experiments.regularization_lm", "regularization_lm.toml", metrics=("val_loss",),
             table_metrics=("val_loss@min", "val_loss"))),
        "figures.regularization", "experiments.reporting.report:regularization_section", "Regularisation",
        paper={
            # Section "Regularisation" (random subgroups), the transformer language model on Penn
            # Treebank, 150 epochs: the figure of validation loss against epochs.
            "regularization_lm": {
                "sgd": {"min_val_loss": 4.85, "final_val_loss": 4.97},
                "multirate": {"min_val_loss": 4.85, "final_val_loss": 4.89},
                "dropout": {"final_val_loss": 4.93},
            },
            # The same section in the paper's earlier version: a one-hidden-layer perceptron on MNIST,
            # 200 epochs, final test accuracy.
            "regularization_mlp": {
                "multirate": {"test_accuracy": 98.3}, "sgd": {"test_accuracy": 98.1},
                "dropout": {"test_accuracy": 98.1},
            }},
        claims="experiments.reporting.claims:REGULARIZATION",
        tables={"regularization": "experiments.reporting.readme_tables:regularization_table",
                "regularization-before": "experiments.reporting.readme_tables:regularization_before_table",
                "protocol-regularization":
                    "experiments.reporting.readme_tables:protocol_regularization_table"},
        ablations={"subgroups": "experiments.ablations:SUBGROUPS",
                   "zeroing": "experiments.ablations:ZEROING"}),
    Experiment("convergence",
               (Part("experiments.convergence", "convergence.toml", plan=False, shared=False,
                     run_records=False),),
               "figures.convergence", "experiments.reporting.report:convergence_section", "Convergence check",
               tables={"convergence": "experiments.reporting.readme_tables:convergence_table"}),
)}


# ----------------------------------------------------------------------------- lookups

def experiment(name: str) -> Experiment:
    """The registered experiment `name`; an unknown name is a ValueError listing the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: experiments/core/registry.py has "
                         f"{sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def parts() -> list[Part]:
    """Every registered entry point, in registry order."""
    return [p for e in EXPERIMENTS.values() for p in e.parts]


def part(name: str) -> Part:
    """The registered part whose module is `name` or ``experiments.<name>``."""
    for p in parts():
        if name in (p.name, p.module):
            return p
    raise ValueError(f"unknown experiment entry point {name!r}: experiments/core/registry.py has "
                     f"{[p.name for p in parts()]}")


def entry_point(name: str) -> ModuleType:
    """The entry-point module of a registered part (by its name, "transfer", or module), or any other
    importable module given by its full name (an experiment of one's own, not registered)."""
    try:
        return importlib.import_module(part(name).module)
    except ValueError:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that does not exist, or an empty name
            found = False
        if not found:
            raise
        return importlib.import_module(name)


def resolve(target: str) -> Any:
    """The function (or other object) named by ``"module:name"``."""
    module, sep, attr = target.partition(":")
    if not sep:
        raise ValueError(f"{target!r} is not of the form module:function")
    return getattr(importlib.import_module(module), attr)


def load(target: Any) -> Any:
    """The object named by a ``"module:name"`` string; any other value is its own object."""
    return resolve(target) if isinstance(target, str) else target


def paper() -> dict[str, dict[str, dict[str, float]]]:
    """The paper's numbers of every experiment, {setting: {method: {metric: value}}} (`Experiment.paper`;
    the inner dicts are the entries' own)."""
    return {setting: numbers for e in EXPERIMENTS.values() for setting, numbers in e.paper.items()}


def claims() -> list:
    """Every experiment's claims (`experiments.reporting.claims.Claim`), in registry order."""
    return [c for e in EXPERIMENTS.values() if e.claims for c in load(e.claims)]


def ablations() -> dict[str, list]:
    """Every ablation, name -> its variants (`experiments.ablations.Variant`), in registry order."""
    return {name: list(load(target)) for e in EXPERIMENTS.values() for name, target in e.ablations.items()}


def planned() -> list[str]:
    """The entry points the cost plan times (`Part.plan`), by name, in registry order."""
    return [p.name for p in parts() if p.plan]


def commands(name: str, profile: str = "quick", seeds: str | None = None, overrides: list[str] = (),
             results_dir: str | None = None, python: str = sys.executable) -> list[list[str]]:
    """The command lines that make figure `name`: each part once per override set of the profile
    (its figure's methods, the given seeds), then the figure. As ``make fig-<name>`` runs them."""
    exp = experiment(name)
    selection = ["--profile", profile, *(["--seeds", seeds] if seeds else [])]
    runs = [[python, "-m", p.module, *selection, *(["--method", ",".join(p.methods)] if p.methods else []),
             *variant, *overrides]
            for p in exp.parts for variant in p.override_sets(profile)]
    draw = [python, "-m", exp.figure, "--profile", profile]
    if results_dir:
        draw += ["--results-dir", results_dir]
    return [*runs, draw]


def schedule(name: str, profile: str = "quick", seeds: str | None = None, overrides: list[str] = (),
             results_dir: str | None = None, processes: int = 1, python: str = sys.executable
             ) -> tuple[list[list[list[str]]], list[str]]:
    """`commands` as `processes` processes side by side run them: (each process's run commands, in
    order; the figure's, after them all). With more than one, every process goes through the runs of
    every part that can be shared (`Part.shared`) with ``--skip-running`` (each takes the next run
    nobody has started, so each run is trained once; a run's bits do not depend on which process
    trains it), process i starting at the i-th command so that they begin on different parts; the
    first process alone runs a part that cannot be shared."""
    *runs, draw = commands(name, profile, seeds, overrides, results_dir, python)
    if processes <= 1 or not runs:
        return [runs], draw
    shared = [p.shared for p in experiment(name).parts for _ in p.override_sets(profile)]
    runs = [[*cmd, "--skip-running"] if ok else cmd for cmd, ok in zip(runs, shared)]
    chains = []
    for i in range(processes):
        rotated = [(runs[(i + j) % len(runs)], shared[(i + j) % len(runs)]) for j in range(len(runs))]
        chains.append([cmd for cmd, ok in rotated if ok or i == 0])
    return chains, draw


def _run_chain(chain: list[list[str]]) -> int:
    """Run `chain`'s commands one after another; the first non-zero exit code stops it (returned)."""
    for cmd in chain:
        print(f"+ {shlex.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            return code
    return 0


def run(name: str, profile: str = "quick", seeds: str | None = None, overrides: list[str] = (),
        results_dir: str | None = None, processes: int = 1) -> int:
    """Make figure `name` as `schedule` says: the processes' runs side by side, then the figure; 1 if
    any command failed (the figure is not drawn then)."""
    chains, draw = schedule(name, profile, seeds, overrides, results_dir, processes)
    with ThreadPoolExecutor(len(chains)) as pool:
        if any(pool.map(_run_chain, chains)):
            return 1
    return 1 if _run_chain([draw]) else 0


# ----------------------------------------------------------------------------- the import graph

def module_name(path: Path, root: Path) -> str:
    """experiments/core/runner.py -> experiments.core.runner (a package's __init__: the package)."""
    parts_ = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts_[:-1] if parts_[-1] == "__init__" else parts_)


def imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The absolute module names one import statement names, relative ones resolved against
    `package` (``from pkg import b``: pkg and pkg.b, since b may be a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth of its code (inside functions too), absolute names
    (relative imports resolved against `module`); ``importlib.import_module("literal")`` counts."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(imported_names(node, package))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = FIRST_PARTY
                 ) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (first-party arrows only)."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    return {module: {m for m in imports(path, module) if m in files and m != module}
            for module, path in files.items()}


def reachable(graph: dict[str, set[str]], start: str, stop: Collection[str] = ()) -> dict[str, list[str]]:
    """Modules reachable from `start`, each with one import chain; the search does not go through
    modules in `stop` (an arrow into one is reported, and its own imports are its own problem)."""
    chains, todo = {}, [[start]]
    while todo:
        chain = todo.pop()
        for nxt in sorted(graph.get(chain[-1], ())):
            if nxt not in chains and nxt != start:
                chains[nxt] = [*chain, nxt]
                if nxt not in stop:
                    todo.append(chains[nxt])
    return chains


def import_violations(root: Path = ROOT, entry_points: list[str] | None = None) -> list[str]:
    """Every broken import rule (see the module docstring), one line each naming the import chain."""
    graph = import_graph(root)
    modules = set(graph)
    entry = set(entry_points if entry_points is not None else (p.module for p in parts()))
    # Arrows inside experiments/ (one into figures/ is reported on its own, below).
    inside = {m: {t for t in ts if t.startswith("experiments")} for m, ts in graph.items()
              if m.startswith("experiments")}
    problems = []
    for module in sorted(inside):
        for other, chain in sorted(reachable(inside, module, entry).items()):
            if other in entry:
                problems.append(f"{module} imports the experiment {other} ({' -> '.join(chain)}): "
                                f"shared code belongs in a module of its own, experiments are found by "
                                f"name through experiments.core.registry")
    for module in sorted(modules):
        for target in sorted(graph[module]):
            if module.startswith("experiments") and target.startswith("figures"):
                problems.append(f"{module} imports {target}: experiments/ must not import figures/")
            if module.startswith("multirate") and not target.startswith("multirate"):
                problems.append(f"{module} imports {target}: the library imports only itself and torch")
    return problems


# ----------------------------------------------------------------------------- command line

def _listing() -> str:
    lines = []
    for exp in EXPERIMENTS.values():
        lines.append(f"{exp.name}: figure {exp.figure}, report {exp.report or '(generic)'}")
        for p in exp.parts:
            variants = "; ".join(f"{prof}: {' | '.join(' '.join(v) for v in sets)}"
                                 for prof, sets in p.variants.items())
            lines.append(f"  python -m {p.module}  (configs/{p.toml}{', ' + variants if variants else ''})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", help=f"one of {', '.join(EXPERIMENTS)}")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--commands", action="store_true", help="print the experiment's commands, one a line")
    action.add_argument("--run", action="store_true", help="run the experiment's commands in order")
    action.add_argument("--check-imports", action="store_true", help="check the import rules; 1 if broken")
    action.add_argument("--names", action="store_true", help="print the experiment names, one a line")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: each TOML's)")
    parser.add_argument("--results-dir", default=None, help="passed to the figure (runs: results_dir=...)")
    parser.add_argument("--processes", type=int, default=1,
                        help="with --run: processes side by side that share the runs (see `schedule`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    if args.check_imports:
        problems = import_violations()
        graph = import_graph()
        names = ", ".join(p.name for p in parts())
        print("\n".join(problems) if problems else
              f"import rules hold: {len(graph)} modules, {sum(map(len, graph.values()))} first-party "
              f"imports; nothing in experiments/ imports an experiment ({names}), "
              f"experiments/ imports nothing from figures/, multirate/ only itself")
        return 1 if problems else 0
    if args.names:
        print("\n".join(EXPERIMENTS))
        return 0
    if not args.experiment:
        if args.commands or args.run:
            parser.error("--commands and --run need an experiment")
        print(_listing())
        return 0
    if args.experiment not in EXPERIMENTS:
        parser.error(f"unknown experiment {args.experiment!r}: choose one of {', '.join(EXPERIMENTS)}")
    overrides = [*args.overrides, *([f"results_dir={args.results_dir}"] if args.results_dir else [])]
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: must be >= 1")
    if args.run:
        return run(args.experiment, args.profile, args.seeds, overrides, args.results_dir, args.processes)
    cmds = commands(args.experiment, args.profile, args.seeds, overrides, args.results_dir)
    print("\n".join(shlex.join(cmd) for cmd in cmds))
    return 0


if __name__ == "__main__":
    from experiments.core import errors

    errors.cli(main)

"""The experiments, one entry each: what produces a figure's runs, what draws it, what reports it.

    python -m experiments.registry                        # every experiment and its parts
    python -m experiments.registry patch --commands [--profile P] [--seeds 0,1,2] [key=value ...]
    python -m experiments.registry patch --run [--profile P] [--seeds 0,1,2] [key=value ...]
    python -m experiments.registry --check-imports        # the import-graph rules below; exit 1 if broken

An `Experiment` is one paper figure: its `Part` s (an entry point ``python -m <module>`` over every
method of its TOML file, once per override set of the profile: the transfer figure runs the ResNet
module once per torchvision model in the paper profile, and the DistilBERT module), the figure
script (``python -m <figure> --profile P --results-dir R``), and the report section (a function
``results/<profile> -> Markdown``; without one, `experiments.report` writes a generic table of the
final value of each judged metric per method). Everything that goes over "every experiment" reads
`EXPERIMENTS`: ``experiments.slurm`` (job arrays), ``experiments.report`` (the sections),
``experiments.ablations`` and ``experiments.sweep`` (an entry point by name: `entry_point`), the
Makefile (``--commands``/``--run``, and a test that its targets run what the registry says), and
the tests.

Adding an experiment: its module (a RunConfig subclass, ``TOML``, a ``runner.Task`` and ``main``),
its TOML file in ``experiments/configs/``, its figure script in ``figures/``, one `Experiment`
below, and its tests (``tests/test_registry.py`` adds a toy one at run time: the same five places).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"


@dataclass(frozen=True)
class Part:
    """``python -m <module>`` over every method of ``configs/<toml>``, once per override set of the
    profile (`variants`: profile -> override sets; a profile not named runs once, with none)."""

    module: str
    toml: str  # a file name in experiments/configs/ (or an absolute path)
    variants: dict[str, list[list[str]]] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # the final-epoch metrics it is judged by (ablation tables, report)

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
        (as `experiments.config.load_config` sets it)."""
        with open(self.toml_path, "rb") as f:
            return tomllib.load(f).get("experiment", self.toml_path.stem)

    def override_sets(self, profile: str) -> list[list[str]]:
        return [list(v) for v in self.variants.get(profile, [[]])]


@dataclass(frozen=True)
class Experiment:
    """One figure: the parts whose runs it draws, its figure module and its report section."""

    name: str
    parts: tuple[Part, ...]
    figure: str  # module: python -m <figure> --profile P --results-dir R
    report: str | None = None  # "module:function", function(results/<profile>) -> Markdown; None: generic
    title: str = ""  # the generic report section's heading

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"experiment {self.name!r}: needs at least one Part")


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("transfer", (
        Part("experiments.transfer", "transfer_resnet.toml",
             {"quick": [["model=small_resnet"]], "paper": [["model=resnet50"], ["model=resnet34"]]},
             metrics=("test_accuracy",)),
        Part("experiments.transfer_text", "transfer_distilbert.toml", metrics=("test_accuracy",))),
        "figures.transfer", "experiments.report:transfer_section", "Transfer learning"),
    Experiment("patch", (
        Part("experiments.patch", "patch.toml",
             metrics=("clean_accuracy", "patched_accuracy", "patch_only_accuracy")),),
        "figures.patch", "experiments.report:patch_section", "Patch-augmented data"),
    Experiment("regularization", (
        Part("experiments.regularization_mlp", "regularization_mlp.toml", metrics=("test_accuracy",)),
        Part("experiments.regularization_lm", "regularization_lm.toml", metrics=("val_loss",))),
        "figures.regularization", "experiments.report:regularization_section", "Regularisation"),
    Experiment("convergence", (Part("experiments.convergence", "convergence.toml"),),
               "figures.convergence", "experiments.report:convergence_section", "Convergence check"),
)}


# ----------------------------------------------------------------------------- lookups

def experiment(name: str) -> Experiment:
    """The registered experiment `name`; an unknown name is a ValueError listing the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: experiments/registry.py has {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def parts() -> list[Part]:
    """Every registered entry point, in registry order."""
    return [p for e in EXPERIMENTS.values() for p in e.parts]


def part(name: str) -> Part:
    """The registered part whose module is `name` or ``experiments.<name>``."""
    for p in parts():
        if name in (p.name, p.module):
            return p
    raise ValueError(f"unknown experiment entry point {name!r}: experiments/registry.py has "
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


def resolve(target: str) -> Callable:
    """The function named by ``"module:function"``."""
    module, sep, attr = target.partition(":")
    if not sep:
        raise ValueError(f"{target!r} is not of the form module:function")
    return getattr(importlib.import_module(module), attr)


def commands(name: str, profile: str = "quick", seeds: str | None = None, overrides: list[str] = (),
             results_dir: str | None = None, python: str = sys.executable) -> list[list[str]]:
    """The command lines that make figure `name`: each part once per override set of the profile
    (every method, the given seeds), then the figure. As the Makefile runs them."""
    exp = experiment(name)
    selection = ["--profile", profile, *(["--seeds", seeds] if seeds else [])]
    runs = [[python, "-m", p.module, *selection, *variant, *overrides]
            for p in exp.parts for variant in p.override_sets(profile)]
    draw = [python, "-m", exp.figure, "--profile", profile]
    if results_dir:
        draw += ["--results-dir", results_dir]
    return [*runs, draw]


# ----------------------------------------------------------------------------- the import graph

def _module_name(path: Path, root: Path) -> str:
    parts_ = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts_[:-1] if parts_[-1] == "__init__" else parts_)


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth of its code (inside functions too), absolute names
    (relative imports resolved against `module`); ``importlib.import_module("literal")`` counts."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = ("experiments", "figures", "multirate")
                 ) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (first-party arrows only)."""
    files = {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    return {module: {m for m in imports(path, module) if m in files and m != module}
            for module, path in files.items()}


def _closure(graph: dict[str, set[str]], start: str, stop: set[str]) -> dict[str, list[str]]:
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
        for other, chain in sorted(_closure(inside, module, entry).items()):
            if other in entry:
                problems.append(f"{module} imports the experiment {other} ({' -> '.join(chain)}): "
                                f"shared code belongs in a module of its own, experiments are found by "
                                f"name through experiments.registry")
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
    cmds = commands(args.experiment, args.profile, args.seeds, overrides, args.results_dir)
    if args.run:
        for cmd in cmds:
            print(f"+ {shlex.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode:
                return 1
        return 0
    print("\n".join(shlex.join(cmd) for cmd in cmds))
    return 0


if __name__ == "__main__":
    from experiments import errors

    errors.cli(main)

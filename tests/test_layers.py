"""The layers of the code and the rules between them, read from the import statements.

Every module of ``experiments/`` belongs to one layer (`LAYERS`; a new module must be added to one):

- core: the runner and its infrastructure (configs, the training loop, checkpoints, result files,
  run logs, tracking, preemption, device options, determinism, errors, the registry, Slurm);
- datasets: the real data sets' loaders, the generated data and the pretraining of the transfer
  experiments' source networks (and its cache);
- reporting: the report, the README tables, the committed reference, the paper's claims and what
  they leave out;
- benchmarks: the speed-up measurements and the cost plan;
- experiments: the entry points of the figures and the drivers that run them (ablations, sweeps, the
  tuning protocol).

The rules (module-level imports and imports inside functions alike, so that no import can hide a
rule by being made late):

- no import cycle anywhere in ``experiments/``, ``figures/``, ``multirate/`` (``benchmarks/``);
- an import inside a function is of an optional or slow dependency (`LAZY_DEPENDENCIES`) or says
  why on its line or the line above; never to hide a cycle, which the first rule would find anyway;
- core imports only core (and ``multirate``): no entry point, no driver, no reporting module, no
  data set, no benchmark;
- datasets import only core and datasets;
- reporting imports no runner internals: no reporting module reaches the training loop
  (``experiments.core.runner``), its checkpoints (``experiments.core.checkpoint``) or its signal handling
  (``experiments.core.preemption``) through any chain of imports, and none imports a private name
  (``_name``) from outside reporting. Reporting reads what runs wrote (``experiments.core.runlog``'s
  readers, the reference files), the configs and the registry, and the ablations' and the protocol's
  definitions;
- nothing under ``experiments/`` imports ``figures/`` (figures read results; see also
  ``experiments.core.registry.import_violations``, which checks that no experiment imports another);
- ``multirate/`` imports only the standard library, torch and itself; an integration
  (``multirate/integrations/<name>.py``) also its own framework.
"""

import ast
import sys
from pathlib import Path

import pytest

from experiments.core.registry import imported_names, module_name, reachable

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tuple(p for p in ("experiments", "figures", "multirate", "benchmarks") if (ROOT / p).is_dir())

# A layer is a folder: its modules are the .py files in it (experiments/: the entry points).
FOLDERS = {"core": "experiments/core", "datasets": "experiments/datasets",
           "reporting": "experiments/reporting", "benchmarks": "benchmarks", "experiments": "experiments"}
LAYERS = {layer: {".".join([*folder.split("/"), p.stem]) for p in (ROOT / folder).glob("*.py")
                  if p.stem != "__init__"} for layer, folder in FOLDERS.items()}
# Imported inside the functions that need them, everywhere: optional, or slow to import and needed by
# a few runs only. Any other import inside a function says why on its line or the line above.
LAZY_DEPENDENCIES = {
    "transformers": "seconds to import; only the DistilBERT runs and measurements need it",
    "torchvision": "only the ImageNet ResNets (and the Lightning measurement's ResNet-18) need it",
    "datasets": "optional: only SST-2 from the Hugging Face hub needs it",
    "huggingface_hub": "optional, with datasets",
    "wandb": "optional: a run without it logs to its CSV only",
    "yaml": "optional: only the W&B sweep export needs it",
    "lightning": "optional: only the Lightning integration's measurement needs it",
}
RUNNER_INTERNALS = ("experiments.core.runner", "experiments.core.checkpoint", "experiments.core.preemption")
INTEGRATION_FRAMEWORKS = {"huggingface": {"transformers", "accelerate"}, "lightning": {"lightning"}}


# ----------------------------------------------------------------------------- reading the imports

def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imports(path: Path, module: str) -> list[tuple[str, ast.AST, bool]]:
    """(imported name, the import statement, whether it is inside a function) for each import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = imported_names(child, package)
                found.extend((name, child, inside) for name in names)
            visit(child, inside)

    visit(tree, False)
    return found


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the first-party modules it imports, at any depth of its code. A module's own
    packages are left out: they are initialised before it (``from multirate import masks`` in
    multirate/optimizer.py is an arrow to multirate.masks only)."""
    files = modules(root, packages)
    return {m: {name for name, _, _ in imports(path, m)
                if name in files and name != m and not m.startswith(name + ".")}
            for m, path in files.items()}


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle the depth-first search meets, as a closed path of modules ([] if there is none)."""
    state, found = {}, []  # module -> "open" while on the search's path, "done" after

    def visit(module, path):
        state[module] = "open"
        path.append(module)
        for nxt in sorted(arrows.get(module, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[module] = "done"

    for module in sorted(arrows):
        if module not in state:
            visit(module, [])
    return found


def layer_of(module: str) -> str | None:
    return next((name for name, members in LAYERS.items() if module in members), None)


# ----------------------------------------------------------------------------- the rules

def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_lazy_import_says_why():
    unexplained = []
    for module, path in modules().items():
        lines = path.read_text().splitlines()
        for name, node, in_function in imports(path, module):
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if in_function and not said and name.split(".")[0] not in LAZY_DEPENDENCIES:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert sorted(set(unexplained)) == []


def test_every_module_of_experiments_has_a_layer():
    unplaced = [m for m, path in modules().items()
                if m.startswith("experiments.") and path.name != "__init__.py" and layer_of(m) is None]
    assert unplaced == [], "add each to a layer in tests/test_layers.py (LAYERS)"


@pytest.mark.parametrize("layer, allowed", [("core", {"core"}), ("datasets", {"core", "datasets"})])
def test_a_lower_layer_imports_nothing_above_it(layer, allowed):
    arrows, files = graph(), modules()
    wrong = [f"{m} -> {t} ({layer_of(t)})" for m in sorted(LAYERS[layer]) for t in sorted(arrows.get(m, ()))
             if t.startswith(("experiments.", "figures", "benchmarks")) and layer_of(t) not in allowed
             and files[t].name != "__init__.py"]  # a package's __init__ is in no layer
    assert wrong == []


def test_reporting_imports_no_runner_internals():
    arrows = graph()
    reached = [" -> ".join(chain) for m in sorted(LAYERS["reporting"])
               for target, chain in sorted(reachable(arrows, m).items()) if target in RUNNER_INTERNALS]
    assert reached == []
    private = []
    for m in sorted(LAYERS["reporting"]):
        for _, node, _ in imports(modules()[m], m):
            if isinstance(node, ast.ImportFrom) and layer_of(node.module or "") != "reporting":
                private += [f"{m}: from {node.module} import {a.name}"
                            for a in node.names if a.name.startswith("_")]
    assert private == []


def test_experiments_import_nothing_from_figures():
    arrows = graph()
    assert [f"{m} -> {t}" for m in sorted(arrows) if m.startswith("experiments")
            for t in sorted(arrows[m]) if t.startswith("figures")] == []


def test_multirate_imports_only_torch_and_itself():
    wrong = []
    for module, path in modules(packages=("multirate",)).items():
        integration = module.rpartition(".")[2] if ".integrations." in module else None
        own = INTEGRATION_FRAMEWORKS.get(integration, set())
        for name, node, _ in imports(path, module):
            top = name.split(".")[0]
            if top not in {"torch", "multirate", "__future__", *sys.stdlib_module_names, *own}:
                wrong.append(f"{module}:{node.lineno} {name}")
    assert wrong == []


# ----------------------------------------------------------------------------- the checks can fail

def test_the_checks_see_a_hidden_cycle_and_an_unexplained_lazy_import(tmp_path):
    files = {"experiments/__init__.py": "", "experiments/a.py": "from experiments import b\n",
             "experiments/b.py": "def f():\n    from experiments import a\n\n    return a\n",
             "experiments/c.py": "def f():\n    import yaml  # optional: only the sweep export needs it\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    arrows = graph(tmp_path, ("experiments",))
    assert cycles(arrows) == [["experiments.a", "experiments.b", "experiments.a"]]
    lazy = [(m, name) for m, path in modules(tmp_path, ("experiments",)).items()
            for name, _, inside in imports(path, m) if inside]
    assert ("experiments.b", "experiments.a") in lazy and ("experiments.c", "yaml") in lazy
    assert reachable(arrows, "experiments.b") == {"experiments.a": ["experiments.b", "experiments.a"]}

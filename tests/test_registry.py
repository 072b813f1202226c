"""The experiment registry (experiments.core.registry): its entries, the Makefile against it, the import
rules, and a toy fourth experiment added in the places an experiment needs, which gets a claims row,
README tables, a cost-plan entry, an ablation and report sections from its registry entry alone."""

import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import plan
from experiments import ablations, sweep
from experiments.core import registry, slurm
from experiments.core.config import experiment_config, list_methods, load_config
from experiments.reporting import claims, readme_tables, reference, report
from tests.helpers import write_toy_experiment

ROOT = Path(__file__).resolve().parents[1]


def _file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


# ----------------------------------------------------------------------------- the entries

@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_every_entry_names_modules_files_and_functions_that_exist(name):
    exp = registry.EXPERIMENTS[name]
    assert _file(exp.figure).exists()
    assert callable(registry.resolve(exp.report)) if exp.report else True
    for part in exp.parts:
        module = registry.entry_point(part.name)
        assert module.__name__ == part.module and callable(module.main)
        config_cls, toml = experiment_config(module)
        assert toml == part.toml_path  # the module's TOML is the registry's
        assert set(part.methods) <= set(list_methods(toml))  # the figure's methods are the TOML's
        method = (list_methods(toml) or ["all"])[0]
        cfg = load_config(config_cls, toml, "quick", method)
        assert cfg.experiment == part.results_folder  # results/<profile>/<folder>/ as the registry says


def test_lookups_and_their_errors():
    assert registry.part("transfer").module == "experiments.transfer"
    assert registry.part("experiments.regularization_lm").name == "regularization_lm"
    assert registry.part("patch").metrics == ("clean_accuracy", "patched_accuracy", "patch_only_accuracy")
    with pytest.raises(ValueError, match="unknown experiment entry point 'nope'.*'transfer'"):
        registry.part("nope")
    with pytest.raises(ValueError, match="unknown experiment 'nope'.*'convergence'"):
        registry.experiment("nope")
    for missing in ("no_such_module_xyz", "experiments.no_such_module", "no_such_package.module"):
        with pytest.raises(ValueError, match=f"unknown experiment entry point '{missing}'"):
            registry.entry_point(missing)
    assert registry.entry_point("json").__name__ == "json"  # any importable module: one's own experiment


def test_commands_are_the_makefiles():
    py = sys.executable
    assert registry.commands("transfer", "paper", "0,1,2") == [
        [py, "-m", "experiments.transfer", "--profile", "paper", "--seeds", "0,1,2", "model=resnet50"],
        [py, "-m", "experiments.transfer", "--profile", "paper", "--seeds", "0,1,2", "model=resnet34"],
        [py, "-m", "experiments.transfer_text", "--profile", "paper", "--seeds", "0,1,2"],
        [py, "-m", "figures.transfer", "--profile", "paper"]]
    draw = [py, "-m", "figures.patch", "--profile", "quick", "--results-dir", "r"]
    assert registry.commands("patch", results_dir="r")[-1] == draw


def _make_targets() -> dict[str, str]:
    """Makefile target -> its recipe (the tab-indented lines under it)."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([a-z][\w-]*):", line)
        if match:
            current = match[1]
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line + "\n"
        elif not line.strip() or re.match(r"^(#|ifeq|ifneq|ifdef|ifndef|else|endif\b)", line):
            continue  # conditionals and make comments inside a recipe
        else:
            current = None
    return targets


@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_makefile_target_runs_what_the_registry_says(name):
    """`make fig-<name>` runs every part of the entry and draws its figure: through the registry (the
    `fig-%` rule) unless a target of its own names the modules."""
    targets = _make_targets()
    exp = registry.EXPERIMENTS[name]
    if f"fig-{name}" in targets:
        recipe = targets[f"fig-{name}"]
        assert set(re.findall(r"-m (experiments\.\w+)", recipe)) == {p.module for p in exp.parts}
        assert set(re.findall(r"-m (figures\.\w+)", recipe)) == {exp.figure}
    else:
        rule = re.search(r"^fig-%:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
        assert rule and "-m experiments.core.registry $* --run" in rule[1]


def test_schedule_shares_the_runs_between_processes_side_by_side():
    """Two processes go through every shared run command with --skip-running, each starting on
    another part (so together they run every run, none twice); one process runs them as they are."""
    py = sys.executable
    chains, draw = registry.schedule("transfer", "quick", "0", processes=2)
    resnet = [py, "-m", "experiments.transfer", "--profile", "quick", "--seeds", "0", "model=small_resnet",
              "--skip-running"]
    text = [py, "-m", "experiments.transfer_text", "--profile", "quick", "--seeds", "0", "--skip-running"]
    assert chains == [[resnet, text], [text, resnet]] and draw[2] == "figures.transfer"
    (patch,), (patch_too,) = registry.schedule("patch", "cpu", processes=2)[0]
    assert patch == patch_too and "--method" in patch and "--skip-running" in patch
    assert patch[patch.index("--method") + 1] == "small_lr,large_lr,multirate_early,multirate"
    assert registry.schedule("convergence", processes=2)[0][1] == []  # one run: the first process's
    assert registry.schedule("transfer", "paper")[0] == [registry.commands("transfer", "paper")[:-1]]


def _make_variables() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+) := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M))


def test_makefile_method_lists_name_real_methods_and_side_by_side_processes_share_every_run():
    """A `--method` list in a recipe names methods of that module's TOML; where a figure's recipe
    starts two processes side by side, each runs the same runs of a module with --skip-running, so
    together they run every one (each takes the next run nobody has started) and none twice."""
    import importlib

    variables = _make_variables()
    assert "PATCH_PARTITIONS" in variables
    for target, recipe in _make_targets().items():
        recipe = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m[1], m[0]), recipe)
        commands = re.findall(r"-m (experiments\.\w+)([^;&|\n]*)", recipe)
        for module, args in commands:
            names = re.search(r"--method (\S+)", args)
            if names:
                known = list_methods(importlib.import_module(module).TOML)
                assert set(names[1].split(",")) <= set(known), f"make {target}: {names[1]} not all in {known}"
        if target != "patch-partitions":
            continue  # ablations splits its grids itself (--only); the figures' runs: `schedule`
        by_module = {}
        for module, args in commands:
            assert "--skip-running" in args, f"make {target}: {module} beside another, no --skip-running"
            by_module.setdefault(module, set()).add(args.strip())
        assert all(len(a) == 1 for a in by_module.values()), f"make {target}: processes given other runs"
        assert all(n == 2 for n in Counter(m for m, _ in commands).values()), f"make {target}: not shared"


def test_command_line_lists_prints_and_checks(capsys):
    assert registry.main([]) == 0
    assert "python -m experiments.transfer_text" in capsys.readouterr().out
    assert registry.main(["--names"]) == 0
    assert capsys.readouterr().out.split() == list(registry.EXPERIMENTS)
    assert registry.main(["convergence", "--commands", "--seeds", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "-m experiments.convergence --profile quick --seeds 0")
    assert registry.main(["--check-imports"]) == 0
    assert "import rules hold" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        registry.main(["nope", "--commands"])
    assert "unknown experiment 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the import rules

def test_the_import_rules_hold():
    assert registry.import_violations() == []


def test_the_import_check_finds_each_kind_of_violation(tmp_path):
    files = {
        "experiments/__init__.py": "",
        "experiments/alpha.py": "from experiments.helper import thing\n",  # alpha -> helper -> beta
        "experiments/helper.py": "def thing():\n    from experiments import beta\n",
        "experiments/beta.py": "import experiments.shared\n",
        "experiments/shared.py": "import torch\n",
        "experiments/driver.py": "import importlib\nimportlib.import_module('experiments.beta')\n",
        "experiments/reporting/report.py": "def f():\n    from figures.table import rows\n",
        "figures/__init__.py": "",
        "figures/table.py": "from experiments import alpha\n",  # figures may import experiments
        "multirate/__init__.py": "from .core import x\n",
        "multirate/core.py": "from experiments.shared import y\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = registry.import_violations(tmp_path, ["experiments.alpha", "experiments.beta"])
    assert [p.split(":")[0] for p in problems] == [
        "experiments.alpha imports the experiment experiments.beta (experiments.alpha -> experiments.helper "
        "-> experiments.beta)",
        "experiments.driver imports the experiment experiments.beta (experiments.driver -> experiments.beta)",
        "experiments.helper imports the experiment experiments.beta (experiments.helper -> experiments.beta)",
        "experiments.reporting.report imports figures.table",
        "multirate.core imports experiments.shared"]


def test_the_import_check_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "experiments.core.registry", "--check-imports"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("import rules hold")


# ----------------------------------------------------------------------------- a toy fourth experiment

TOY_TOML = '''
experiment = "toy"
epochs = 2
batch_size = 16
wandb = "disabled"
device = "cpu"
checkpoint = false
[methods.sgd]
optimizer = "sgd"
lr = 0.05
[methods.multirate]
optimizer = "multirate"
lr = 0.05
k = 2
fast = ["fc"]
'''

TOY_FIGURE = '''
"""The toy experiment's figure: final test loss per method."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.core.runlog import last_epoch, read_results  # noqa: E402
from figures import results_root, save  # noqa: E402


def main(argv=None):
    root = results_root(__doc__, argv)
    final = last_epoch(read_results(root / "toy", only_complete=True))
    table = final.groupby("method", as_index=False).value.mean()
    fig, ax = plt.subplots()
    ax.bar(table.method, table.value)
    return save(fig, table, root, "toy")


if __name__ == "__main__":
    main()
'''


TOY_PAPER = {"toy": {"sgd": {"test_loss": 0.30}, "multirate": {"test_loss": 0.25}}}  # made-up numbers


def toy_entry(code: Path) -> registry.Experiment:
    """The toy's registry entry, which carries everything the drivers need: its part, figure, paper
    numbers, a claim, an ablation; no tables and no report section of its own (the generic ones)."""
    paper = TOY_PAPER["toy"]
    claim = claims.Claim("Toy: multirate fits as well as SGD", "Multirate − SGD, final test loss",
                         paper["multirate"]["test_loss"] - paper["sgd"]["test_loss"],
                         claims.margin("toy", "test_loss", "multirate", "sgd"), claims.Rule("<=", 0.1, 1.0))
    return registry.Experiment(
        "toy", (registry.Part("toy_exp", str(code / "toy_exp.toml"), metrics=("test_loss",)),), "toy_figure",
        title="Toy", paper=TOY_PAPER, claims=[claim],
        ablations={"toy_k": [ablations.Variant("k=3", "toy_exp", "multirate", ("k=3",))]})


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The places of a new experiment: module, TOML, figure script, registry entry, tests (this one).
    Written to tmp_path and registered at run time; in the repository they are experiments/toy_exp.py,
    experiments/configs/toy_exp.toml, figures/toy.py and one Experiment in experiments/core/registry.py."""
    code = tmp_path / "code"
    code.mkdir()
    write_toy_experiment(code, "toy_exp", TOY_TOML)
    (code / "toy_figure.py").write_text(textwrap.dedent(TOY_FIGURE))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", toy_entry(code))
    yield tmp_path / "results"
    for name in ("toy_exp", "toy_figure"):
        sys.modules.pop(name, None)


def test_a_toy_fourth_experiment_is_run_drawn_reported_submitted_ablated_and_swept(toy):
    results = toy
    # Its commands (what `make fig-toy` would run through `python -m experiments.core.registry toy --run`),
    # here in this process: the runs, then the figure.
    *runs, draw = registry.commands("toy", "quick", "0,1", [f"results_dir={results}"], str(results))
    assert [cmd[2] for cmd in runs] == ["toy_exp"] and draw[2] == "toy_figure"
    for cmd in runs:
        assert [r["status"] for r in registry.entry_point(cmd[2]).main(cmd[3:])] == ["complete"] * 4
    figures = registry.entry_point(draw[2]).main(draw[3:])
    assert (figures / "toy.png").exists()
    assert set(pd.read_csv(figures / "toy.csv").method) == {"sgd", "multirate"}

    # Slurm: one array task per method x seed, and the figure job.
    tasks = slurm.array_tasks("toy", "quick", [0, 1])
    assert len(tasks) == 4
    assert tasks[0] == ["toy_exp", "--profile", "quick", "--method", "sgd", "--seeds", "0"]
    assert "-m toy_figure --profile quick" in slurm.figure_script("toy", "quick", "r", "job", results)

    # Its ablation (from its entry), and the ablation's table.
    assert [r["status"] for r in ablations.run_ablation("toy_k", "quick", [0], results)] == ["complete"]
    final = ablations.final_rows("toy_k", results, "quick")
    assert list(final.metric) == ["test_loss"] and list(final.k) == [3]

    # The report: a generic section, as the entry names no section of its own; its ablation's section.
    text = report.report(results, "quick")
    assert "## Toy" in text and "### toy_exp: final-epoch values" in text
    assert re.search(r"\| multirate \| test_loss \| 2 \| \d+\.\d\d ± \d+\.\d\d \| ", text)
    assert "![toy](figures/toy.png)" in text
    assert "## Ablations: toy_k (no paper numbers)" in text

    # Its claim: a row of the claims table (the paper value from its entry's numbers), with a verdict.
    runs = readme_tables.Runs(reference.collect(results, "quick"))
    row = next(line for line in claims.table({"quick": runs}).splitlines() if line.startswith("| Toy"))
    assert "| -0.05 | " in row
    assert re.search(r"\(2 seeds\): (reproduced|in direction only|not reproduced)", row)

    # README/docs tables: a generic block under its name, and its ablation's block.
    page = "".join(f"<!-- reference:{name} -->\n<!-- /reference -->\n" for name in ("toy", "ablation-toy_k"))
    rendered = readme_tables.render(page, runs)
    assert re.search(r"\| toy_exp \| multirate \| test loss \| \d+\.\d\d ± \d+\.\d\d \| 2 \|", rendered)
    assert "| k=3 | " in rendered

    # The cost plan: a planned entry point, timed.
    assert ("toy_exp", []) in plan.plan_targets("all", "quick")
    (timed,) = plan.main(["toy_exp", "--profile", "quick", "steps=1", f"results_dir={results}"])
    assert [m["method"] for m in timed["methods"]] == ["sgd", "multirate"]
    assert all(m["s_per_step"] > 0 for m in timed["methods"])

    # A sweep over it.
    swept = sweep.Sweep(module="toy_exp", method="multirate", parameters={"k": {"values": [1, 4]}})
    assert [cfgs[0].k for _, cfgs in sweep.configs(swept)] == [1, 4]


@pytest.mark.slow  # three child processes (~30 s on 2 loaded cores); `schedule` is tested fast above
def test_two_processes_share_the_toy_runs_then_draw(toy, monkeypatch, tmp_path):
    """`make fig-<name>` as `registry.run` does it: two processes side by side train every run once
    between them (--skip-running), then the figure is drawn."""
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'code'}:{ROOT}")
    results = toy
    assert registry.run("toy", "quick", "0", [f"results_dir={results}"], str(results), processes=2) == 0
    runs = sorted(p.stem for p in (results / "quick" / "toy").glob("*.json"))
    assert [name.split("-")[0] for name in runs] == ["multirate", "sgd"]  # each once
    assert (results / "quick" / "figures" / "toy.png").exists()


def test_no_test_file_imports_another():
    """Shared test helpers live in tests/helpers.py (and fixtures in tests/conftest.py)."""
    not_moved_yet = {("test_patch", "test_data"), ("test_regularization", "test_data"),
                     ("test_transfer", "test_data"), ("test_tracking", "test_runlog")}
    arrows = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for module in registry.imports(path, f"tests.{path.stem}"):
            name = module.rpartition(".")[2]
            if name.startswith("test_") and name != path.stem:
                arrows.add((path.stem, name))
    assert arrows == not_moved_yet

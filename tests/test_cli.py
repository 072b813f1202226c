"""`--help` of the experiment entry points: their methods (one line each, from the TOML) and every
config key with its default."""

import dataclasses
import importlib
import subprocess
import sys

import pytest

from experiments import patch, transfer_text
from experiments.core.config import experiment_config, method_descriptions, parse_cli

TOML = '''# A toy experiment: one line that --help shows first.
epochs = 5

[quick]
epochs = 2

# The baseline: plain SGD.
[methods.sgd]

[methods.multirate]  # two step sizes
optimizer = "multirate"
k = 5

# Fast part = the head,
# slow part = the rest.
[methods."layer4+fc"]
train = ["layer4", "fc"]

[methods.plain]
lr = 0.3
fast = ["fc", "bn"]
'''


def test_method_descriptions_come_from_the_comments_above_or_beside(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOML)
    assert method_descriptions(path) == {
        "sgd": "The baseline: plain SGD.",
        "multirate": "two step sizes",
        "layer4+fc": "Fast part = the head, slow part = the rest.",
        "plain": "lr=0.3 fast=fc,bn",  # no comment: its settings
    }


def help_text(capsys, *args) -> str:
    with pytest.raises(SystemExit) as stop:
        parse_cli(["--help"], *args)
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_help_lists_methods_and_every_config_key_with_its_default(tmp_path, capsys):
    path = tmp_path / "toy.toml"
    path.write_text(TOML)
    text = help_text(capsys, patch.PatchConfig, path)
    assert "A toy experiment: one line that --help shows first." in text
    lines = text.splitlines()
    assert "  sgd        The baseline: plain SGD." in lines
    assert "  layer4+fc  Fast part = the head, slow part = the rest." in lines
    keys = {line.split()[0]: line.split(None, 1)[1] for line in lines[lines.index(
        "config keys (key=value overrides any; default, then the profiles that change it):") + 1:]}
    fields = {f.name for f in dataclasses.fields(patch.PatchConfig)} - {"profile", "method"}
    assert set(keys) == fields
    assert keys["epochs"] == "5  (quick: 2)" and keys["experiment"] == "toy"  # TOML, then its profiles
    assert keys["zeta_range"] == "0.1" and keys["train"] == "all" and keys["variant"] == '""'  # defaults


def test_help_of_an_entry_point_run_as_a_module(capsys):
    # `python -m experiments.X --help`: parse_cli finds the experiment through __main__.
    out = subprocess.run([sys.executable, "-m", "experiments.transfer_text", "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.startswith("usage: python -m experiments.transfer_text")
    for name, description in method_descriptions(transfer_text.TOML).items():
        assert f"  {name}" in out and description in out
    assert "  max_length " in out and "  pretrained " in out  # TextTransferConfig's own keys too


@pytest.mark.parametrize("name", ["transfer", "transfer_text", "patch", "regularization_lm",
                                  "regularization_mlp"])
def test_help_of_every_experiment_entry_point(name, capsys):
    module = importlib.import_module(f"experiments.{name}")
    config_cls, toml = experiment_config(module)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for method, description in method_descriptions(toml).items():
        assert any(line.split(None, 1) == [method, description] for line in lines), method
    start = lines.index("config keys (key=value overrides any; default, then the profiles that change it):")
    keys = [line.split()[0] for line in lines[start + 1:]]
    assert keys == [f.name for f in dataclasses.fields(config_cls) if f.name not in ("profile", "method")]


# Import name -> distribution, where they differ; and the imports the `experiments` extra need not
# provide: tomli (Python < 3.11 only), huggingface_hub (comes with transformers and datasets), and
# lightning, which benchmarks/integration_speedup.py benchmarks (the `lightning` extra).
DISTRIBUTIONS = {"yaml": "pyyaml"}
NOT_IN_THE_EXTRA = {"tomli", "huggingface_hub", "lightning"}


def test_the_experiments_extra_provides_every_third_party_import():
    import ast
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    provided = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
                for req in [*project["dependencies"], *project["optional-dependencies"]["experiments"]]}
    imported = set()
    for path in [*Path("experiments").glob("*.py"), *Path("figures").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"experiments", "figures", "multirate"}
    missing = {DISTRIBUTIONS.get(name, name) for name in third_party - NOT_IN_THE_EXTRA} - provided
    assert not missing, f"add {sorted(missing)} to pyproject's experiments extra"
    assert {"transformers", "datasets", "wandb", "matplotlib", "pandas", "torchvision"} <= provided

"""The README's structure: the sections it points to exist, and CI runs its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HEADINGS = re.findall(r"^#{2,3} (.+)$", README, flags=re.M)


def test_every_see_reference_names_a_heading():
    # A heading that starts with the quoted words: "On a cluster" -> "On a cluster: Slurm, ...".
    references = re.findall(r'see "([^"]+)"', README)
    assert references, "README.md has no see \"...\" references: the pattern is out of date"
    missing = [r for r in references if not any(h.startswith(r) for h in HEADINGS)]
    assert not missing, f"README.md refers to sections it does not have: {missing}"


def test_ci_runs_the_readmes_setup_and_test_commands():
    section = README.split("## Install and test", 1)
    assert len(section) == 2, "README.md has no '## Install and test' section"
    block = re.search(r"```bash\n(.*?)```", section[1], flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make setup", "make test"], commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line in commands] == commands[:2]


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*[a-z])[ `]", README))
    assert named, "README.md names no make targets: the pattern is out of date"
    assert not named - targets, f"README.md names make targets the Makefile lacks: {sorted(named - targets)}"

"""README.md and the docs/ pages: what they point to exists (sections, files, make targets, modules),
their tables equal the committed reference, and CI runs the README's test command."""

import importlib.util
import re
from pathlib import Path

import pytest

from experiments.core import registry
from experiments.reporting import readme_tables, reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = readme_tables.pages(ROOT)
TEXT = {page: page.read_text() for page in PAGES}


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def headings(text: str) -> list[str]:
    return re.findall(r"^#{1,3} (.+)$", strip_code(text), flags=re.M)


def strip_code(text: str) -> str:
    """`text` without its fenced code blocks (a ``# comment`` there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 300, "README.md: keep it to 300 lines; move reference text to docs/"


def test_every_see_reference_names_a_heading():
    # A heading that starts with the quoted words: "Freed host memory" -> "Freed host memory", in the
    # page itself or in another page.
    everywhere = [h for text in TEXT.values() for h in headings(text)]
    missing = []
    for page, text in TEXT.items():
        for ref in re.findall(r'see "([^"]+)"', text):
            if not any(h.startswith(ref) for h in headings(text) + everywhere):
                missing.append(f"{name(page)}: {ref}")
    assert not missing, f"pages refer to sections that do not exist: {missing}"


def test_every_link_to_a_file_or_section_exists():
    links = 0
    broken = []
    for page, text in TEXT.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            links += 1
            file, _, section = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{name(page)}: {target} (no such file)")
            elif section and path.suffix == ".md" and section not in map(anchor, headings(path.read_text())):
                broken.append(f"{name(page)}: {target} (no such heading)")
    assert links, "no links found: the pattern is out of date"
    assert not broken, f"broken links: {broken}"


def test_the_readme_links_every_docs_page():
    pages = {name(p) for p in PAGES if p.parent != ROOT}
    pages |= {name(p) for p in (ROOT / "docs").glob("*.md")}  # also pages another change adds
    assert not {p for p in pages if f"]({p})" not in README}, "README.md should link every docs page"


def test_ci_runs_the_readmes_setup_and_test_commands():
    section = README.split("## Install and test", 1)
    assert len(section) == 2, "README.md has no '## Install and test' section"
    block = re.search(r"```bash\n(.*?)```", section[1], flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make setup", "make test"], commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line in commands] == commands[:2]


def test_every_make_target_the_pages_name_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    # A pattern rule (fig-%, slurm-%) makes one target per registered experiment.
    targets |= {f"{prefix}{name}" for prefix in re.findall(r"^([a-z][a-z-]*-)%:", makefile, flags=re.M)
                for name in registry.EXPERIMENTS}
    named = {(name(page), target) for page, text in TEXT.items()
             for target in re.findall(r"\bmake ([a-z][a-z-]*[a-z])(?=[ `\n]|$)", text, flags=re.M)}
    assert any(page == "README.md" for page, _ in named), "README.md names no make targets: out of date?"
    assert any(page != "README.md" for page, _ in named), "docs/ names no make targets: out of date?"
    missing = sorted((page, t) for page, t in named if t not in targets)
    assert not missing, f"pages name make targets the Makefile lacks: {missing}"


def test_every_python_module_the_pages_run_exists():
    named = {(name(page), module) for page, text in TEXT.items()
             for module in re.findall(r"(?:python|torchrun)[^\n`]*? -m ([\w.]+)", text)}
    assert len(named) > 10, "the pages run almost no modules: the pattern is out of date"
    named = {(page, m) for page, m in named if not m.endswith(".")}  # "experiments.<name>": a placeholder
    missing = sorted((page, m) for page, m in named if importlib.util.find_spec(m) is None)
    assert not missing, f"pages run modules that do not exist: {missing}"


def test_no_page_speaks_of_the_projects_working_periods():
    pattern = re.compile(r"\bsessions?\b|\breviewer|since the previous version|tried later", re.I)
    found = [f"{name(page)}: {line.strip()}" for page, text in TEXT.items()
             for line in text.splitlines() if pattern.search(line)]
    assert not found, found


def test_every_pages_tables_equal_the_reference():
    runs = readme_tables.Runs(reference.read(reference.path("quick")))
    stale = [name(page) for page, text in TEXT.items()
             if readme_tables.render(text, runs, page=name(page)) != text]
    assert not stale, (f"tables differ from the reference in {stale}: `python -m "
                       f"experiments.reporting.readme_tables`")


def test_every_registered_table_is_shown_on_a_page():
    shown = readme_tables.shown(ROOT)
    names = {n.removesuffix(suffix) for n in shown for suffix in ("", *readme_tables.PROFILE_SUFFIXES)}
    assert not [b for b in readme_tables.blocks() if b not in names], "a registered table appears on no page"
    assert "claims" in shown and shown["claims"] == [ROOT / "README.md"]


def test_readme_command_rewrites_a_table_in_a_docs_page(tmp_path, capsys):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "README.md").write_text("no tables\n")
    page = tmp_path / "docs" / "sub" / "page.md"
    page.write_text("# A page\n\n<!-- reference:convergence -->\nold\n<!-- /reference -->\n")
    assert readme_tables.main(check_only=True, root=tmp_path) == 1
    assert "docs/sub/page.md" in capsys.readouterr().out
    assert readme_tables.main(root=tmp_path) == 0
    assert "| sgd | 1 |" in page.read_text()
    assert readme_tables.main(check_only=True, root=tmp_path) == 0
    page.write_text("<!-- reference:nope -->\n<!-- /reference -->\n")
    with pytest.raises(ValueError, match="docs/sub/page.md: unknown reference block 'nope'"):
        readme_tables.main(root=tmp_path)

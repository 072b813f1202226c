"""No function longer than a screen: the longest ones are where a reader loses the thread."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80  # lines, from `def` to the last line of the body, docstring included
CHECKED = tuple(p for p in ("multirate", "experiments", "figures", "benchmarks") if (ROOT / p).is_dir())


def long_functions(folder: Path, limit: int) -> list[str]:
    """`path:line name (n lines)` for each function or method under `folder` longer than `limit`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    where = f"{path.relative_to(folder.parent)}:{node.lineno}"
                    found.append(f"{where} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("folder", CHECKED)
def test_no_function_over_the_limit(folder):
    assert long_functions(ROOT / folder, LIMIT) == []


def test_the_count_sees_a_long_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\nclass A:\n    def long(self):\n{body}\n")
    assert [f.split(" ", 1)[1] for f in long_functions(tmp_path, LIMIT)] == [f"long ({LIMIT + 1} lines)"]

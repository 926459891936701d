"""The shape of the source: no function in sirl longer than a screenful and a half (100 lines), so each one can be
read whole; a longer one is split into named pieces (the training loop reads sample -> verify -> credit ->
update -> log, each a call)."""

from __future__ import annotations

import ast
from pathlib import Path

import sirl

MAX_FUNCTION_LINES = 100


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines from ``def`` to the last line, ``path:line name``) of every function and method under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return found


def test_no_function_in_sirl_is_longer_than_100_lines():
    lengths = function_lengths(Path(sirl.__file__).parent)
    assert len(lengths) > 500  # the walk found the package's functions
    too_long = sorted((n, where) for n, where in lengths if n > MAX_FUNCTION_LINES)
    assert too_long == [], f"split these into named pieces: {too_long}"


def test_the_rule_counts_a_function_from_def_to_its_last_line(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # 100 body lines + the def: 101
    (package / "mod.py").write_text(f"def long():\n{body}\n\n\nclass A:\n    def short(self):\n        return 1\n")
    assert sorted(function_lengths(package)) == [(2, "pkg/mod.py:105 short"), (101, "pkg/mod.py:1 long")]

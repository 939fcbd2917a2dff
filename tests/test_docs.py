"""The reliability promises name tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_test_the_reliability_page_names_exists():
    page = (ROOT / "docs" / "reliability.md").read_text()
    named, last_file = [], None
    for file, name in re.findall(r"`(?:(tests/[\w/]+\.py)|…)::(test_\w+)", page):
        last_file = file or last_file  # "…::test_x" continues the file named before it
        named.append((last_file, name))
    assert len(named) > 30
    missing = []
    for file, name in named:
        tree = ast.parse((ROOT / file).read_text())
        if name not in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}:
            missing.append(f"{file}::{name}")
    assert missing == []

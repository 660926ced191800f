"""SECURITY.md's tables list every attack case in tests/security, and nothing that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent.parent / "SECURITY.md"


def attack_cases() -> set[str]:
    names: set[str] = set()
    for path in HERE.glob("test_attack_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def documented_cases() -> set[str]:
    return set(re.findall(r"^\| `(test_\w+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_every_attack_case_is_in_the_security_tables_and_only_those():
    cases = attack_cases()
    assert len(cases) >= 60
    assert cases - documented_cases() == set(), "add these to SECURITY.md"
    assert documented_cases() - cases == set(), "these are in SECURITY.md but no longer tested"


def test_every_attack_case_names_its_threat():
    for path in HERE.glob("test_attack_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert ast.get_docstring(node), f"{path.name}::{node.name} names no threat"

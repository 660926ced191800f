"""Runtime plug-ins never import each other; what they share lives in one private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agent.runtimes
from protocol.events import RuntimeKey

PACKAGE = Path(agent.runtimes.__file__).parent
PLUGINS = {f"agent.runtimes.{key.value}" for key in RuntimeKey}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from agent.runtimes import onnx` names the plug-in as an attribute
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("key", list(RuntimeKey))
def test_plugin_imports_no_other_plugin(key: RuntimeKey):
    imported = _imported_modules(PACKAGE / f"{key.value}.py")
    others = PLUGINS - {f"agent.runtimes.{key.value}"}
    assert imported & others == set()
    # nothing private of another module either: only the shared module and the interface
    private = {m.split(".")[2] for m in imported if m.startswith("agent.runtimes._")}
    assert private <= {"_shared"}


def test_the_shared_module_imports_no_plugin():
    assert _imported_modules(PACKAGE / "_shared.py") & PLUGINS == set()

"""The console-script launcher: a missing extra's package gets a one-line answer naming the
extra and exit code 2; a missing module no extra brings is a bug, raised as usual."""

from __future__ import annotations

import sys
import types

import pytest

import edgefleet_launcher
from edgefleet_launcher import Script, run


@pytest.fixture
def fake_cli(monkeypatch):
    """A command line module whose main() imports what the test says."""
    module = types.ModuleType("fake_cli_for_launcher")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    scripts = {"fake": Script(module.__name__, "main", {"paho": "agent", "rich": "cli"})}
    monkeypatch.setattr(edgefleet_launcher, "SCRIPTS", scripts)
    return module


def missing(name: str):
    def main() -> int:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    return main


def test_a_missing_extra_is_named_with_exit_code_2(fake_cli, capsys):
    fake_cli.main = missing("paho.mqtt.client")
    assert run("fake") == 2
    err = capsys.readouterr().err
    assert err == (
        "fake: the 'agent' extra is not installed (no module named 'paho.mqtt.client'); "
        "install it with: pip install 'edgefleet[agent]'\n"
    )


def test_an_unknown_missing_module_is_raised(fake_cli):
    fake_cli.main = missing("controller.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        run("fake")


def test_the_exit_code_of_the_command_line_is_passed_on(fake_cli):
    fake_cli.main = lambda: 3
    assert run("fake") == 3
    fake_cli.main = lambda: None
    assert run("fake") == 0


def test_the_real_scripts_point_at_their_command_lines():
    import agent.cli
    import controller.cli.main

    for name, module in (("edgefleet", controller.cli.main), ("edgefleet-agent", agent.cli)):
        script = edgefleet_launcher.SCRIPTS[name]
        assert script.module == module.__name__ and callable(getattr(module, script.function))

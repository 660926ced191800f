"""Finding runtime plugins by key, and surviving the ones that cannot load."""

import logging
import sys
import textwrap

import pytest

import agent.runtimes
from agent.runtimes.base import load_runtime_class, probe_runtime
from agent.runtimes.litert import LiteRTRuntime


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """An extra folder searched for `agent.runtimes.<key>` modules, removed afterwards."""
    monkeypatch.setattr(agent.runtimes, "__path__", [*agent.runtimes.__path__, str(tmp_path)])
    added = []

    def write(key: str, source: str) -> None:
        (tmp_path / f"{key}.py").write_text(textwrap.dedent(source))
        added.append(f"agent.runtimes.{key}")

    yield write
    for name in added:
        sys.modules.pop(name, None)


def test_litert_is_found_by_its_key():
    assert load_runtime_class("litert") is LiteRTRuntime


def test_probe_by_key_reports_litert_available():
    probe = probe_runtime("litert")
    assert probe.available
    assert probe.key == "litert"


def test_runtime_this_agent_does_not_include_is_reported_unavailable(caplog):
    with caplog.at_level(logging.INFO, logger="agent.runtimes.base"):
        assert load_runtime_class("hailo_not_here") is None
    assert "runtime_not_included key=hailo_not_here" in caplog.text

    probe = probe_runtime("hailo_not_here")
    assert not probe.available
    assert probe.reason == "this agent has no 'hailo_not_here' runtime plugin"


def test_runtime_whose_vendor_package_is_missing_is_logged_not_raised(plugin_dir, caplog):
    plugin_dir(
        "fakevendor",
        """
        import edgefleet_vendor_sdk_that_is_not_installed  # noqa: F401
        """,
    )
    with caplog.at_level(logging.WARNING, logger="agent.runtimes.base"):
        assert load_runtime_class("fakevendor") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missing=edgefleet_vendor_sdk_that_is_not_installed" in warnings[0].getMessage()
    probe = probe_runtime("fakevendor")
    assert not probe.available
    assert "edgefleet_vendor_sdk_that_is_not_installed is not installed" in probe.reason


def test_probe_that_crashes_is_reported_unavailable(plugin_dir):
    plugin_dir(
        "crashy",
        """
        from agent.runtimes.base import Runtime

        class CrashyRuntime(Runtime):
            KEY = "crashy"

            @classmethod
            def probe(cls):
                raise OSError("device node vanished")

            def load(self, model_path): ...
            def input_details(self): ...
            def output_details(self): ...
            def infer(self, tensor): ...
            def close(self): ...
        """,
    )
    probe = probe_runtime("crashy")
    assert probe.key == "crashy"
    assert not probe.available
    assert "device node vanished" in probe.reason


def test_module_without_a_runtime_for_its_key_is_a_programming_error(plugin_dir):
    plugin_dir("empty", "VALUE = 1\n")
    with pytest.raises(LookupError, match="no Runtime with KEY 'empty'"):
        load_runtime_class("empty")
    assert not probe_runtime("empty").available


@pytest.mark.parametrize("key", ["", "Litert", "../base", "lite.rt", "x" * 40])
def test_malformed_keys_are_refused(key):
    with pytest.raises(ValueError, match="malformed runtime key"):
        load_runtime_class(key)

"""Finding runtime plugins by key, and surviving the ones that cannot load."""

import logging
import sys
import textwrap
from types import ModuleType

import pytest

import agent.runtimes
from agent.runtimes.base import Runtime, load_runtime_class, probe_runtime
from agent.runtimes.litert import LiteRTRuntime
from protocol.events import RuntimeKey


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder searched first for `agent.runtimes.<key>`, so a module written there stands in
    for the plug-in of that (real) key; the real module is back afterwards."""
    monkeypatch.setattr(agent.runtimes, "__path__", [str(tmp_path), *agent.runtimes.__path__])
    replaced: dict[str, ModuleType | None] = {}

    def write(key: str, source: str) -> None:
        (tmp_path / f"{key}.py").write_text(textwrap.dedent(source))
        name = f"agent.runtimes.{key}"
        # forgotten while the test runs, so that the import finds the stand-in
        replaced[key] = sys.modules.pop(name, None)

    yield write
    for key, module in replaced.items():
        sys.modules.pop(f"agent.runtimes.{key}", None)
        if module is not None:
            sys.modules[f"agent.runtimes.{key}"] = module
            setattr(agent.runtimes, key, module)


def test_litert_is_found_by_its_key():
    assert load_runtime_class("litert") is LiteRTRuntime


def test_probe_by_key_reports_litert_available():
    probe = probe_runtime("litert")
    assert probe.available
    assert probe.key == "litert"


def test_every_runtime_key_has_a_plugin_whose_key_it_is():
    for key in RuntimeKey:
        # None where the vendor package is missing here; a missing plug-in raises LookupError
        runtime_class = load_runtime_class(key)
        assert runtime_class is None or (
            issubclass(runtime_class, Runtime) and key.value == runtime_class.KEY
        )
        assert probe_runtime(key).key == key.value


def test_runtime_this_agent_does_not_include_is_reported_unavailable(caplog, monkeypatch):
    # a build without the edgetpu plug-in: its module cannot be imported
    monkeypatch.setitem(sys.modules, "agent.runtimes.edgetpu", None)
    with caplog.at_level(logging.INFO, logger="agent.runtimes.base"):
        assert load_runtime_class("edgetpu") is None
    assert "runtime_not_included key=edgetpu" in caplog.text

    probe = probe_runtime("edgetpu")
    assert not probe.available
    assert probe.reason == "this agent has no 'edgetpu' runtime plugin"


def test_runtime_whose_vendor_package_is_missing_is_logged_not_raised(plugin_dir, caplog):
    plugin_dir(
        "openvino",
        """
        import edgefleet_vendor_sdk_that_is_not_installed  # noqa: F401
        """,
    )
    with caplog.at_level(logging.WARNING, logger="agent.runtimes.base"):
        assert load_runtime_class("openvino") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missing=edgefleet_vendor_sdk_that_is_not_installed" in warnings[0].getMessage()
    probe = probe_runtime("openvino")
    assert not probe.available
    assert "edgefleet_vendor_sdk_that_is_not_installed is not installed" in probe.reason


def test_probe_that_crashes_is_reported_unavailable(plugin_dir):
    plugin_dir(
        "tensorrt",
        """
        from agent.runtimes.base import Runtime

        class CrashyRuntime(Runtime):
            KEY = "tensorrt"

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
    probe = probe_runtime("tensorrt")
    assert probe.key == "tensorrt"
    assert not probe.available
    assert "device node vanished" in probe.reason


def test_module_without_a_runtime_for_its_key_is_a_programming_error(plugin_dir):
    plugin_dir("opencv", "VALUE = 1\n")
    with pytest.raises(LookupError, match="no Runtime with KEY 'opencv'"):
        load_runtime_class("opencv")
    assert not probe_runtime("opencv").available


@pytest.mark.parametrize(
    "key", ["", "Litert", "../base", "lite.rt", "x" * 40, "base", "hailo_not_here"]
)
def test_keys_that_are_not_runtime_keys_are_refused(key):
    with pytest.raises(ValueError, match="unknown runtime key"):
        load_runtime_class(key)
    probe = probe_runtime(key)
    assert not probe.available
    assert "unknown runtime key" in probe.reason

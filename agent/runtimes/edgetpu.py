"""Google Edge TPU (Coral): Coral's own `pycoral`, else a TFLite interpreter with `libedgetpu`.

The `pycoral` on PyPI is an unrelated project; Coral ships its `pycoral` from its own package
repository, and only that one has `pycoral.utils.edgetpu`, which is all this module imports.
Without it, a LiteRT (`ai-edge-litert`, else `tflite_runtime`) interpreter runs the model with
the `libedgetpu.so.1` delegate. Only models compiled by `edgetpu_compiler` run on the TPU: a
plain `.tflite` would silently run on the CPU, so it is refused at load.
"""

from __future__ import annotations

import ctypes
import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtimes._shared import TFLiteRuntime, import_interpreter
from agent.runtimes.base import (
    ModelLoadError,
    RuntimeOptions,
    RuntimeProbe,
    RuntimeUnavailableError,
)
from device_profiles.probe import probe_hardware
from protocol.events import RuntimeKey

EDGETPU_DEVICE = "EDGETPU"
LIBRARY_NAMES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib"}
# the PCIe/M.2 TPU's node and the USB accelerator before/after its firmware is loaded
APEX_NODE = "dev/apex_0"
USB_IDS = frozenset({"1a6e:089a", "18d1:9302"})
# the custom operator edgetpu_compiler puts the TPU's part of the graph into
COMPILED_MARKER = b"edgetpu-custom-op"


def library_name() -> str:
    """The Edge TPU runtime library's file name on this operating system."""
    return LIBRARY_NAMES.get(platform.system(), "libedgetpu.so.1")


@dataclass(frozen=True)
class EdgeTPUEnvironment:
    """Where the probe looks: the filesystem root for device nodes and USB ids, and how the
    runtime library is opened (tests point both at fixtures)."""

    root: Path = Path("/")
    open_library: Callable[[str], Any] = field(default=ctypes.CDLL)


def _pycoral() -> Any | None:
    try:
        return importlib.import_module("pycoral.utils.edgetpu")
    except ImportError:
        return None


def attached_devices(root: Path) -> list[str]:
    """The Edge TPUs visible under `root`, described for a reason string."""
    facts = probe_hardware(root, paths=[APEX_NODE])
    found = [f"PCIe ({'/' + APEX_NODE})"] if APEX_NODE in facts.present_paths else []
    found += [f"USB {usb_id}" for usb_id in sorted(facts.usb_ids & USB_IDS)]
    return found


def probe_environment(env: EdgeTPUEnvironment) -> RuntimeProbe:
    """Whether an interpreter, the runtime library and a TPU are all there; never raises."""
    key = EdgeTPURuntime.KEY
    pycoral = _pycoral()
    if pycoral is not None:
        source = "pycoral (Coral repository)"
    else:
        try:
            _, source = import_interpreter()
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key, False, f"no pycoral and {exc}")
    library = library_name()
    try:
        env.open_library(library)
    except OSError as exc:
        return RuntimeProbe(
            key,
            False,
            f"{library} not loadable ({exc}); install libedgetpu1-std from Coral's apt repository",
        )
    devices = attached_devices(env.root)
    if not devices:
        wanted = " or ".join(sorted(USB_IDS))
        return RuntimeProbe(
            key,
            False,
            f"{library} loads but no Edge TPU is attached (no /{APEX_NODE}, no USB {wanted})",
        )
    return RuntimeProbe(
        key,
        True,
        f"{source} with {library}; Edge TPU {', '.join(devices)}",
        devices=frozenset({EDGETPU_DEVICE}),
    )


def check_compiled(model_path: Path) -> None:
    """Refuse a model that edgetpu_compiler has not compiled.

    Raises ModelLoadError naming the reason, or for an unreadable file.
    """
    try:
        data = Path(model_path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {model_path}: {exc}") from exc
    if COMPILED_MARKER not in data:
        raise ModelLoadError(
            f"{model_path} is not compiled for the Edge TPU (no {COMPILED_MARKER.decode()}); "
            "compile it with edgetpu_compiler and ship it as the bundle's edgetpu variant"
        )


class EdgeTPURuntime(TFLiteRuntime):
    """A TFLite interpreter whose compiled part runs on the Edge TPU."""

    KEY = RuntimeKey.EDGETPU

    def __init__(
        self, *, num_threads: int | None = None, env: EdgeTPUEnvironment | None = None
    ) -> None:
        super().__init__(num_threads=num_threads)
        self.env = env or EdgeTPUEnvironment()

    @classmethod
    def create(
        cls, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> EdgeTPURuntime:
        """An Edge TPU runtime. Raises RuntimeUnavailableError for a device other than the TPU."""
        device = options.device if options is not None else None
        if device not in (None, EDGETPU_DEVICE):
            raise RuntimeUnavailableError(f"the edgetpu plugin cannot target device {device}")
        return cls(num_threads=num_threads)

    @classmethod
    def probe(cls) -> RuntimeProbe:
        return probe_environment(EdgeTPUEnvironment())

    def _open_interpreter(self, model_path: Path) -> tuple[Any, str]:
        check_compiled(model_path)
        library = library_name()
        try:
            # opened first: a delegate that fails to load leaves a half-built object behind
            self.env.open_library(library)
        except OSError as exc:
            raise RuntimeUnavailableError(f"{library} not loadable: {exc}") from exc
        pycoral = _pycoral()
        try:
            if pycoral is not None:
                return pycoral.make_interpreter(str(model_path)), "pycoral"
            interpreter_class, source = import_interpreter()
            module = importlib.import_module(interpreter_class.__module__)
            try:
                delegate = module.load_delegate(library)
            except (ValueError, OSError) as exc:
                raise RuntimeUnavailableError(f"{library} delegate did not load: {exc}") from exc
            interpreter = interpreter_class(
                model_path=str(model_path),
                experimental_delegates=[delegate],
                num_threads=self.num_threads,
            )
            return interpreter, f"{source} with {library}"
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"Edge TPU could not load {model_path}: {exc}") from exc

"""Device memory and streams for the TensorRT plugin: `pycuda` or `cuda-python`, whichever imports.

JetPack 4.6 devices usually have pycuda (built against the system CUDA); current x86 hosts get
cuda-python from PyPI. Both are wrapped in one small interface so the plugin has one code path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from agent.runtimes.base import InferenceError, RuntimeUnavailableError


class CudaBackend(Protocol):
    """What the TensorRT plugin needs from CUDA."""

    source: str

    def gpu_name(self) -> str: ...
    def alloc(self, nbytes: int) -> int: ...
    def to_device(self, device_ptr: int, host: np.ndarray) -> None: ...
    def to_host(self, host: np.ndarray, device_ptr: int) -> None: ...
    def stream_handle(self) -> int: ...
    def synchronize(self) -> None: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...
    def free(self) -> None: ...


class PyCudaBackend:
    """pycuda: one context made at start, pushed around each call from another thread."""

    def __init__(self, driver: Any) -> None:
        driver.init()
        if driver.Device.count() < 1:
            raise RuntimeUnavailableError("CUDA reports no GPU")
        self._driver = driver
        self._device = driver.Device(0)
        self._context = self._device.make_context()
        self._stream = driver.Stream()
        self._allocations: list[Any] = []
        self._context.pop()
        self.source = "pycuda"

    def gpu_name(self) -> str:
        return str(self._device.name())

    def alloc(self, nbytes: int) -> int:
        self.enter()
        try:
            allocation = self._driver.mem_alloc(max(1, nbytes))
        finally:
            self.leave()
        self._allocations.append(allocation)
        return int(allocation)

    def to_device(self, device_ptr: int, host: np.ndarray) -> None:
        self._driver.memcpy_htod_async(device_ptr, host, self._stream)

    def to_host(self, host: np.ndarray, device_ptr: int) -> None:
        self._driver.memcpy_dtoh_async(host, device_ptr, self._stream)

    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def enter(self) -> None:
        self._context.push()

    def leave(self) -> None:
        self._driver.Context.pop()

    def free(self) -> None:
        self.enter()
        try:
            for allocation in self._allocations:
                allocation.free()
        finally:
            self.leave()
        self._allocations = []
        self._context.detach()


class CudaPythonBackend:
    """cuda-python's runtime API: the primary context serves every thread."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart
        count = self._call(cudart.cudaGetDeviceCount)
        if count < 1:
            raise RuntimeUnavailableError("CUDA reports no GPU")
        self._stream = self._call(cudart.cudaStreamCreate)
        self._allocations: list[int] = []
        self.source = "cuda-python"

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        result = fn(*args)
        err, rest = result[0], result[1:]
        if int(err) != 0:
            raise InferenceError(f"CUDA call {fn.__name__} failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def gpu_name(self) -> str:
        props = self._call(self._rt.cudaGetDeviceProperties, 0)
        name = props.name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._call(self._rt.cudaMalloc, max(1, nbytes)))
        self._allocations.append(ptr)
        return ptr

    def to_device(self, device_ptr: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(
            self._rt.cudaMemcpyAsync, device_ptr, host.ctypes.data, host.nbytes, kind, self._stream
        )

    def to_host(self, host: np.ndarray, device_ptr: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(
            self._rt.cudaMemcpyAsync, host.ctypes.data, device_ptr, host.nbytes, kind, self._stream
        )

    def stream_handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        self._call(self._rt.cudaStreamSynchronize, self._stream)

    def enter(self) -> None:
        return None

    def leave(self) -> None:
        return None

    def free(self) -> None:
        for ptr in self._allocations:
            self._rt.cudaFree(ptr)
        self._allocations = []
        self._rt.cudaStreamDestroy(self._stream)


# (module to import, how to build a backend from it), best first
_CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


def find_cuda(import_module: Callable[[str], Any] = importlib.import_module) -> tuple[str, Any]:
    """The importable CUDA binding: ("pycuda", driver module) or ("cuda-python", cudart module).

    Raises RuntimeUnavailableError naming both packages when neither imports.
    """
    failures = []
    try:
        return "pycuda", import_module("pycuda.driver")
    except ImportError as exc:
        failures.append(f"pycuda: {exc}")
    for name in _CUDART_MODULES:
        try:
            return "cuda-python", import_module(name)
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise RuntimeUnavailableError(
        "no CUDA bindings (pycuda or cuda-python): " + "; ".join(failures)
    )


def open_backend(kind: str, module: Any) -> CudaBackend:
    """A backend on GPU 0. Raises RuntimeUnavailableError when CUDA finds no GPU."""
    try:
        if kind == "pycuda":
            return PyCudaBackend(module)
        return CudaPythonBackend(module)
    except Exception as exc:  # pycuda's errors derive from its own base, not RuntimeError
        raise RuntimeUnavailableError(f"CUDA ({kind}) could not start: {exc}") from exc

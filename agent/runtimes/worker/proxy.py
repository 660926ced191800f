"""The agent's side of a runtime worker: a Runtime plug-in whose model runs in another process.

`worker_runtime_class(key, launch)` makes a Runtime class for one runtime key that starts
`program.py` under the interpreter `launch` names, so the rest of the agent (loader, detector,
probation, hot swap) sees the same plug-in interface as for an in-process runtime.

Frames: the detector preprocesses straight into `input_buffer`, a view of a file in shared
memory, so a frame crosses to the worker without a copy; outputs come back through a second
file the worker writes, copied once out of it so they outlive the next frame as every
plug-in's outputs do. Only small JSON requests travel on the pipes.

A worker that dies (crash, kill, out of memory, a reply that does not come in time) fails the
frame it was on, which is never retried, so no frame is processed twice; it is restarted with
the model loaded again on a later frame, after a back-off that doubles while it keeps dying,
and each crash and restart is reported through the `WorkerEvents` callback; `worker_health()`
gives the counters so far, for the agent's health.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from agent.runtimes._shared import ModelFormatError, with_input_shape
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeOptions,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)
from agent.runtimes.worker.launch import (
    PROGRAM,
    WorkerEvent,
    WorkerEventKind,
    WorkerEvents,
    WorkerLaunch,
    default_shm_dir,
    probe_in_worker,
)
from agent.runtimes.worker.program import (
    HEADER,
    INFERENCE,
    INT8_NEEDS_CALIBRATION,
    LOAD,
    MAX_MESSAGE,
    UNAVAILABLE,
    SharedRegion,
    decode_body,
    encode_message,
)
from protocol.events import RuntimeWorkerState
from protocol.messages import RuntimeWorkerHealth

log = logging.getLogger(__name__)

# runtimes whose model file declares an input shape the agent rewrites before the worker loads
_ONNX_KEYS = frozenset({"onnx", "tensorrt"})


class WorkerCrashed(InferenceError):
    """The worker process died or stopped answering."""


class WorkerRestarting(InferenceError):
    """The worker died and its back-off has not run out yet: the frame is not run."""


class WorkerProcess:
    """One running worker and its pipes."""

    def __init__(self, launch: WorkerLaunch) -> None:
        env = dict(os.environ)
        env.update(launch.env)
        if launch.python_path:
            env["PYTHONPATH"] = os.pathsep.join(
                [*launch.python_path, *filter(None, [env.get("PYTHONPATH")])]
            )
        try:
            self.process = subprocess.Popen(
                [launch.python, str(PROGRAM)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            raise RuntimeUnavailableError(
                f"cannot start the runtime worker with {launch.python}: {exc}"
            ) from exc
        self.pid = self.process.pid
        assert_pipes(self.process)
        self._stdin: IO[bytes] = self.process.stdin  # type: ignore[assignment]
        self._stdout_fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        self._pending = b""
        try:
            self.hello = self._read(launch.start_timeout_s)
        except WorkerCrashed:
            self.process.kill()
            self.stop()
            raise
        if not self.hello.get("ok"):
            self.stop()
            raise RuntimeUnavailableError(
                f"the runtime worker under {launch.python} cannot run: "
                f"{self.hello.get('message', 'no detail')}"
            )

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply. Raises WorkerCrashed."""
        try:
            self._stdin.write(encode_message(request))
            self._stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise WorkerCrashed(f"worker pid {self.pid} gone: {self._exit_note(exc)}") from exc
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        header = self._take(HEADER.size, deadline)
        (size,) = HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise WorkerCrashed(f"worker pid {self.pid} sent a {size}-byte reply")
        try:
            return decode_body(self._take(size, deadline))
        except ValueError as exc:
            raise WorkerCrashed(f"worker pid {self.pid} sent a malformed reply: {exc}") from exc

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self._pending) < size:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._stdout_fd], [], [], max(0.0, left))
            if not ready:
                raise WorkerCrashed(f"worker pid {self.pid} did not answer in time")
            chunk = os.read(self._stdout_fd, 1 << 16)
            if not chunk:
                raise WorkerCrashed(f"worker pid {self.pid} exited: {self._exit_note(None)}")
            self._pending += chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def _exit_note(self, exc: BaseException | None) -> str:
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"no reply ({exc!r})" if exc else "channel closed"
        return f"exit status {code}"

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit, then kill it if it does not; safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(WorkerCrashed):
                self.call({"op": "close"}, timeout)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def assert_pipes(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is None or process.stdout is None:
        raise RuntimeUnavailableError("the runtime worker has no pipes")


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _details(raw: Mapping[str, Any]) -> TensorDetails:
    scale, zero_point = raw.get("quantization", (0.0, 0))
    return TensorDetails(
        name=str(raw["name"]),
        shape=tuple(int(d) for d in raw["shape"]),
        dtype=np.dtype(raw["dtype"]),
        quantization=(float(scale), int(zero_point)),
    )


def _raise_for(reply: Mapping[str, Any], what: str) -> None:
    if reply.get("ok"):
        return
    message = f"{what}: {reply.get('message', 'no detail')}"
    kind = reply.get("kind")
    if kind == UNAVAILABLE:
        raise RuntimeUnavailableError(message)
    if kind == LOAD:
        raise ModelLoadError(message)
    if kind == INFERENCE:
        raise InferenceError(message)
    raise WorkerCrashed(message)


class WorkerRuntime(Runtime):
    """A runtime whose model runs in a worker process (see the module docstring)."""

    KEY: ClassVar[str]
    LAUNCH: ClassVar[WorkerLaunch]
    EVENTS: ClassVar[tuple[WorkerEvents, ...]] = ()

    def __init__(
        self, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> None:
        super().__init__(num_threads=num_threads)
        self.options = options or RuntimeOptions()
        self.crashes = 0
        self.restarts = 0
        self._last_crash = ""
        self._worker: WorkerProcess | None = None
        self._load_request: dict[str, Any] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._inputs: SharedRegion | None = None
        self._outputs_region: SharedRegion | None = None
        self._seq = 0
        self._retry_at = 0.0
        self._backoff = self.LAUNCH.backoff_s
        self._started_at = 0.0
        self._lock = threading.Lock()
        # guards the worker, the load request and the counters for `worker_health`, which must
        # not wait on `_lock` while a frame (up to `infer_timeout_s`) holds it
        self._status = threading.Lock()

    @classmethod
    def create(
        cls, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> WorkerRuntime:
        """Raises RuntimeUnavailableError for INT8 without a calibration cache, as in-process."""
        options = options or RuntimeOptions()
        if cls.KEY == "tensorrt" and options.precision == "int8" and not options.calibration_cache:
            raise RuntimeUnavailableError(INT8_NEEDS_CALIBRATION)
        return cls(num_threads=num_threads, options=options)

    @classmethod
    def probe(cls) -> RuntimeProbe:
        return probe_in_worker(cls.KEY, cls.LAUNCH)

    @property
    def pid(self) -> int | None:
        """The worker's process id while one runs."""
        return self._worker.pid if self._worker is not None else None

    def worker_health(self) -> RuntimeWorkerHealth:
        """The worker's state, process id and crash and restart counts now; any thread may ask."""
        with self._status:
            worker, loaded = self._worker, self._load_request is not None
            crashes, restarts, last_crash = self.crashes, self.restarts, self._last_crash
        if worker is not None:
            state = RuntimeWorkerState.RUNNING
        elif loaded:
            state = RuntimeWorkerState.RESTARTING
        else:
            state = RuntimeWorkerState.STOPPED
        return RuntimeWorkerHealth(
            runtime=self.KEY,
            state=state,
            pid=worker.pid if worker is not None else None,
            crashes=crashes,
            restarts=restarts,
            last_crash=last_crash,
        )

    # ---- loading --------------------------------------------------------------------------

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Start a worker and load the model in it. Raises RuntimeUnavailableError or
        ModelLoadError; a failed load leaves any model already loaded in place."""
        folder = tempfile.TemporaryDirectory(prefix="edgefleet-worker-", dir=self._shm_dir())
        try:
            request = self._load_request_for(Path(model_path), input_shape, Path(folder.name))
            worker, reply = self._start(request)
        except BaseException:
            folder.cleanup()
            raise
        self._drop_worker()
        with self._status:
            self._folder, self._worker, self._load_request = folder, worker, request
        self._started_at = time.monotonic()
        self._accept(reply, input_shape)
        log.info(
            "event=worker_loaded key=%s pid=%s python=%s model=%s input=%s",
            self.KEY,
            worker.pid,
            worker.hello.get("python"),
            model_path,
            self._input.shape if self._input else None,
        )

    def _shm_dir(self) -> str:
        return str(self.LAUNCH.shm_dir or default_shm_dir())

    def _load_request_for(
        self, model_path: Path, input_shape: Sequence[int] | None, folder: Path
    ) -> dict[str, Any]:
        model = model_path
        if self.KEY in _ONNX_KEYS and input_shape is not None:
            # the worker's interpreter may be old: the shape rewrite happens here, once
            try:
                data = with_input_shape(model_path.read_bytes(), tuple(int(d) for d in input_shape))
            except (OSError, ModelFormatError) as exc:
                raise ModelLoadError(f"cannot prepare {model_path}: {exc}") from exc
            model = folder / "model.onnx"
            model.write_bytes(data)
        return {
            "op": "load",
            "key": self.KEY,
            "model": str(model),
            "input_shape": [int(d) for d in input_shape] if input_shape is not None else None,
            "num_threads": self.num_threads,
            "device": self.options.device,
            "precision": self.options.precision,
            "cache_dir": str(self.options.cache_dir) if self.options.cache_dir else None,
            # a path: the worker shares the agent's filesystem and user, and reads it itself
            "calibration_cache": (
                str(self.options.calibration_cache.absolute())
                if self.options.calibration_cache
                else None
            ),
            "in_path": str(folder / "input"),
            "out_path": str(folder / "output"),
        }

    def _start(self, request: dict[str, Any]) -> tuple[WorkerProcess, dict[str, Any]]:
        try:
            worker = WorkerProcess(self.LAUNCH)
        except WorkerCrashed as exc:
            raise RuntimeUnavailableError(f"the runtime worker did not start: {exc}") from exc
        try:
            reply = worker.call(request, self.LAUNCH.load_timeout_s)
            _raise_for(reply, f"{self.KEY} worker could not load {request['model']}")
        except WorkerCrashed as exc:
            worker.stop()
            raise ModelLoadError(f"{self.KEY} worker died while loading: {exc}") from exc
        except BaseException:
            worker.stop()
            raise
        return worker, reply

    def _accept(self, reply: Mapping[str, Any], input_shape: Sequence[int] | None) -> None:
        details = _details(reply["input"])
        self._input = details
        self._outputs = [_details(o) for o in reply["outputs"]]
        self._dynamic_axes = tuple(i for i, d in enumerate(details.shape) if d < 0)
        wanted = list(input_shape) if input_shape is not None else list(details.shape)
        shape = [
            max(d, 1) if d >= 0 else max(int(w), 1)
            for d, w in zip(details.shape, wanted, strict=False)
        ]
        self._inputs = None
        self._map_inputs(int(np.prod(shape)) * details.dtype.itemsize)

    def _map_inputs(self, nbytes: int) -> SharedRegion:
        if self._folder is None:
            raise InferenceError("no model loaded")
        if self._inputs is None or self._inputs.size < nbytes:
            self._inputs = SharedRegion(
                str(Path(self._folder.name) / "input"), max(nbytes, 64), create=True
            )
        return self._inputs

    # ---- frames ---------------------------------------------------------------------------

    def input_buffer(self, shape: Sequence[int], dtype: np.dtype[Any]) -> np.ndarray:
        """A view of the shared input region: a frame preprocessed into it needs no copy."""
        kind = np.dtype(dtype)
        region = self._map_inputs(int(np.prod(shape)) * kind.itemsize)
        view: np.ndarray = region.array(0, tuple(shape), kind)
        return view

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._expected_input(tensor)
        with self._lock:
            worker = self._live_worker()
            region = self._map_inputs(tensor.nbytes)
            shared = region.array(0, tensor.shape, tensor.dtype)
            if _address(shared) != _address(tensor):
                shared[...] = tensor
            self._seq += 1
            request = {
                "op": "infer",
                "seq": self._seq,
                "in_path": region.path,
                "in_size": region.size,
                "shape": list(tensor.shape),
                "dtype": tensor.dtype.name,
            }
            try:
                reply = worker.call(request, self.LAUNCH.infer_timeout_s)
                if reply.get("ok") and reply.get("seq") != self._seq:
                    raise WorkerCrashed(f"reply to frame {reply.get('seq')}, not {self._seq}")
            except WorkerCrashed as exc:
                self._crashed(str(exc))
                raise
            _raise_for(reply, f"{self.KEY} worker")
            return self._collect(reply)

    def _collect(self, reply: Mapping[str, Any]) -> list[np.ndarray]:
        size = int(reply["out_size"])
        region = self._outputs_region
        if region is None or region.size != size:
            if self._folder is None:
                raise InferenceError("no model loaded")
            region = SharedRegion(str(Path(self._folder.name) / "output"), size, create=False)
            self._outputs_region = region
        # copied once: outputs must outlive the next frame, which reuses the region
        return [region.array(int(o), tuple(s), d).copy() for o, s, d in reply["outputs"]]

    # ---- crashes and restarts ---------------------------------------------------------------

    def _live_worker(self) -> WorkerProcess:
        if self._worker is not None:
            return self._worker
        if self._load_request is None:
            raise InferenceError("no model loaded")
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise WorkerRestarting(f"{self.KEY} worker restarts in {wait:.1f} s")
        try:
            worker, _ = self._start(self._load_request)
        except (RuntimeUnavailableError, ModelLoadError) as exc:
            self._schedule_retry()
            self._emit(WorkerEventKind.RESTART_FAILED, str(exc))
            raise WorkerRestarting(f"{self.KEY} worker restart failed: {exc}") from exc
        with self._status:
            self._worker = worker
            self.restarts += 1
        self._started_at = time.monotonic()
        self._outputs_region = None
        self._emit(WorkerEventKind.RESTARTED, f"pid {worker.pid}")
        return worker

    def _crashed(self, detail: str) -> None:
        with self._status:
            worker, self._worker = self._worker, None
            self.crashes += 1
            self._last_crash = detail[:256]
        if worker is not None:
            worker.process.kill()
            worker.stop()
        if time.monotonic() - self._started_at >= self.LAUNCH.stable_s:
            self._backoff = self.LAUNCH.backoff_s
        self._schedule_retry()
        self._emit(WorkerEventKind.CRASHED, detail)

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.LAUNCH.backoff_max_s)

    def _emit(self, kind: WorkerEventKind, detail: str) -> None:
        event = WorkerEvent(kind, self.KEY, detail[:1024], self.crashes, self.restarts)
        log.warning(
            "event=%s key=%s crashes=%d restarts=%d detail=%r",
            kind,
            self.KEY,
            self.crashes,
            self.restarts,
            event.detail,
        )
        for report in self.EVENTS:
            try:
                report(event)
            except Exception:  # reporting must not break the frame path
                log.exception("event=worker_event_report_failed kind=%s", kind)

    # ---- closing --------------------------------------------------------------------------

    def _drop_worker(self) -> None:
        with self._status:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        self._inputs = None
        self._outputs_region = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def close(self) -> None:
        with self._lock:
            self._drop_worker()
            with self._status:
                self._load_request = None
            self._input = None
            self._outputs = []
            self._dynamic_axes = ()


def worker_runtime_class(
    key: str, launch: WorkerLaunch, events: WorkerEvents | None = None
) -> type[WorkerRuntime]:
    """A Runtime class that runs runtime `key` in workers started as `launch` says."""
    namespace = {"KEY": key, "LAUNCH": launch, "EVENTS": (events,) if events else ()}
    return type(f"Worker{key.title()}Runtime", (WorkerRuntime,), namespace)

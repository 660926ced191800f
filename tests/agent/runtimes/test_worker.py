"""Runtime workers: the real worker program in a separate process, fed through shared memory,
giving the same outputs as the in-process plug-ins; crashes reported and restarted."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    RuntimeOptions,
    RuntimeUnavailableError,
)
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.worker import program
from agent.runtimes.worker.launch import (
    WorkerEvent,
    WorkerEventKind,
    WorkerLaunch,
    probe_in_worker,
)
from agent.runtimes.worker.proxy import (
    WorkerCrashed,
    WorkerRestarting,
    WorkerRuntime,
    worker_runtime_class,
)

BLAZEFACE_INPUT = (1, 128, 128, 3)
CENTERFACE_INPUT = (1, 3, 96, 128)


def launch(tmp_path: Path, **overrides) -> WorkerLaunch:
    # the test interpreter stands in for the device's own: a real, separate process
    return WorkerLaunch(**{"python": sys.executable, "shm_dir": tmp_path, **overrides})


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, BLAZEFACE_INPUT).astype(np.float32)


def blazeface_worker(model: Path, tmp_path: Path, events=None, **overrides) -> WorkerRuntime:
    runtime_class = worker_runtime_class("litert", launch(tmp_path, **overrides), events)
    runtime = runtime_class.create(num_threads=1)
    runtime.load(model, input_shape=BLAZEFACE_INPUT)
    return runtime


def test_probe_under_the_workers_interpreter_names_it(tmp_path) -> None:
    probe = probe_in_worker("litert", launch(tmp_path))
    assert probe.available, probe.reason
    assert f"worker python {sys.version_info[0]}.{sys.version_info[1]}" in probe.reason
    assert probe.devices == frozenset({"CPU"})


def test_probe_of_a_runtime_the_worker_lacks_says_why(tmp_path) -> None:
    probe = probe_in_worker("opencv", launch(tmp_path))
    assert not probe.available
    assert "no 'opencv' backend" in probe.reason


def test_probe_with_a_missing_interpreter_is_unavailable_not_raised(tmp_path) -> None:
    probe = probe_in_worker("litert", launch(tmp_path, python=str(tmp_path / "python3.6")))
    assert not probe.available
    assert "did not probe" in probe.reason


def test_blazeface_in_a_worker_matches_in_process(blazeface_model, tmp_path, frame) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    local = LiteRTRuntime(num_threads=1)
    local.load(blazeface_model, input_shape=BLAZEFACE_INPUT)
    try:
        assert worker.pid is not None and worker.pid != os.getpid()
        assert worker.input_details() == local.input_details()
        assert worker.output_details() == local.output_details()
        for got, want in zip(worker.infer(frame), local.infer(frame), strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        worker.close()
        local.close()


def test_centerface_in_a_worker_matches_in_process(centerface_model, tmp_path) -> None:
    runtime_class = worker_runtime_class("onnx", launch(tmp_path))
    worker = runtime_class.create(num_threads=1)
    worker.load(centerface_model, input_shape=CENTERFACE_INPUT)
    local = OnnxRuntime(num_threads=1)
    local.load(centerface_model, input_shape=CENTERFACE_INPUT)
    tensor = np.random.default_rng(3).uniform(0, 255, CENTERFACE_INPUT).astype(np.float32)
    try:
        assert worker.input_details().shape == CENTERFACE_INPUT
        got, want = worker.infer(tensor), local.infer(tensor)
        assert [o.shape for o in got] == [o.shape for o in want]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    finally:
        worker.close()
        local.close()


def test_a_frame_preprocessed_into_the_input_buffer_is_not_copied(
    blazeface_model, tmp_path, frame
) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    try:
        buffer = worker.input_buffer(BLAZEFACE_INPUT, np.dtype(np.float32))
        buffer[...] = frame
        region = worker._inputs
        assert region is not None
        # the buffer is the shared file itself: what the worker reads is what was written
        mapped = np.frombuffer(region.map, np.float32, count=frame.size).reshape(frame.shape)
        assert np.shares_memory(mapped, buffer)
        first = worker.infer(buffer)
        second = worker.infer(frame.copy())
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        worker.close()


def test_outputs_outlive_the_next_frame(blazeface_model, tmp_path, frame) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    try:
        first = worker.infer(frame)
        kept = [o.copy() for o in first]
        worker.infer(np.zeros_like(frame))
        for a, b in zip(first, kept, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        worker.close()


def test_a_wrong_input_is_refused_before_it_reaches_the_worker(blazeface_model, tmp_path) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    try:
        with pytest.raises(InferenceError, match="does not fit"):
            worker.infer(np.zeros((1, 64, 64, 3), np.float32))
        assert worker.crashes == 0
    finally:
        worker.close()


def test_a_model_the_worker_cannot_load_is_a_load_error(tmp_path) -> None:
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a model")
    runtime = worker_runtime_class("litert", launch(tmp_path)).create()
    with pytest.raises(ModelLoadError, match="could not load"):
        runtime.load(bad)
    runtime.close()
    assert not list(tmp_path.glob("edgefleet-worker-*")), "shared-memory folder left behind"


def test_an_interpreter_that_does_not_exist_is_unavailable(blazeface_model, tmp_path) -> None:
    missing = launch(tmp_path, python=str(tmp_path / "bin" / "python3"))
    runtime = worker_runtime_class("litert", missing).create()
    with pytest.raises(RuntimeUnavailableError, match="cannot start the runtime worker"):
        runtime.load(blazeface_model)
    runtime.close()


def test_a_killed_worker_fails_one_frame_then_restarts_after_the_backoff(
    blazeface_model, tmp_path, frame
) -> None:
    events: list[WorkerEvent] = []
    worker = blazeface_worker(
        blazeface_model, tmp_path, events.append, backoff_s=0.3, backoff_max_s=1.0
    )
    try:
        expected = worker.infer(frame)
        first_pid = worker.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match=r"exited|gone"):
            worker.infer(frame)
        assert worker.pid is None
        with pytest.raises(WorkerRestarting, match="restarts in"):
            worker.infer(frame)
        time.sleep(0.35)
        again = worker.infer(frame)
        for a, b in zip(again, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        assert worker.pid not in (None, first_pid)
        assert (worker.crashes, worker.restarts) == (1, 1)
        assert [e.kind for e in events] == [WorkerEventKind.CRASHED, WorkerEventKind.RESTARTED]
        assert events[0].runtime == "litert"
    finally:
        worker.close()


def test_the_backoff_doubles_while_the_worker_keeps_dying(blazeface_model, tmp_path) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path, backoff_s=0.2, backoff_max_s=0.3)
    try:
        worker._crashed("test crash")
        assert worker._retry_at - time.monotonic() == pytest.approx(0.2, abs=0.05)
        worker._crashed("test crash")
        # doubled, and capped at the maximum
        assert worker._retry_at - time.monotonic() == pytest.approx(0.3, abs=0.05)
    finally:
        worker.close()


def test_a_worker_that_stops_answering_is_killed_and_counted(
    blazeface_model, tmp_path, frame
) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path, infer_timeout_s=0.5)
    try:
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(WorkerCrashed, match="did not answer in time"):
            worker.infer(frame)
        assert worker.crashes == 1
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped, not left stopped
    finally:
        worker.close()


def test_close_stops_the_worker_and_removes_the_shared_files(
    blazeface_model, tmp_path, frame
) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    worker.infer(frame)
    pid = worker.pid
    assert pid is not None
    assert list(tmp_path.glob("edgefleet-worker-*/input"))
    assert list(tmp_path.glob("edgefleet-worker-*/output"))
    worker.close()
    worker.close()  # twice is fine
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not list(tmp_path.glob("edgefleet-worker-*"))
    with pytest.raises(InferenceError, match="no model loaded"):
        worker.infer(frame)


def test_a_second_load_replaces_the_worker_and_a_failed_one_keeps_it(
    blazeface_model, tmp_path, frame
) -> None:
    worker = blazeface_worker(blazeface_model, tmp_path)
    try:
        first = worker.pid
        worker.load(blazeface_model, input_shape=BLAZEFACE_INPUT)
        assert worker.pid != first
        bad = tmp_path / "bad.tflite"
        bad.write_bytes(b"junk")
        kept = worker.pid
        with pytest.raises(ModelLoadError):
            worker.load(bad)
        assert worker.pid == kept
        assert len(worker.infer(frame)) == 2
    finally:
        worker.close()


# --- the channel ---------------------------------------------------------------------------


def test_messages_round_trip_and_oversize_ones_are_refused() -> None:
    stream = io.BytesIO(program.encode_message({"op": "infer", "seq": 3}))
    assert program.read_message(stream) == {"op": "infer", "seq": 3}
    with pytest.raises(program.ChannelClosed):
        program.read_message(stream)
    with pytest.raises(ValueError, match="exceeds"):
        program.read_message(io.BytesIO(program.HEADER.pack(program.MAX_MESSAGE + 1)))
    with pytest.raises(ValueError, match="JSON object"):
        body = b"[1]"
        program.read_message(io.BytesIO(program.HEADER.pack(len(body)) + body))


def test_the_worker_answers_a_bad_request_and_keeps_serving() -> None:
    requests = io.BytesIO(
        program.encode_message({"op": "dance"})
        + program.encode_message({"op": "infer"})
        + program.encode_message({"op": "probe", "key": "litert"})
        + program.encode_message({"op": "close"})
    )
    replies = io.BytesIO()
    assert program.serve(requests, replies) == 0
    replies.seek(0)
    hello, unknown, no_model, probed, closed = (program.read_message(replies) for _ in range(5))
    assert hello["op"] == "hello"
    assert (unknown["ok"], unknown["kind"]) == (False, program.PROTOCOL)
    assert (no_model["ok"], no_model["kind"]) == (False, program.INFERENCE)
    assert probed["available"] is True
    assert closed == {"ok": True}


def test_blazeface_on_openvino_in_a_worker_matches_in_process(
    blazeface_model, tmp_path, frame
) -> None:
    from agent.runtimes.openvino import OpenVINORuntime

    worker = worker_runtime_class("openvino", launch(tmp_path)).create(
        num_threads=1, options=RuntimeOptions(device="CPU")
    )
    worker.load(blazeface_model, input_shape=BLAZEFACE_INPUT)
    local = OpenVINORuntime(num_threads=1)
    local.load(blazeface_model, input_shape=BLAZEFACE_INPUT)
    try:
        assert [o.shape for o in worker.output_details()] == [
            o.shape for o in local.output_details()
        ]
        for got, want in zip(worker.infer(frame), local.infer(frame), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    finally:
        worker.close()
        local.close()


def test_the_edge_tpu_worker_probe_names_what_is_missing(tmp_path) -> None:
    probe = probe_in_worker("edgetpu", launch(tmp_path))
    assert not probe.available
    assert "libedgetpu.so.1 not loadable" in probe.reason


def test_an_edge_tpu_worker_refuses_a_model_not_compiled_for_the_tpu(
    blazeface_model, tmp_path
) -> None:
    runtime = worker_runtime_class("edgetpu", launch(tmp_path)).create()
    try:
        with pytest.raises(ModelLoadError, match="not compiled for the Edge TPU"):
            runtime.load(blazeface_model, input_shape=BLAZEFACE_INPUT)
    finally:
        runtime.close()


def test_an_interpreter_without_numpy_is_named_as_the_reason(blazeface_model, tmp_path) -> None:
    # an interpreter that cannot import numpy: a real python run with an empty import path
    bare = tmp_path / "bin" / "python3"
    bare.parent.mkdir()
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    probe = probe_in_worker("litert", launch(tmp_path, python=str(bare)))
    assert not probe.available
    assert probe.reason.startswith("numpy is not installed for this interpreter")
    runtime = worker_runtime_class("litert", launch(tmp_path, python=str(bare))).create()
    try:
        with pytest.raises(RuntimeUnavailableError, match="numpy is not installed"):
            runtime.load(blazeface_model)
    finally:
        runtime.close()

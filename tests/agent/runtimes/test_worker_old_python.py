"""The worker under a real old interpreter: Python 3.6 (JetPack 4.6's) and 3.7 (Mendel's).

The interpreters are not part of the project: `EDGEFLEET_TEST_OLD_PYTHONS` names them
(separated by the path separator), each with numpy and a vendor runtime installed, e.g. a venv
of CPython 3.6 with `numpy==1.19.5 onnxruntime==1.10.0` and one of 3.7 with
`numpy==1.21.6 tflite-runtime==2.11.0`. Without it these tests are skipped and vermin's static
check (test_worker_python36.py) remains the proof.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from agent.runtimes.base import Runtime
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.worker.launch import WorkerLaunch, probe_in_worker
from agent.runtimes.worker.proxy import worker_runtime_class

OLD_PYTHONS = [p for p in os.environ.get("EDGEFLEET_TEST_OLD_PYTHONS", "").split(os.pathsep) if p]


def version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not OLD_PYTHONS, reason="EDGEFLEET_TEST_OLD_PYTHONS names no interpreter")
@pytest.mark.parametrize("python", OLD_PYTHONS)
def test_the_worker_runs_under_an_old_python_and_matches_the_agent(
    python, tmp_path, blazeface_model, centerface_model
) -> None:
    assert version_of(python) < (3, 8), f"{python} is not an old interpreter"
    launch = WorkerLaunch(python=python, shm_dir=tmp_path)
    cases: list[tuple[str, object, tuple[int, ...], type[Runtime]]] = [
        ("onnx", centerface_model, (1, 3, 96, 128), OnnxRuntime),
        ("litert", blazeface_model, (1, 128, 128, 3), LiteRTRuntime),
    ]
    ran = 0
    for key, model, shape, local_class in cases:
        if not probe_in_worker(key, launch).available:
            continue
        worker = worker_runtime_class(key, launch).create(num_threads=1)
        local = local_class(num_threads=1)
        try:
            worker.load(model, input_shape=shape)  # type: ignore[arg-type]
            local.load(model, input_shape=shape)  # type: ignore[arg-type]
            tensor = np.random.default_rng(2).uniform(0, 1, shape).astype(np.float32)
            for got, want in zip(worker.infer(tensor), local.infer(tensor), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            ran += 1
        finally:
            worker.close()
            local.close()
    assert ran, f"{python} has neither onnxruntime nor a TFLite interpreter"

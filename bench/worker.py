"""Runtime workers: the same model in-process and in a worker process, in the same run.

For BlazeFace on LiteRT and CenterFace on ONNX Runtime, two detectors are built from the
model's shipped bundle spec: one on the in-process plug-in, one on a worker started with this
interpreter (what a device profile's `/usr/bin/python3` would be). Each then detects on the
same 640x480 camera frame, alternated call by call so that drift on a shared machine hits both
alike, after a few warm-up calls. The worker path includes everything a frame costs there:
preprocessing into shared memory, the request on the pipe, the reply and the outputs copied out.

Targets: the worker adds at most 1 ms per frame to BlazeFace, and runs CenterFace at 95 % or
more of the in-process rate. Prints one line per model and ends with one `RESULT` line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from agent.detect.detector import Detector
from agent.detect.preprocess import input_shape
from agent.runtimes.base import Runtime, load_runtime_class
from agent.runtimes.worker.launch import WorkerLaunch
from agent.runtimes.worker.proxy import worker_runtime_class
from controller.demo.sample_video import astronaut_frame
from controller.release.recipes import example_spec

# name -> (bundle spec, runtime)
MODELS = {"blazeface": ("blazeface-short", "litert"), "centerface": ("centerface", "onnx")}
OVERHEAD_MS_TARGET = 1.0
RATIO_TARGET = 0.95
WARM_UP_CALLS = 5
MIN_ROUNDS = 15


def _detector(spec_name: str, runtime: Runtime) -> Detector:
    spec = example_spec(spec_name)
    model = next(Path(v.model) for v in spec.variants if v.runtime == runtime.KEY)
    runtime.load(model, input_shape=input_shape(spec.input))
    return Detector(runtime, spec.input, spec.postprocess, spec.labels)


def _median_pair(
    local: Callable[[], object], worker: Callable[[], object], rounds: int, budget_s: float
) -> tuple[float, float]:
    for _ in range(WARM_UP_CALLS):
        local(), worker()
    local_ms: list[float] = []
    worker_ms: list[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(rounds):
        for call, times in ((local, local_ms), (worker, worker_ms)):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000.0)
        if len(local_ms) >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
    return statistics.median(local_ms), statistics.median(worker_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=400, help="most rounds per model")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per model")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads")
    parser.add_argument("--python", default=sys.executable, help="the worker's interpreter")
    args = parser.parse_args()

    frame, _ = astronaut_frame((640, 480))
    launch = WorkerLaunch(python=args.python)
    results: dict[str, str] = {}
    verdicts: list[bool] = []
    for short, (spec_name, key) in MODELS.items():
        local_class = load_runtime_class(key)
        if local_class is None:
            print(f"skip {short}: {key} is not installed")
            continue
        local_runtime = local_class(num_threads=args.threads)
        worker_runtime = worker_runtime_class(key, launch).create(num_threads=args.threads)
        with local_runtime, worker_runtime:
            local = _detector(spec_name, local_runtime)
            worker = _detector(spec_name, worker_runtime)
            same = [(d.label, round(d.score, 4)) for d in local.detect(frame)] == [
                (d.label, round(d.score, 4)) for d in worker.detect(frame)
            ]
            local_ms, worker_ms = _median_pair(
                partial(local.detect, frame),
                partial(worker.detect, frame),
                args.rounds,
                args.budget,
            )
        overhead = worker_ms - local_ms
        ratio = local_ms / worker_ms
        ok = same and (overhead <= OVERHEAD_MS_TARGET if short == "blazeface" else ratio >= 0.95)
        verdicts.append(ok)
        print(
            f"{short:10s} {key:6s} in-process {local_ms:8.2f} ms  worker {worker_ms:8.2f} ms  "
            f"overhead {overhead:6.2f} ms  ratio {ratio:5.3f}  same detections: {same}  "
            f"{'met' if ok else 'MISSED'}"
        )
        results[f"{short}_inprocess_ms"] = f"{local_ms:.2f}"
        results[f"{short}_worker_ms"] = f"{worker_ms:.2f}"
        if short == "blazeface":
            results["blazeface_worker_overhead_ms"] = f"{overhead:.2f}"
        else:
            results["centerface_worker_ratio"] = f"{ratio:.3f}"
    results["targets_met"] = f"{sum(verdicts)}/{len(verdicts)}"
    order = ["blazeface_worker_overhead_ms", "centerface_worker_ratio"]
    line = [f"{k}={results.pop(k)}" for k in order if k in results]
    line += [f"{k}={v}" for k, v in results.items()]
    print("RESULT " + " ".join(line))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

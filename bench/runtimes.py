"""Runtime plugins: the runtime called directly against the agent's whole detection path.

For each model and each runtime here that loads it, the same run measures the median latency of
`runtime.infer` on a prepared input tensor (raw) and of `Detector.detect` on a camera frame
(plugin: letterbox + infer + decode + mapping back to the frame), interleaved so that drift on
a shared machine hits both alike, after a few warm-up calls of each. The raw tensor is made by
the same preprocessing beforehand and is excluded from raw; whatever copy the runtime itself makes
of its input (LiteRT's set_tensor, OpenCV's NHWC→NCHW transpose) is in both. The plugin line
also shows the median of each stage the detector timed, so the overhead can be located.
Targets: the plugin path adds at most 1 ms to BlazeFace at its 128x128 input and at most 5 % to
CenterFace (640x480) and SSD-MobileNet-v2 (300x300).
Prints one line per pair and ends with one `RESULT` line.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from agent.detect.detector import Detector, StageTimes
from agent.detect.preprocess import input_shape, letterbox
from agent.runtimes.base import Runtime, RuntimeUnavailableError, load_runtime_class
from controller.demo.sample_video import astronaut_frame
from controller.release.recipes import example_spec
from ota.build import BundleSpec

# model -> (bundle spec, short name, runtimes to try with the model file each one reads)
MODELS = {
    "blazeface": ("blazeface-short", ("litert", "openvino", "opencv")),
    "centerface": ("centerface", ("onnx", "openvino", "opencv")),
    "ssd": ("ssd-mobilenet-v2", ("openvino",)),
}
# the plugin path may add this much: an absolute budget for tiny models, a share for the rest
OVERHEAD_MS_TARGET = {"blazeface": 1.0}
OVERHEAD_SHARE_TARGET = 0.05


def _model_file(spec: BundleSpec, runtime: str) -> Path:
    """The file a runtime reads: its own variant, else the first variant in a format it reads."""
    own = [v for v in spec.variants if v.runtime == runtime]
    if own:
        return Path(own[0].model)
    return Path(spec.variants[0].model)


def _load(key: str, spec: BundleSpec, threads: int) -> Runtime | None:
    runtime_class = load_runtime_class(key)
    if runtime_class is None:
        return None
    runtime = runtime_class(num_threads=threads)
    try:
        runtime.load(_model_file(spec, key), input_shape=input_shape(spec.input))
    except RuntimeUnavailableError as exc:
        print(f"skip {spec.name} {key}: {exc}")
        return None
    return runtime


# calls of each before timing: the first ones carry one-off setup (allocation, kernel choice)
WARM_UP_CALLS = 3
# rounds timed even past the budget, so a slow model's median still rests on enough samples
MIN_ROUNDS = 15


def _median_pair(
    raw: Callable[[], object],
    plugin: Callable[[], object],
    *,
    rounds: int,
    budget_s: float,
    after_plugin: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
    """Median ms of each callable, alternated, for `rounds` or until `budget_s` has passed.

    `after_plugin` runs after each timed plugin call, outside the timing.
    """
    for _ in range(WARM_UP_CALLS):
        raw(), plugin()
    raw_ms: list[float] = []
    plugin_ms: list[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(rounds):
        start = time.perf_counter()
        raw()
        raw_ms.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        plugin()
        plugin_ms.append((time.perf_counter() - start) * 1000.0)
        after_plugin()
        if len(raw_ms) >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
    return statistics.median(raw_ms), statistics.median(plugin_ms)


def _record_stages(detector: Detector, stages: list[StageTimes]) -> None:
    stages.append(detector.last_times)


def _median(stages: list[StageTimes], field: str) -> float:
    return statistics.median(getattr(times, field) for times in stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="most rounds per pair")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per pair")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads")
    args = parser.parse_args()

    frame, _ = astronaut_frame((640, 480))
    results: dict[str, str] = {}
    verdicts = []
    for short, (spec_name, keys) in MODELS.items():
        spec = example_spec(spec_name)
        for key in keys:
            runtime = _load(key, spec, args.threads)
            if runtime is None:
                continue
            with runtime:
                detector = Detector(runtime, spec.input, spec.postprocess, spec.labels)
                details = runtime.input_details()
                tensor, _ = letterbox(
                    frame,
                    spec.input,
                    quantization=details.quantization if details.quantized else None,
                )
                tensor = np.ascontiguousarray(tensor)
                stages: list[StageTimes] = []
                raw_ms, plugin_ms = _median_pair(
                    partial(runtime.infer, tensor),
                    partial(detector.detect, frame),
                    rounds=args.rounds,
                    budget_s=args.budget,
                    after_plugin=partial(_record_stages, detector, stages),
                )
            overhead = plugin_ms - raw_ms
            limit = OVERHEAD_MS_TARGET.get(short, raw_ms * OVERHEAD_SHARE_TARGET)
            ok = overhead <= limit
            verdicts.append(ok)
            name = f"{short}_{key}"
            print(
                f"{name:22s} raw {raw_ms:8.2f} ms  plugin {plugin_ms:8.2f} ms  "
                f"overhead {overhead:6.2f} ms ({overhead / raw_ms:6.1%}), "
                f"target <= {limit:.2f} ms: {'met' if ok else 'MISSED'}; "
                f"stages pre {_median(stages, 'preprocess_ms'):.2f} "
                f"infer {_median(stages, 'infer_ms'):.2f} "
                f"post {_median(stages, 'postprocess_ms'):.2f} ms"
            )
            results[f"{name}_raw_ms"] = f"{raw_ms:.2f}"
            results[f"{name}_plugin_ms"] = f"{plugin_ms:.2f}"
            results[f"{name}_overhead_ms"] = f"{overhead:.2f}"
    results["targets_met"] = f"{sum(verdicts)}/{len(verdicts)}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()

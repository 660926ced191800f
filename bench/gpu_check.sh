#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, run CenterFace through the agent's runtime plugins
# on ONNX Runtime CUDA (and ONNX Runtime's TensorRT provider and the TensorRT plugin when
# present), compare every path with ONNX Runtime on the CPU (matched boxes IoU >= 0.9, scores
# within 0.05) and print one RESULT line. Exits non-zero on a missing piece or a mismatch.
#
#   bench/gpu_check.sh                      # fresh venv in .venv-gpu, packages from PyPI
#   GPU_CHECK_PYTHON=/opt/py/bin/python bench/gpu_check.sh   # use an interpreter that already
#                                           # has the project and onnxruntime-gpu installed
# EDGEFLEET_MODEL_CACHE points at a model cache that already holds centerface (offline hosts).
set -euo pipefail

die() { echo "gpu_check: $*" >&2; exit 1; }
REPO=$(cd "$(dirname "$0")/.." && pwd)

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi -L | grep -q GPU || die "nvidia-smi lists no GPU"

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    PY=$GPU_CHECK_PYTHON
else
    VENV=${GPU_CHECK_VENV:-$REPO/.venv-gpu}
    python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
    PY=$VENV/bin/python
    "$PY" -m pip install -q --upgrade pip || die "pip upgrade failed (no registry?)"
    # the agent extra without the CPU onnxruntime: onnxruntime-gpu provides the same module
    "$PY" -m pip install -q -e "$REPO[agent,demo]" pyyaml || die "installing the project failed"
    "$PY" -m pip install -q onnxruntime-gpu || die "installing onnxruntime-gpu failed"
    # optional: TensorRT and CUDA bindings for the TensorRT plugin and ORT's TensorRT provider
    "$PY" -m pip install -q tensorrt cuda-python \
        || echo "gpu_check: tensorrt/cuda-python not installable; TensorRT paths will be skipped" >&2
fi

cd "$REPO"
exec "$PY" - <<'PY'
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import input_shape
from agent.runtimes.base import RuntimeOptions, probe_runtime
from agent.runtimes.onnx import OnnxRuntime
from controller.release.models import fetch_model
from controller.release.recipes import example_spec
from controller.demo.sample_video import Placement, astronaut_frame, render_placement

MIN_IOU, MAX_GAP, RUNS = 0.9, 0.05, 20


def fail(message):
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(1)


spec = example_spec("centerface")
model = fetch_model("centerface")
shape = input_shape(spec.input)
post = spec.postprocess.model_copy(update={"score_threshold": 0.3, "max_detections": 1000})
frames = {name: render_placement(Placement(name), (640, 480))[0] for name in ("coffee", "rocket")}
frames["astronaut"] = astronaut_frame((640, 480))[0]
frames["astronaut-close"] = render_placement(
    Placement("astronaut", zoom=2.0, anchor=(0.44, 0.25), at=(0.62, 0.42)), (640, 480)
)[0]

import onnxruntime as ort  # noqa: E402

providers = ort.get_available_providers()
print(f"onnxruntime {ort.__version__}; providers {providers}", file=sys.stderr)
if "CUDAExecutionProvider" not in providers:
    fail("onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu missing or CUDA libs absent)")

runtimes = {}
for name, device in (("cpu", "CPU"), ("ort_cuda", "CUDA"), ("ort_trt", "TensorRT")):
    if device == "TensorRT" and "TensorrtExecutionProvider" not in providers:
        print("gpu_check: no TensorrtExecutionProvider; ort_trt skipped", file=sys.stderr)
        continue
    runtime = OnnxRuntime.create(num_threads=4, options=RuntimeOptions(device=device))
    runtime.load(model, input_shape=shape)
    wanted = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider",
              "TensorRT": "TensorrtExecutionProvider"}[device]
    if runtime.providers[0] != wanted:
        fail(f"{name}: session runs on {runtime.providers}, not {wanted}")
    runtimes[name] = runtime

trt_probe = probe_runtime("tensorrt")
print(f"tensorrt plugin: {trt_probe.reason}", file=sys.stderr)
if trt_probe.available:
    from agent.runtimes.tensorrt import TensorRTRuntime

    cache = Path(tempfile.mkdtemp(prefix="edgefleet-engines-"))
    for attempt in ("build", "cached"):
        plugin = TensorRTRuntime.create(
            options=RuntimeOptions(device="CUDA", precision="fp16", cache_dir=cache)
        )
        started = time.perf_counter()
        plugin.load(model, input_shape=shape)
        print(f"tensorrt plugin {attempt}: {time.perf_counter() - started:.1f} s "
              f"engine={plugin.engine_path}", file=sys.stderr)
        if attempt == "build":
            plugin.close()
    runtimes["trt_plugin"] = plugin

detectors = {k: Detector(r, spec.input, post, spec.labels) for k, r in runtimes.items()}
results = {k: {f: d.detect(img) for f, img in frames.items()} for k, d in detectors.items()}
pairs, problems = 0, []
for key, found in results.items():
    for frame_name, dets in found.items():
        ref = results["cpu"][frame_name]
        for one, other, side in ((dets, ref, "cpu"), (ref, dets, key)):
            for det in one:
                if det.score < post.score_threshold + MAX_GAP:
                    continue  # its partner may sit just under the threshold
                if not other:
                    problems.append(f"{key}/{frame_name}: {det} has no partner in {side}")
                    continue
                ious = iou_matrix(np.array([det.box]), np.array([o.box for o in other]))[0]
                best = int(np.argmax(ious))
                gap = abs(other[best].score - det.score)
                if ious[best] < MIN_IOU or gap > MAX_GAP:
                    problems.append(f"{key}/{frame_name}: IoU {ious[best]:.3f} gap {gap:.3f}")
                pairs += 1
if not results["cpu"]["astronaut"]:
    fail("the CPU reference finds no face on the astronaut photo")

latency = {}
for key, detector in detectors.items():
    times = []
    for _ in range(RUNS):
        detector.detect(frames["astronaut"])
        times.append(detector.last_times.infer_ms)
    latency[key] = statistics.median(times)
for problem in problems:
    print(f"gpu_check: mismatch {problem}", file=sys.stderr)
gpu = ort.get_device()
fields = " ".join(f"{k}_ms={v:.2f}" for k, v in latency.items())
speedup = latency["cpu"] / latency["ort_cuda"]
print(f"RESULT paths={','.join(runtimes)} device={gpu} pairs={pairs} mismatches={len(problems)} "
      f"{fields} cuda_speedup={speedup:.1f}")
sys.exit(1 if problems else 0)
PY

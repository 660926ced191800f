"""The camera pipeline's processed frame rate against the runtime's own inference rate.

Same frames, same loaded model, same run:
- raw: `runtime.infer` alone on the already preprocessed tensors, back to back;
- pipeline: the agent's CameraWorker (newest-frame hand-off, preprocess, infer, decode,
  filters, tracker, event sink) fed by a source that always has a fresh frame.
The ratio is measured with CenterFace at 640x480 on ONNX Runtime; the per-frame overhead with
BlazeFace on LiteRT, where inference is short enough for overhead to show. RSS: a child
process running the whole agent pipeline with CenterFace, against a bare child holding only
ONNX Runtime and the same model. Prints one `RESULT` line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.detect.detector import Detector
from agent.detect.preprocess import input_shape, letterbox
from agent.pipeline.settings import CameraSettings
from agent.pipeline.workers import ActiveModel, Pipeline
from agent.runtimes.base import Runtime
from controller.demo.sample_video import DEFAULT_SCENES, render_placement
from controller.release.models import fetch_model
from controller.release.recipes import example_spec

SIZE = (640, 480)


class FreshFrames:
    """A frame source that always has a new frame: the pipeline never waits on a camera."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self._seq = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]:
        with self._lock:
            self._seq = max(self._seq, after_seq) + 1
            return self._seq, self.frames[self._seq % len(self.frames)], time.time()


def frames() -> list[np.ndarray]:
    return [render_placement(p, SIZE)[0] for _, p in DEFAULT_SCENES]


def load(name: str, threads: int) -> tuple[Runtime, Detector]:
    spec = example_spec(name)
    if name == "centerface":
        from agent.runtimes.onnx import OnnxRuntime

        runtime: Runtime = OnnxRuntime(num_threads=threads, providers=["CPUExecutionProvider"])
        runtime.load(fetch_model(name), input_shape=input_shape(spec.input))
    else:
        from agent.runtimes.litert import LiteRTRuntime

        runtime = LiteRTRuntime(num_threads=threads)
        runtime.load(fetch_model(name))
    return runtime, Detector(runtime, spec.input, spec.postprocess, spec.labels)


def raw_fps(runtime: Runtime, detector: Detector, images: list[np.ndarray], secs: float) -> float:
    tensors = [letterbox(f, detector.input_spec)[0].copy() for f in images]
    runtime.infer(tensors[0])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < secs:
        runtime.infer(tensors[count % len(tensors)])
        count += 1
    return count / (time.perf_counter() - start)


def pipeline_fps(detector: Detector, images: list[np.ndarray], secs: float) -> float:
    camera = CameraSettings(id="bench", source="bench")
    events: list[Any] = []
    pipe = Pipeline(
        [camera], lambda c, evs, m: events.extend(evs), lambda: None, {"bench": FreshFrames(images)}
    )
    pipe.swap(ActiveModel(detector, "bench", 1, "0" * 64, "bench"))
    worker = pipe.workers[0]
    pipe.start()
    time.sleep(min(1.0, secs / 4))  # warm-up frames are not counted
    first, start = worker.counters.frames_processed, time.perf_counter()
    time.sleep(secs)
    done, elapsed = worker.counters.frames_processed - first, time.perf_counter() - start
    pipe.stop()
    return done / elapsed


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(kind: str, threads: int) -> None:
    """Hold ONNX Runtime and CenterFace (bare) or run the agent's pipeline with it."""
    images = frames()
    runtime, detector = load("centerface", threads)
    if kind == "bare":
        for image in images:
            runtime.infer(letterbox(image, detector.input_spec)[0])
    else:
        import agent.daemon  # noqa: F401  everything an agent process imports
        from agent.link.outbox import Outbox

        with tempfile.TemporaryDirectory() as tmp:
            outbox = Outbox(Path(tmp) / "outbox.sqlite")
            pipeline_fps(detector, images, 3.0)
            outbox.put("t", b"x" * 1000)
            outbox.close()
    print(json.dumps({"rss_mb": rss_mb()}))


def child_rss(kind: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["bare", "agent"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    images = frames()
    runtime, detector = load("centerface", args.threads)
    raw = raw_fps(runtime, detector, images, args.seconds)
    piped = pipeline_fps(detector, images, args.seconds)
    runtime.close()
    bf_runtime, bf_detector = load("blazeface-short", 1)
    bf_raw = raw_fps(bf_runtime, bf_detector, images, args.seconds / 2)
    bf_piped = pipeline_fps(bf_detector, images, args.seconds / 2)
    bf_runtime.close()
    overhead_ms = max(0.0, 1000.0 / bf_piped - 1000.0 / bf_raw)
    extra_rss = child_rss("agent", args.threads) - child_rss("bare", args.threads)
    print(
        f"# centerface 640x480 onnx: raw {raw:.1f} fps, pipeline {piped:.1f} fps; "
        f"blazeface litert: raw {bf_raw:.1f} fps, pipeline {bf_piped:.1f} fps"
    )
    print(
        f"RESULT pipeline_fps={piped:.2f} raw_fps={raw:.2f} ratio={piped / raw:.3f} "
        f"overhead_ms={overhead_ms:.2f} rss_mb={extra_rss:.1f}"
    )


if __name__ == "__main__":
    main()

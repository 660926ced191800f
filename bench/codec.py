"""Wire-contract decode cost against plain `json.loads` of the same bytes, in the same run.

The controller decodes every detection batch it ingests; this measures what validation adds
on top of parsing. Prints one `RESULT` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from protocol.codec import decode, encode
from protocol.messages import Box, Detection, DetectionBatch


def sample_batch(detections: int) -> bytes:
    batch = DetectionBatch(
        device="bench-cam-01",
        model="blazeface-short@1",
        runtime="litert",
        detections=tuple(
            Detection(
                camera="cam0",
                track_id=i,
                label="face",
                score=0.9,
                box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4),
                ts=1_800_000_000.0 + i,
            )
            for i in range(detections)
        ),
    )
    return encode(batch)


def rate(fn: Callable[[bytes], object], payload: bytes, seconds: float) -> float:
    """Messages per second, median of five rounds."""
    rounds = []
    for _ in range(5):
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 5:
            for _ in range(100):
                fn(payload)
            count += 100
        rounds.append(count / elapsed)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detections", type=int, default=20, help="detections per batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    payload = sample_batch(args.detections)
    baseline = rate(json.loads, payload, args.seconds)
    ours = rate(lambda p: decode(p, DetectionBatch), payload, args.seconds)
    print(
        f"RESULT payload_bytes={len(payload)} detections={args.detections} "
        f"json_loads_msg_s={baseline:.0f} decode_msg_s={ours:.0f} ratio={ours / baseline:.2f} "
        f"decode_det_s={ours * args.detections:.0f}"
    )


if __name__ == "__main__":
    main()

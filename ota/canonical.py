"""Signed JSON: the one byte form that signatures cover, and the strict reading of documents
whose bytes arrive from outside (manifests, signature lists, root documents).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN.

    Raises ValueError for NaN or Infinity, TypeError for what JSON cannot hold.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def check_strict_json(data: bytes) -> None:
    """Refuse what pydantic's JSON parser would let through: NaN or Infinity, and an object
    that repeats a key (two readers could each believe a different value).

    Raises ValueError (UnicodeDecodeError for bytes that are not UTF-8).
    """
    json.loads(
        data.decode("utf-8"),
        parse_constant=_refuse_constant,
        object_pairs_hook=_refuse_duplicate_keys,
    )


def first_problem(exc: ValueError) -> str:
    """The first thing wrong, where it is for a validation error: short enough for a report."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "document"
        return f"{where}: {err['msg']}"
    return str(exc)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("an object repeats a key")
    return out

"""Bundle specs as operators write them: YAML, with `pinned:NAME` for fetched model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controller.model_fetch import fetch_model
from ota.build import BundleSpec

PINNED_PREFIX = "pinned:"
SPECS_DIR = Path(__file__).resolve().parent / "bundle_specs"


def _resolve(value: str, cache_dir: Path | None) -> str:
    if value.startswith(PINNED_PREFIX):
        return str(fetch_model(value.removeprefix(PINNED_PREFIX), cache_dir))
    return value


def resolve_spec(raw: dict[str, Any], cache_dir: Path | None = None) -> BundleSpec:
    """Validate a spec mapping, fetching every `pinned:` model it names.

    Raises pydantic.ValidationError, controller.model_fetch.ModelFetchError.
    """
    data = dict(raw)
    variants = []
    for variant in data.get("variants") or []:
        if isinstance(variant, dict):
            variant = dict(variant)
            if isinstance(variant.get("model"), str):
                variant["model"] = _resolve(variant["model"], cache_dir)
            extra = variant.get("extra_files")
            if isinstance(extra, list):
                variant["extra_files"] = [
                    _resolve(e, cache_dir) if isinstance(e, str) else e for e in extra
                ]
        variants.append(variant)
    data["variants"] = variants
    return BundleSpec.model_validate(data)


def load_spec(path: Path, cache_dir: Path | None = None, **overrides: Any) -> BundleSpec:
    """Read a YAML spec file; `overrides` replace top-level fields (e.g. version).

    Raises OSError, ValueError, pydantic.ValidationError, ModelFetchError.
    """
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a bundle spec must be a mapping")
    raw.update(overrides)
    return resolve_spec(raw, cache_dir)


def example_spec(name: str, cache_dir: Path | None = None, **overrides: Any) -> BundleSpec:
    """One of the specs shipped in `controller/bundle_specs/`. Raises as load_spec does."""
    return load_spec(SPECS_DIR / f"{name}.yaml", cache_dir, **overrides)

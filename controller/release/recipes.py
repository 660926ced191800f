"""Bundle specs as operators write them: YAML, with `pinned:NAME` for fetched model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from controller.release.models import default_cache_dir, fetch_model
from controller.release.variants import GenerateSpec, generate_variants
from ota.build import BundleSpec

PINNED_PREFIX = "pinned:"
# generated variants are cached beside the fetched models
VARIANT_CACHE = "variants"
GenerateList = TypeAdapter(list[GenerateSpec])
# stands in for the variants while the rest of a generate-only spec is validated
_PLACEHOLDER = {"runtime": "openvino", "model": "generated"}
SPECS_DIR = Path(__file__).resolve().parent / "bundle_specs"


def _resolve(value: str, cache_dir: Path | None) -> str:
    if value.startswith(PINNED_PREFIX):
        return str(fetch_model(value.removeprefix(PINNED_PREFIX), cache_dir))
    return value


def resolve_spec(
    raw: dict[str, Any], cache_dir: Path | None = None, base_dir: Path | None = None
) -> BundleSpec:
    """Validate a spec mapping, fetching every `pinned:` model it names and generating the
    variants its `generate:` list asks for (relative `from:` files are under `base_dir`).

    Raises pydantic.ValidationError, controller.model_fetch.ModelFetchError,
    controller.variants.VariantGenerationError.
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
    requests = data.pop("generate", None) or []
    if not requests:
        return BundleSpec.model_validate(data)

    # validate what exists first, so a spec error is reported before a slow conversion
    generate = GenerateList.validate_python(requests)
    partial = BundleSpec.model_validate({**data, "variants": variants or [_PLACEHOLDER]})
    existing = list(partial.variants) if variants else []
    base = base_dir or Path.cwd()

    def locate(value: str) -> Path:
        return base / _resolve(value, cache_dir)

    generated = generate_variants(
        generate,
        existing,
        partial.input,
        locate,
        (cache_dir or default_cache_dir()) / VARIANT_CACHE,
    )
    return partial.model_copy(update={"variants": (*existing, *generated)})


def load_spec(path: Path, cache_dir: Path | None = None, **overrides: Any) -> BundleSpec:
    """Read a YAML spec file; `overrides` replace top-level fields (e.g. version).

    Raises OSError, ValueError, pydantic.ValidationError, ModelFetchError,
    VariantGenerationError.
    """
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a bundle spec must be a mapping")
    raw.update(overrides)
    return resolve_spec(raw, cache_dir, Path(path).resolve().parent)


def example_spec(name: str, cache_dir: Path | None = None, **overrides: Any) -> BundleSpec:
    """One of the specs shipped in `controller/bundle_specs/`. Raises as load_spec does."""
    return load_spec(SPECS_DIR / f"{name}.yaml", cache_dir, **overrides)

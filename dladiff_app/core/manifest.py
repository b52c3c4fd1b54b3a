"""``manifest.json``: the machine-readable record of one protected album, and its schema check.

The schema lives in ``dladiff_app/schemas/manifest.schema.json`` (JSON Schema 2020-12). The app
does not depend on the ``jsonschema`` package, so this module carries a small validator for the
keywords that schema uses; ``validate_manifest`` fails loudly on a keyword it does not know, so the
schema cannot silently grow past what is checked.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dladiff_app import __version__
from dladiff_app.core.names import json_text

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"
MANIFEST_KIND = "dladiff-album-manifest"
# 2: ``unprotected`` (photos no shield could change, e.g. no face found) and each photo's
# ``source_sha256``; a photo may be listed once per protection at different settings.
MANIFEST_VERSION = 2


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """JSON has no Infinity/NaN (an identical photo has PSNR = inf): such numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def build_manifest(*, album: str, job: dict[str, Any], device: dict[str, str],
                   models: dict[str, Any], photos: Iterable[dict[str, Any]],
                   failed: Iterable[dict[str, str]],
                   unprotected: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Assemble an album manifest. ``job`` holds ``preset, eps, layers, settings, export`` of
    the latest run; ``photos`` are the per-photo records the runner journaled (one per
    protection; each carries its own preset and budget); ``unprotected`` the photos no shield
    could change (``source, reason, output`` where output is the ``-unprotected`` export or
    None)."""
    doc = {
        "kind": MANIFEST_KIND,
        "schema_version": MANIFEST_VERSION,
        "app_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "album": album,
        "job": job,
        "device": device,
        "models": models,
        "photos": sorted(photos, key=lambda p: (p["source"], p["output"])),
        "failed": sorted(failed, key=lambda p: p["source"]),
        "unprotected": sorted(unprotected, key=lambda p: p["source"]),
    }
    return json_safe(doc)  # type: ignore[no-any-return]


def manifest_text(doc: dict[str, Any]) -> str:
    return json_text(doc, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------- validation
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}
_KNOWN = {"$schema", "$id", "$defs", "title", "description", "type", "required", "properties",
          "additionalProperties", "items", "enum", "const", "minimum", "maximum",
          "exclusiveMinimum", "minLength", "pattern", "$ref"}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str,
           errors: list[str]) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {where} are not supported")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"only local $defs references are supported, got {ref}")
        _check(value, root["$defs"][ref.split("/")[-1]], root, where, errors)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{where}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= exclusive minimum {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing required field {name!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                _check(item, props[name], root, f"{where}.{name}", errors)
            elif extra is False:
                errors.append(f"{where}: unexpected field {name!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{where}.{name}", errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{i}]", errors)


def validate_manifest(doc: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Problems found checking ``doc`` against the manifest schema (empty list = valid)."""
    schema = schema if schema is not None else load_schema()
    errors: list[str] = []
    _check(doc, schema, schema, "manifest", errors)
    return errors

"""``manifest.json``: the machine-readable record of one protected album.

Its format is published as ``dladiff_app/schemas/manifest.schema.json`` (JSON Schema 2020-12);
the tests check every manifest the app writes against it with the reference validator.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Any

from dladiff_app import __version__
from dladiff_app.core.names import json_text

MANIFEST_KIND = "dladiff-album-manifest"
# 2: ``unprotected`` (photos no shield could change, e.g. no face found) and each photo's
# ``source_sha256``; a photo may be listed once per protection at different settings.
MANIFEST_VERSION = 2


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

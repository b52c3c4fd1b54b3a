"""Where the app's resources (icon, desktop entry) are.

They live in the repository's top-level ``resources/`` folder (design card). A source checkout
or editable install finds them next to the package; a PyInstaller bundle carries them as
``resources/`` inside the bundle (``packaging/dladiff.spec``). A plain wheel install has no icon
file, and callers treat a missing resource as "use the default".
"""

from __future__ import annotations

import sys
from pathlib import Path


def resource_path(name: str) -> Path | None:
    candidates = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "resources" / name)
    candidates.append(Path(__file__).resolve().parents[2] / "resources" / name)
    for path in candidates:
        if path.is_file():
            return path
    return None

"""DLADiff: protect face photos from AI identity copying.

Layers (enforced by import-linter, see pyproject.toml):
``core`` (no Qt, no torch) <- ``engine`` (torch & co, no Qt) <- ``gui`` / ``cli`` <- ``app``.
"""

__version__ = "0.1.0"

"""File names that are not valid UTF-8 (cards written by cameras and older systems).

Python keeps the undecodable bytes of such a name as lone surrogates (U+DC80-U+DCFF, PEP 383):
``os.fsencode`` turns the ``str`` back into the exact bytes, so the ``Path`` still opens the file,
but the ``str`` cannot be encoded as UTF-8. Everything that writes names out goes through here:

- :func:`json_text` for JSON the program reads back (journal, manifest, JSON lines): a lone
  surrogate is written as its ``\\uXXXX`` escape, which ``json.loads`` turns back into the same
  character, so the name survives byte for byte while the file stays valid UTF-8;
- :func:`readable` for text meant for people (terminal, HTML report): each undecodable byte is
  shown as ``\\xNN``.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` whose result always encodes as
    UTF-8: lone surrogates (only possible inside strings) are written as JSON escapes."""
    return _SURROGATE.sub(_escaped, json.dumps(value, ensure_ascii=False, **options))


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def readable(text: str) -> str:
    """``text`` with every undecodable file-name byte shown as ``\\xNN`` (``caf\\xe9.jpg``):
    printable and encodable anywhere; unchanged when the text is valid Unicode."""
    return _SURROGATE.sub(_shown, text)

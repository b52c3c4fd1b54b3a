"""Small helpers for sentences shown to people."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``counted(1, "photo")`` -> "1 photo", ``counted(3, "photo")`` -> "3 photos"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def was_were(n: int) -> str:
    return "was" if n == 1 else "were"

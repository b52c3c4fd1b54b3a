"""The face-region visibility figures (``core.visibility``) in words a person understands.

Shared by the viewer, the CLI's results table and report.html, so all three say the same thing.
The words follow the mean CIEDE2000 colour difference on the faces against the usual
just-noticeable difference (about 2.3); a structural (texture) change the colour difference
misses is named when the face's luma SSIM is below the project's target for an invisible
protection (issue 13: 0.97, what the Low preset measured).
"""

from __future__ import annotations

# A colour difference of about 2.3 (CIEDE2000) is the usual just-noticeable difference.
JND = 2.3
# Below this face SSIM the skin texture reads as changed even when the colours barely move.
TEXTURE_SSIM = 0.97
# (upper bound of the mean colour difference, words), mildest first.
_LEVELS = ((1.0, "not visible"), (JND, "barely visible"), (2 * JND, "visible up close"))
_WORST = "clearly visible"


def change_level(de_mean: float) -> str:
    """"not visible" / "barely visible" / "visible up close" / "clearly visible"."""
    for bound, words in _LEVELS:
        if de_mean < bound:
            return words
    return _WORST


def face_change_words(ssim: float | None, de_mean: float | None) -> str:
    """E.g. "Change on the face: barely visible (colour difference 1.6, visible from about
    2.3)"; empty when nothing was measured (no face, or a result from an older version)."""
    if de_mean is None:
        return ""
    text = (f"Change on the face: {change_level(de_mean)} (colour difference {de_mean:.1f}, "
            f"visible from about {JND:g})")
    if ssim is not None and ssim < TEXTURE_SSIM:
        text += f"; the skin texture changes (structure {ssim:.2f} of 1)"
    return text


def face_change_figures(ssim: float | None, de_mean: float | None,
                        de_p95: float | None) -> str:
    """The technical figures behind the words (one click away in the viewer)."""
    parts = []
    if ssim is not None:
        parts.append(f"face SSIM {ssim:.4f}")
    if de_mean is not None:
        parts.append(f"face ΔE2000 mean {de_mean:.2f}")
    if de_p95 is not None:
        parts.append(f"95th percentile {de_p95:.2f}")
    return " · ".join(parts)

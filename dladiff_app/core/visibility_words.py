"""The face-region visibility figures in words a person understands.

Shared by the viewer, the face preview, the CLI's results table and report.html, so all of them
say the same thing. The verdict follows the predicted visibility at 100% on a normal display
(``face_jnd``, in just-noticeable differences: the visible-difference model of
``engine.visible_diff``, which sees crease lines and blotches that averages miss). Mean CIEDE2000
and face SSIM stay as figures; for a record made before the visibility model existed, the words
fall back to the mean colour difference against its usual just-noticeable difference (about 2.3).
"""

from __future__ import annotations

# A colour difference of about 2.3 (CIEDE2000) is the usual just-noticeable difference.
JND = 2.3
# Below this face SSIM the skin texture reads as changed even when the colours barely move
# (only said for records without a visibility figure).
TEXTURE_SSIM = 0.97
# (upper bound of the predicted visibility in JND, words), mildest first.
_SEEN = ((1.0, "not visible at 100%"), (2.0, "barely visible at 100% (when flipping between "
                                               "the two)"),
         (4.0, "visible at 100%"))
_SEEN_WORST = "clearly visible"
# (upper bound of the mean colour difference, words), for records without ``face_jnd``.
_LEVELS = ((1.0, "not visible"), (JND, "barely visible"), (2 * JND, "visible up close"))
_WORST = "clearly visible"


def seen_level(jnd: float) -> str:
    """"not visible at 100%" / "barely visible ..." / "visible at 100%" / "clearly
    visible", from the predicted visibility in JND."""
    for bound, words in _SEEN:
        if jnd < bound:
            return words
    return _SEEN_WORST


def change_level(de_mean: float) -> str:
    """"not visible" / "barely visible" / "visible up close" / "clearly visible" from the mean
    colour difference (records without a visibility figure)."""
    for bound, words in _LEVELS:
        if de_mean < bound:
            return words
    return _WORST


def face_change_words(ssim: float | None, de_mean: float | None,
                      jnd: float | None = None) -> str:
    """E.g. "Change on the face: not visible at 100% (0.8 of what a person notices)"; empty
    when nothing was measured (no face, or a result from an older version)."""
    if jnd is not None:
        return (f"Change on the face: {seen_level(jnd)} (predicted {jnd:.1f} of the 1.0 a "
                f"person notices)")
    if de_mean is None:
        return ""
    text = (f"Change on the face: {change_level(de_mean)} (colour difference {de_mean:.1f}, "
            f"visible from about {JND:g})")
    if ssim is not None and ssim < TEXTURE_SSIM:
        text += f"; the skin texture changes (structure {ssim:.2f} of 1)"
    return text


def face_change_figures(ssim: float | None, de_mean: float | None,
                        de_p95: float | None, jnd: float | None = None) -> str:
    """The technical figures behind the words (one click away in the viewer)."""
    parts = []
    if jnd is not None:
        parts.append(f"visibility {jnd:.2f} JND")
    if ssim is not None:
        parts.append(f"face SSIM {ssim:.4f}")
    if de_mean is not None:
        parts.append(f"face ΔE2000 mean {de_mean:.2f}")
    if de_p95 is not None:
        parts.append(f"95th percentile {de_p95:.2f}")
    return " · ".join(parts)

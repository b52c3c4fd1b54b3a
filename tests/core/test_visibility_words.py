"""The words every surface shows for how visible a protection is."""

from __future__ import annotations

from dladiff_app.core.visibility_words import (
    face_change_figures,
    face_change_words,
    seen_level,
)


def test_the_verdict_follows_the_predicted_visibility_not_the_colour_difference() -> None:
    # A crease the mean colour difference cannot see (dE 0.02) is still called visible.
    words = face_change_words(0.999, 0.02, jnd=2.5)
    assert "visible at 100%" in words and "not visible" not in words
    # A change spread thinly (dE 1.9, over the old "barely visible" line) the eye does not see.
    assert "not visible at 100%" in face_change_words(0.98, 1.9, jnd=0.8)


def test_levels_in_order() -> None:
    assert [seen_level(v) for v in (0.5, 0.99, 1.0, 1.9, 2.0, 3.9, 4.0)] == [
        "not visible at 100%", "not visible at 100%",
        "barely visible at 100% (when flipping between the two)",
        "barely visible at 100% (when flipping between the two)",
        "visible at 100%", "visible at 100%", "clearly visible"]


def test_older_records_without_the_figure_fall_back_to_the_colour_difference() -> None:
    assert face_change_words(0.99, 0.5) == ("Change on the face: not visible (colour difference "
                                            "0.5, visible from about 2.3)")
    assert face_change_words(None, None) == ""
    assert face_change_figures(0.98, 1.0, 2.0, jnd=0.75).startswith("visibility 0.75 JND")

"""The album verdict's first words follow the measured faces: all hidden, some, or none."""

from __future__ import annotations

from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.verdict import album_verdict


def _photo(name: str, same: bool) -> PhotoResult:
    score = IdentityScore(encoder="sface", metric="cosine", value=0.9 if same else 0.1,
                          threshold=0.363, same_person=same)
    return PhotoResult(source=f"in/{name}", output=f"out/album/{name}", width=8, height=8,
                       seconds=1.0, scores=(score,), scores_after_sharing=(score,),
                       layers_done=("layer2",))


def test_none_hidden_is_not_protected_some_is_partly_all_is_protected() -> None:
    none = album_verdict([_photo("a.png", True), _photo("b.png", True)]).text
    assert "not protected against one-photo tools" in none and "0 of 2 faces" in none
    some = album_verdict([_photo("a.png", True), _photo("b.png", False)]).text
    assert "partly protected against one-photo tools" in some and "1 of 2 faces" in some
    every = album_verdict([_photo("a.png", False), _photo("b.png", False)])
    assert every.text.startswith("album: protected against one-photo tools") and every.zero_shot

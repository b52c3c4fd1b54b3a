"""The words every surface uses for identity scores, and the faces they are counted on."""

from __future__ import annotations

from dladiff_app.core.results import FaceResult, IdentityScore, PhotoResult
from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE, encoder_label, model_list

HIDDEN = IdentityScore("sface_int8", "cosine", 0.05, 0.363, False)
SEEN = IdentityScore("dlib", "euclidean", 0.41, 0.6, True)


def _photo(**kw: object) -> PhotoResult:
    return PhotoResult(source="/in/a.jpg", output="/out/a-protected.png", width=8, height=8,
                       seconds=1.0, **kw)  # type: ignore[arg-type]


def test_models_are_named_once_in_order_by_their_labels() -> None:
    assert model_list(["dlib_resnet", "sface_int8", "dlib", "edgeface", "sface"]) == \
        "dlib face recognition, SFace and EdgeFace"
    assert model_list(["edgeface", "dlib"]) == "EdgeFace and dlib face recognition"
    assert model_list(["arcface_buffalo_l"]) == "ArcFace (buffalo_l)"
    assert model_list([]) == ""
    assert encoder_label("clip_vit_h") == "CLIP (clip_vit_h)"


def test_the_note_names_what_the_scores_cannot_promise() -> None:
    assert "worked against" in UNSEEN_MODELS_NOTE and "never saw" in UNSEEN_MODELS_NOTE
    assert "High" in UNSEEN_MODELS_NOTE


def test_scored_faces_of_a_group_a_single_face_and_no_face() -> None:
    group = (FaceResult((0, 0, 4, 4), (HIDDEN,)), FaceResult((4, 4, 8, 8), (SEEN,), (SEEN,)))
    assert _photo(per_face=group, scores=(HIDDEN,)).scored_faces() == list(group)
    single = _photo(scores=(HIDDEN,), scores_after_sharing=(SEEN,)).scored_faces()
    assert [(f.scores, f.scores_after_sharing) for f in single] == [((HIDDEN,), (SEEN,))]
    assert _photo(faces=0).scored_faces() == []

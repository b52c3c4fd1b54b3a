"""Identity scores in words a person understands, the same on every surface (viewer, album
verdict, report.html, command line).

Every score comes from an encoder the zero-shot shield attacked: the scorer and the shield share
one ensemble (``engine/kit.py``). A "different person" from those models is measured, but it is
not a promise about face models the shield never saw. On the held-out benchmark
(``benchmarks/results/transfer_cpu.md``) two unseen ArcFace-family models still recognised
about half of the protected portraits at Medium and none at High, so the app says so wherever
it shows a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable

from dladiff_app.core.results import FaceResult, IdentityScore, PhotoResult

UNSEEN_MODELS_NOTE = (
    "These verdicts come from the face models the shield worked against. Face models it "
    "never saw, like those inside some attack tools, may still recognise a protected face; "
    "the High strength protects more, with a more visible change.")


def encoder_label(name: str) -> str:
    """A person-readable name for an identity encoder id (unknown ids are shown as they are)."""
    key = name.lower()
    if key.startswith("dlib"):
        return "dlib face recognition"
    for pack in ("buffalo_l", "antelopev2"):
        if key in (pack, f"arcface_{pack}"):
            return f"ArcFace ({pack})"
    if "clip" in key:
        return f"CLIP ({name})"
    if key.startswith("sface"):
        return "SFace"
    return {"edgeface": "EdgeFace", "facenet": "FaceNet"}.get(key, name)


def model_list(names: Iterable[str]) -> str:
    """ "dlib face recognition, SFace and EdgeFace": the distinct encoders of ``names``, in
    their first order, by their labels."""
    labels = list(dict.fromkeys(encoder_label(n) for n in names))
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def deciding_scores(face: FaceResult) -> tuple[IdentityScore, ...]:
    """The scores that decide whether ``face`` is hidden: after the sharing transform (what an
    attacker downloads), or on the file as written when sharing lost the face (no measured
    score after it)."""
    shared = face.scores_after_sharing
    return shared if any(s.same_person is not None for s in shared) else face.scores


def still_recognising(result: PhotoResult) -> list[str]:
    """Labels of the encoders that still read some face of ``result`` as the same person, in
    their first order: after the sharing transform (what an attacker downloads), or on the file
    as written for a face that sharing lost. Empty when every measured score says another
    person (or nothing was measured)."""
    names: list[str] = []
    for face in result.scored_faces():
        names.extend(s.encoder for s in deciding_scores(face) if s.same_person)
    return list(dict.fromkeys(encoder_label(n) for n in names))

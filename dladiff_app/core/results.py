"""Result records shared by the engine, the CLI, the GUI and the reports (plain data, JSON-able)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IdentityScore:
    """Identity similarity of one encoder between the clean and another image's subject face.

    ``metric`` is ``"cosine"`` (higher = more alike; same person when ``value >= threshold``) or
    ``"euclidean"`` (dlib; same person when ``value < threshold``). ``value`` is None when a face
    is missing in either image; ``note`` then says which.
    """

    encoder: str
    metric: str
    value: float | None
    threshold: float
    same_person: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.same_person is None:
            return "no face"
        return "same person" if self.same_person else "different person"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


@dataclass(frozen=True)
class FaceResult:
    """One face of the clean photo and how each encoder judges that same face in the protected
    copy (matched by position), on the file as written and after the sharing transform.

    ``box``: (x0, y0, x1, y1) in pixels of the clean photo as read (orientation applied), so a
    viewer can outline the face and compare the same face on both sides of a split.
    """

    box: tuple[float, float, float, float]
    scores: tuple[IdentityScore, ...] = ()
    scores_after_sharing: tuple[IdentityScore, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(float(v), 1) for v in self.box],
                "scores": [s.to_dict() for s in self.scores],
                "scores_after_sharing": [s.to_dict() for s in self.scores_after_sharing]}


@dataclass(frozen=True)
class PhotoResult:
    """What protecting one photo produced (the file as written is what was measured)."""

    source: str
    output: str
    width: int
    height: int
    seconds: float
    scores: tuple[IdentityScore, ...] = ()
    scores_after_sharing: tuple[IdentityScore, ...] = ()  # after JPEG q75 + 1080 px long side
    psnr: float | None = None
    ssim: float | None = None
    linf: float | None = None  # max |protected - clean| in 1/255 units, on the saved file
    faces: int = 0
    # How visible the change is on the faces (each box widened 1.5x; see core.visibility): luma
    # SSIM and the mean / 95th-percentile CIEDE2000 colour difference (about 2.3 is just
    # noticeable). None when no face was measured (or the record predates these figures).
    face_ssim: float | None = None
    face_de_mean: float | None = None
    face_de_p95: float | None = None
    # How visible the change is at 100% on a normal display, as the eye would judge it (the
    # most visible face; JND units, under 1 is not visible; see engine.visible_diff). This,
    # not the mean colour difference or SSIM, is the verdict the app states.
    face_jnd: float | None = None
    # Every face of a group photo, largest first (``scores`` above is the first one's).
    per_face: tuple[FaceResult, ...] = ()
    layers_done: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def scored_faces(self) -> list[FaceResult]:
        """Every face with its scores: ``per_face`` for a group photo; a single face's scores
        live on the photo itself (returned as one face without a box); none when nothing was
        scored."""
        if self.per_face:
            return list(self.per_face)
        if self.scores or self.scores_after_sharing:
            return [FaceResult((0, 0, 0, 0), self.scores, self.scores_after_sharing)]
        return []

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = [s.to_dict() for s in self.scores]
        d["scores_after_sharing"] = [s.to_dict() for s in self.scores_after_sharing]
        d["per_face"] = [f.to_dict() for f in self.per_face]
        return d


def _score_from_dict(d: dict[str, Any]) -> IdentityScore:
    return IdentityScore(encoder=str(d["encoder"]), metric=str(d["metric"]), value=d.get("value"),
                         threshold=float(d["threshold"]), same_person=d.get("same_person"),
                         note=str(d.get("note", "")))


_RESULT_FIELDS = ("source", "output", "width", "height", "seconds", "scores",
                  "scores_after_sharing", "psnr", "ssim", "linf", "faces", "per_face",
                  "layers_done", "warnings", "face_ssim", "face_de_mean", "face_de_p95",
                  "face_jnd")


def _face_from_dict(d: dict[str, Any]) -> FaceResult:
    x0, y0, x1, y1 = (float(v) for v in d["box"])
    return FaceResult(box=(x0, y0, x1, y1),
                      scores=tuple(_score_from_dict(s) for s in d.get("scores", [])),
                      scores_after_sharing=tuple(_score_from_dict(s)
                                                 for s in d.get("scores_after_sharing", [])))


def result_from_record(record: dict[str, Any]) -> PhotoResult:
    """The :class:`PhotoResult` of a manifest/journal photo record (the inverse of the runner's
    flattening: fields that are not PhotoResult's own go back into ``extra``). Raises KeyError,
    TypeError or ValueError on a record that lacks what a result needs."""
    return PhotoResult(
        source=str(record["source"]), output=str(record["output"]),
        width=int(record["width"]), height=int(record["height"]),
        seconds=float(record.get("seconds", 0.0)),
        scores=tuple(_score_from_dict(s) for s in record.get("scores", [])),
        scores_after_sharing=tuple(_score_from_dict(s)
                                   for s in record.get("scores_after_sharing", [])),
        psnr=record.get("psnr"), ssim=record.get("ssim"), linf=record.get("linf"),
        faces=int(record.get("faces", 0)),
        face_ssim=record.get("face_ssim"), face_de_mean=record.get("face_de_mean"),
        face_de_p95=record.get("face_de_p95"), face_jnd=record.get("face_jnd"),
        per_face=tuple(_face_from_dict(f) for f in record.get("per_face", [])),
        layers_done=tuple(record.get("layers_done", ())),
        warnings=tuple(record.get("warnings", ())),
        extra={k: v for k, v in record.items() if k not in _RESULT_FIELDS})

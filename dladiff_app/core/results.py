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
    layers_done: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = [s.to_dict() for s in self.scores]
        d["scores_after_sharing"] = [s.to_dict() for s in self.scores_after_sharing]
        return d

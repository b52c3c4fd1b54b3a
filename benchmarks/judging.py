"""Judges and photo sets for the protection benchmarks (``transfer.py``, ``visibility.py``).

A judge is a real face-recognition model run by its own runtime, never by our differentiable
ports: dlib by dlib, SFace by onnxruntime on the shipped file, and the held-out judges of
``../shared/judges`` by onnxruntime. The held-out judges are never attacked and never used by the
app; they only score here. Each judge re-detects the faces on the image it is given (dlib HOG +
68 landmarks, like the app), aligns them its own way (dlib's chip, or insightface's ``norm_crop``
to the ArcFace five-point template) and compares embeddings in its own metric.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HELDOUT_DIR = ROOT / "benchmarks" / "photos" / "heldout"
JUDGES_DIR = Path(os.environ.get("DLADIFF_JUDGES_DIR", ROOT.parent / "shared" / "judges"))


@dataclass(frozen=True)
class Photo:
    path: Path
    person: str | None  # None: several or unknown people (no other-photo comparison)


def tune_photos(folder: Path) -> list[Photo]:
    """The tuning set: package photos (t1 group photo, astronaut, Tom Hanks)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.origin is not None, "insightface is not installed"
    images = Path(spec.origin).parent / "data" / "images"
    astro = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(astro)
    return [Photo(images / "t1.jpg", None), Photo(astro, "collins"),
            Photo(images / "Tom_Hanks_54745.png", "hanks")]


# Places of three of t1's faces (x, y of the centre), cut out with a 300 px square.
_T1_LARGE = ((515, 362), (786, 417), (935, 150))


def tune_large_photos(folder: Path) -> list[Photo]:
    """Large faces for tuning: the tuning photos' faces enlarged (Lanczos), so that an attack
    tool's 112 px crop downsamples them about 3x as it does a portrait's (the held-out Obama
    photos): three of t1's faces (300 px squares, 2.5x), the astronaut (3x) and Tom Hanks
    (3x). Enlarged photos are smoother than real ones (less texture for the budget); they stand
    for the geometry of a large face, not for its skin."""
    from PIL import Image

    base = tune_photos(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Photo] = []
    t1 = Image.open(base[0].path).convert("RGB")
    for i, (cx, cy) in enumerate(_T1_LARGE):
        x0, y0 = max(0, cx - 150), max(0, cy - 150)
        crop = t1.crop((x0, y0, x0 + 300, y0 + 300)).resize((750, 750), Image.LANCZOS)
        path = folder / f"t1_face{i}_x2.5.png"
        crop.save(path)
        out.append(Photo(path, None))
    for ph, name in ((base[1], "astronaut_x3.png"), (base[2], "hanks_x3.png")):
        im = Image.open(ph.path).convert("RGB")
        path = folder / name
        im.resize((im.width * 3, im.height * 3), Image.LANCZOS).save(path)
        out.append(Photo(path, None))
    return out


# Long side of the canvas the wide set puts each enlarged face on: a platform's 1080 px share
# then shrinks it 0.47x, as it does the held-out biden.jpg (2204 px) and obama3.jpg (2333 px).
_WIDE_CANVAS = 2300


def tune_large_wide_photos(folder: Path) -> list[Photo]:
    """A diagnostic set: the enlarged tuning faces (``tune_large_photos``), each in the middle
    of a flat canvas of its mean colour, 2300 px tall. The face's pixels are the same; only the
    platform's downscale of the whole photo changes (about 0.47x instead of none), which tells
    whether the held-out photos that a share shrinks are easier because of that geometry."""
    from PIL import Image

    out: list[Photo] = []
    for ph in tune_large_photos(folder):
        im = Image.open(ph.path).convert("RGB")
        fill = tuple(int(v) for v in np.asarray(im).reshape(-1, 3).mean(axis=0))
        width = max(im.width, int(_WIDE_CANVAS * 0.6))
        canvas = Image.new("RGB", (width, _WIDE_CANVAS), fill)
        canvas.paste(im, ((width - im.width) // 2, (_WIDE_CANVAS - im.height) // 2))
        path = folder / f"wide_{ph.path.name}"
        canvas.save(path)
        out.append(Photo(path, None))
    return out


def heldout_photos() -> list[Photo]:
    """The held-out set (benchmarks/photos/heldout, README there): never tuned on."""
    return [Photo(p, p.stem.rstrip("0123456789")) for p in sorted(HELDOUT_DIR.glob("*.jpg"))]


PHOTO_SETS = ("tune", "tune-large", "tune-large-wide", "heldout")


def photo_set(name: str, folder: Path) -> list[Photo]:
    """The photos of set ``name`` (one of ``PHOTO_SETS``); generated ones are written to
    ``folder``."""
    if name == "tune":
        return tune_photos(folder)
    if name == "tune-large":
        return tune_large_photos(folder)
    if name == "tune-large-wide":
        return tune_large_wide_photos(folder)
    if name == "heldout":
        return heldout_photos()
    raise ValueError(f"unknown photo set {name!r}; known: {', '.join(PHOTO_SETS)}")


def _norm_crop(image8: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    from insightface.utils.face_align import norm_crop

    return norm_crop(image8, np.asarray(landmarks5, dtype=np.float32), image_size=112)


class OnnxJudge:
    """An ArcFace-template recognizer in onnxruntime. ``layout``: "nchw" or "nhwc";
    input ``(rgb - mean) / std``; cosine; same person at cosine >= ``threshold``."""

    metric = "cosine"

    def __init__(self, name: str, path: Path, threshold: float, layout: str,
                 mean: float, std: float, held_out: bool) -> None:
        import onnx
        import onnxruntime as ort

        from dladiff_app.engine.faces.onnx_to_torch import drop_unused_inputs

        model = onnx.load(str(path))
        drop_unused_inputs(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name, self.threshold, self.layout = name, threshold, layout
        self.mean, self.std, self.held_out = mean, std, held_out

    def embed(self, image8: np.ndarray, face) -> np.ndarray:
        crop = _norm_crop(image8, face.landmarks5).astype(np.float32)
        x = (crop - self.mean) / self.std
        x = x[None] if self.layout == "nhwc" else x.transpose(2, 0, 1)[None]
        return np.asarray(self.session.run(None, {self.input_name: x})[0]).reshape(-1)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def same(self, v: float) -> bool:
        return v >= self.threshold


class DlibJudge:
    """dlib's own face-recognition model; Euclidean; same person below 0.6."""

    name, metric, threshold, held_out = "dlib", "euclidean", 0.6, False

    def __init__(self) -> None:
        import dlib

        from dladiff_app.engine.models.dlib_pack import find_dlib_pack

        self.rec = dlib.face_recognition_model_v1(str(find_dlib_pack().recognition))

    def embed(self, image8: np.ndarray, face) -> np.ndarray:
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.dlib_shape])
        det = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), pts)
        return np.asarray(self.rec.compute_face_descriptor(image8, det))

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b))

    def same(self, v: float) -> bool:
        return v < self.threshold


def _edgeface_judge() -> OnnxJudge | None:
    """EdgeFace in onnxruntime on the installed package's file (None when not installed)."""
    from dladiff_app.core.errors import ModelMissingError
    from dladiff_app.engine.faces import edgeface

    try:
        path = edgeface.package_model_path()
    except ModelMissingError:
        return None
    # White-box: the default ensemble attacks its port. The line is the app's, not tuned here.
    return OnnxJudge("edgeface", path, edgeface.EDGEFACE_THRESHOLD, "nchw", 127.5, 127.5, False)


def load_judges() -> list:
    """dlib, SFace and EdgeFace when installed (white-box: the shield attacks their ports) and
    the held-out judges."""
    from dladiff_app.engine.faces.sface import SFACE_THRESHOLD, package_model_path

    judges: list = [DlibJudge(),
                    OnnxJudge("sface", package_model_path(), SFACE_THRESHOLD, "nchw", 0.0, 1.0,
                              False)]
    edgeface = _edgeface_judge()
    if edgeface is not None:
        judges.append(edgeface)
    # Lines from ../shared/judges/README.md (measured there, not tuned here).
    for name, line in (("facelib_mobilenet_int8", 0.53), ("facelib_mobilenetv2_int8", 0.43)):
        path = JUDGES_DIR / f"{name}.onnx"
        if not path.is_file():
            raise SystemExit(f"held-out judge {path} is missing (set DLADIFF_JUDGES_DIR)")
        judges.append(OnnxJudge(name, path, line, "nhwc", 127.5, 128.0, True))
    return judges


def match_face(found: list, box: np.ndarray, scale: float):
    """The face in ``found`` at the place of ``box`` (clean coordinates times ``scale``)."""
    centre = (box[:2] + box[2:]) / 2 * scale
    size = (box[2] - box[0]) * scale
    near = [g for g in found if np.linalg.norm((g.box[:2] + g.box[2:]) / 2 - centre) < 0.3 * size]
    return near[0] if near else None

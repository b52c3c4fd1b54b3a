"""insightface's SCRFD face detector (buffalo_l ``det_10g.onnx``) behind our ``FaceDetector``.

Detection needs no gradient, so it runs in onnxruntime through insightface's own ``SCRFD``
class (its pre- and post-processing, anchors and NMS): on a CUDA run through onnxruntime's CUDA
provider when the installed onnxruntime has one (``onnxruntime-gpu``), else on the CPU (the
detector then says so in ``placement``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.engine.faces.types import Face

DET_SIZE = (640, 640)  # insightface FaceAnalysis' default det_size for buffalo_l
DET_THRESHOLD = 0.5  # insightface's default SCRFD score threshold
NMS_THRESHOLD = 0.4  # insightface's default


def providers_for(device: str, available: list[str]) -> tuple[list[Any], int]:
    """onnxruntime execution providers for a run on ``device`` ("cuda:N", "mps", "cpu")
    given the ``available`` ones, and insightface's ``ctx_id`` (-1: CPU). CUDA runs use the
    CUDA provider when present; MPS has no onnxruntime provider worth its conversions (CoreML
    rejects SCRFD's dynamic shapes), so it stays on the CPU like every other case."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and "CUDAExecutionProvider" in available:
        ctx = int(index) if index else 0
        return [("CUDAExecutionProvider", {"device_id": ctx}), "CPUExecutionProvider"], ctx
    return ["CPUExecutionProvider"], -1


class ScrfdDetector:
    """``FaceDetector`` over an SCRFD ONNX file. Faces come largest first. ``device``: the
    run's device; ``placement`` says where detection actually runs."""

    def __init__(
        self,
        path: Path | str,
        det_threshold: float = DET_THRESHOLD,
        input_size: tuple[int, int] = DET_SIZE,
        name: str = "scrfd",
        device: str = "cpu",
    ) -> None:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        path = Path(path)
        if not path.is_file():
            raise ModelMissingError(f"{path.name}: face detector file not found at {path}.")
        import onnxruntime

        providers, ctx_id = providers_for(str(device), onnxruntime.get_available_providers())
        try:
            model: Any = get_model(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own types on a broken file
            raise ModelIntegrityError(f"{path.name}: could not load the detector ({exc}).") from exc
        if not isinstance(model, SCRFD):
            raise ModelIntegrityError(
                f"{path.name}: not an SCRFD face detector (insightface read it as "
                f"{type(model).__name__})."
            )
        model.prepare(ctx_id=ctx_id, input_size=input_size, det_thresh=det_threshold,
                      nms_thresh=NMS_THRESHOLD)
        if not model.use_kps:
            raise ModelIntegrityError(f"{path.name}: this detector gives no facial landmarks.")
        self._model = model
        self.placement = "cuda" if ctx_id >= 0 else "cpu"
        self.name = name
        self.path = path

    def detect(self, image: np.ndarray) -> list[Face]:
        """``image``: (H, W, 3) float RGB in [0, 1]. Returns faces, largest first."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        # insightface works on 8-bit BGR, as cv2.imread gives it.
        bgr = np.ascontiguousarray(
            (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[:, :, ::-1]
        )
        boxes, kpss = self._model.detect(bgr)
        faces = [
            Face(box=b[:4].astype(np.float64), landmarks5=k.astype(np.float64), score=float(b[4]))
            for b, k in zip(boxes, kpss, strict=True)
        ]
        return sorted(faces, key=lambda f: f.area, reverse=True)

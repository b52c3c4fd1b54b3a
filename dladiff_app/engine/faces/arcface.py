"""insightface ArcFace recognizers (``w600k_r50.onnx``, ``glintr100.onnx``, ...) as torch encoders.

The ONNX file is converted with our own :mod:`onnx_to_torch`, so the embedding is differentiable
with respect to the full-resolution photo: crop with :func:`align.warp_affine` (exactly
insightface's ``norm_crop``), normalise the way ``ArcFaceONNX`` does, run the converted graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.faces.align import norm_crop_matrix, warp_affine
from dladiff_app.engine.faces.onnx_to_torch import OnnxModule, load_onnx
from dladiff_app.engine.faces.types import Face

# Cosine "same person" threshold. insightface 2.1's own GUI default is 0.4
# (insightface/gui/core/constants.py, DEFAULT_THRESHOLD) and 1:1 verification operating points
# quoted for w600k_r50 lie around 0.3-0.4. We take the low end: a
# "different person" verdict from a protection tool must hold also for a lenient attacker.
ARCFACE_THRESHOLD = 0.3

_PACK_NAMES = ("buffalo_l", "buffalo_m", "buffalo_s", "antelopev2")


def input_normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """(mean, std) applied to 0-255 pixels, decided like insightface's ``ArcFaceONNX``.

    MXNet-converted recognizers start with their own Sub and Mul nodes (names ``Sub...`` /
    ``_minus...`` and ``Mul...`` / ``_mul...`` among the first 8): they take raw 0-255 input
    (mean 0, std 1). All others expect ``(x - 127.5) / 127.5``.
    """
    names = [n.name for n in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def encoder_name(path: Path) -> str:
    """The pack's name when the file sits in an insightface pack folder, else the file stem."""
    for part in reversed(path.parent.parts):
        if part in _PACK_NAMES:
            return part
    return path.stem


class ArcFaceEncoder(nn.Module):
    """``IdentityEncoder`` over an insightface ONNX recognizer (metric cosine).

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1], full resolution, may
    require grad; ``face.landmarks5`` in insightface order. Returns the raw (D,) embedding
    (not normalised; compare with cosine), differentiable w.r.t. ``image``.
    """

    metric = "cosine"

    def __init__(
        self,
        path: Path | str,
        name: str | None = None,
        threshold: float = ARCFACE_THRESHOLD,
        antialias: bool = False,
        *,
        model: onnx.ModelProto | None = None,
        normalisation: tuple[float, float] | None = None,
    ) -> None:
        """``model``: the graph already read (and cleaned) from ``path``; ``normalisation``:
        (mean, std) on 0-255 pixels when the file's own nodes do not tell (see
        :func:`input_normalisation`)."""
        super().__init__()
        path = Path(path)
        model = load_onnx(path) if model is None else model
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[2] != dims[3] or dims[2] < 112 or dims[2] % 16:
            raise ModelIntegrityError(
                f"{path.name}: not a face recognizer (expected a square N x 3 x 112 x 112 input, "
                f"found {dims})."
            )
        if len(model.graph.output) != 1:
            raise ModelIntegrityError(
                f"{path.name}: not a face recognizer (it has {len(model.graph.output)} outputs, "
                "a recognizer has one)."
            )
        self.path = path
        self.name = name or encoder_name(path)
        self.threshold = float(threshold)
        self.input_size = int(dims[2])
        self.input_mean, self.input_std = normalisation or input_normalisation(model)
        # The warp must equal the crop the real encoder sees (cv2, no antialiasing); the shield
        # antialiases its gradient steps with ``align.antialiased_warps`` instead.
        self.antialias = antialias
        self.net = OnnxModule(model, source=str(path)).eval()

    def crop(self, image: torch.Tensor, face: Face) -> torch.Tensor:
        """(1, 3, s, s) RGB in [0, 1]: insightface's ``norm_crop`` of ``face``, differentiable."""
        matrix = norm_crop_matrix(np.asarray(face.landmarks5), self.input_size)
        return warp_affine(image, matrix, self.input_size, antialias=self.antialias)

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        crop = self.crop(image, face)
        x = ((crop.flip(-1) if flip else crop) * 255.0 - self.input_mean) / self.input_std
        out = self.net(x)
        assert isinstance(out, torch.Tensor)
        return out.reshape(out.shape[0], -1)[0]

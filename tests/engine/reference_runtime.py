"""Our converted face encoders against their reference runtime, on real faces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dladiff_app.engine.faces.onnx_to_torch import OnnxModule


def worst_against_reference(encoder, photo: np.ndarray, faces: Sequence,  # type: ignore[no-untyped-def]
                            prepare: Callable[[np.ndarray], np.ndarray],
                            reference: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """For each face of ``photo`` ((H, W, 3) float RGB [0, 1]): insightface's ``norm_crop``
    (uint8, 112x112) is turned by ``prepare`` into the network's (1, 3, 112, 112) float32
    input and run by ``reference`` (e.g. onnxruntime) and by ``encoder.net``; ``encoder.embed``
    also embeds the face from the full photo with our differentiable warp.

    Returns (largest absolute difference between the two networks on the same input, lowest
    cosine between our full-photo embedding and the reference's) over the faces."""
    import torch
    from insightface.utils.face_align import norm_crop

    from tests.engine import real_photos

    image8 = real_photos.as_uint8(photo)
    image = real_photos.to_tensor(photo)
    worst_net, worst_cos = 0.0, 1.0
    for face in faces:
        crop = norm_crop(image8, np.asarray(face.landmarks5, np.float32), image_size=112)
        x = np.ascontiguousarray(prepare(crop), dtype=np.float32)
        ref = np.asarray(reference(x)).reshape(-1)
        with torch.no_grad():
            net = encoder.net(torch.from_numpy(x)).reshape(-1).numpy()
            ours = encoder.embed(image, face).numpy()
        worst_net = max(worst_net, float(np.abs(net - ref).max()))
        worst_cos = min(worst_cos, float(ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref)))
    return worst_net, worst_cos


def _concrete_shape(shape: list[int | str]) -> list[int]:
    # Symbolic dims: batch 1, spatial 640 (SCRFD's working size), everything else 1.
    out = []
    for i, d in enumerate(shape):
        out.append(d if isinstance(d, int) else (640 if i >= 2 else 1))
    return out


def verify_against_onnxruntime(path: Path | str, module: OnnxModule, n: int = 2) -> float:
    """Max absolute difference between ``module`` and onnxruntime on ``n`` random inputs.

    Inputs are uniform in [-1, 1] (the range of a normalised image), seeded for reproducibility;
    symbolic dimensions get batch 1 and spatial 640. Returns the largest difference over all
    outputs and trials.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(n):
        feeds = {
            name: rng.uniform(-1, 1, _concrete_shape(shape)).astype(np.float32)
            for name, shape in zip(module.input_names, module.input_shapes, strict=True)
        }
        expected = session.run(module.output_names, feeds)
        with torch.no_grad():
            got = module(*(torch.from_numpy(feeds[k]) for k in module.input_names))
        got_t = got if isinstance(got, tuple) else (got,)
        for e, g in zip(expected, got_t, strict=True):
            worst = max(worst, float(np.max(np.abs(np.asarray(e) - g.numpy()))))
    return worst

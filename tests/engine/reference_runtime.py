"""Our converted face encoders against their reference runtime, on real faces."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


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

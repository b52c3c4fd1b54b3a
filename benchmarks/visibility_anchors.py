"""Does the visible-difference model rank changes as the eye does? Its figure on known changes.

Each anchor is a change of a known kind and size on scikit-image's astronaut (a face at 100%):
dense random noise of 1-8 levels (uniform, and sign noise of the full size on every pixel),
smooth luma blotches (a blurred random field, peak 2-4 levels), and thin dark crease lines
(2-3 px wide, 3 or 6 levels) on the cheek. Each is written as a PNG next to the clean face so a
person can flip between them at 100%; the table gives the model's figure (JND, the most visible
spot of the face) next to face SSIM and mean CIEDE2000, which call most of them invisible.

Usage::

    python benchmarks/visibility_anchors.py [--out benchmarks/out/anchors]

The committed table and what a person saw on each is in ``results/visibility_model.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.core.imageio import save_image  # noqa: E402
from dladiff_app.core.visibility import face_visibility  # noqa: E402
from dladiff_app.engine.visible_diff import face_jnd  # noqa: E402

# The astronaut's face (dlib HOG box).
FACE = (178.5, 82.5, 266.5, 170.5)


def anchors(clean: np.ndarray) -> dict[str, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for a in (1, 2, 4, 8):
        out[f"uniform noise +-{a}"] = clean + rng.uniform(-a, a, clean.shape) / 255
    for a in (2, 4):
        out[f"sign noise +-{a}"] = clean + np.sign(rng.standard_normal(clean.shape)) * a / 255
    for sigma, a in ((4, 2), (4, 4), (8, 3)):
        n = gaussian_filter(rng.standard_normal(clean.shape[:2]), sigma)
        out[f"luma blotch sigma {sigma}, peak {a}"] = clean + (n / np.abs(n).max() * a / 255)[..., None]
    for width, a in ((2, 3), (3, 6)):
        c = clean.copy()
        c[150:150 + width, 200:260] -= a / 255
        out[f"crease {width} px, {a} levels"] = c
    return {k: np.round(np.clip(v, 0, 1) * 255).astype(np.float32) / 255 for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/anchors"))
    args = ap.parse_args()
    from skimage import data

    clean = data.astronaut().astype(np.float32) / 255
    args.out.mkdir(parents=True, exist_ok=True)
    save_image(clean, args.out / "clean.png")
    t_clean = torch.from_numpy(clean).permute(2, 0, 1)[None]
    rows = ["| change | visible (JND) | face SSIM | face dE mean | file |", "|---|---|---|---|---|"]
    for i, (name, img) in enumerate(anchors(clean).items()):
        path = save_image(img, args.out / f"anchor_{i:02d}.png")
        jnd = face_jnd(t_clean, torch.from_numpy(img).permute(2, 0, 1)[None], [FACE])
        vis = face_visibility(clean, img, [FACE])
        assert jnd is not None and vis is not None
        rows.append(f"| {name} | {jnd:.2f} | {vis.ssim:.4f} | {vis.de_mean:.2f} | {path.name} |")
    text = "\n".join(rows)
    (args.out / "anchors.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

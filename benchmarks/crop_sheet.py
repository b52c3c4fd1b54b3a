"""Look at protected faces as a person will: 100% and 200% crops, clean next to each version.

For each photo given, the faces are found on the clean photo (dlib HOG, as the app); every face
box widened 1.5x is cut from the clean photo and from each protected version, and laid out in a
row: clean, version 1, version 2, ... at 100% (one photo pixel, one screen pixel) and, below, the
same at 200% (nearest neighbour). Each version's tile is labelled with its figures: the predicted
visibility at 100% (``engine.visible_diff``, JND; under 1 = not visible), face SSIM and mean
CIEDE2000. The sheet is the evidence for a visibility claim; the figures are what the app reports.

Usage::

    python benchmarks/crop_sheet.py --clean PHOTO.jpg --version today=A.png --version new=B.png \
        --out benchmarks/results/face_crop_NAME.png [--face 0] [--max-side 360]

Versions must have the clean photo's pixel size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.core.imageio import load_image, to_uint8  # noqa: E402
from dladiff_app.core.visibility import face_visibility, widened_box  # noqa: E402


def figures(clean: np.ndarray, version: np.ndarray, box) -> str:
    from dladiff_app.engine.faces.score import to_tensor
    from dladiff_app.engine.visible_diff import face_jnd

    jnd = face_jnd(to_tensor(clean), to_tensor(version), [box])
    vis = face_visibility(clean, version, [box])
    return (f"JND {jnd:.2f}  SSIM {vis.ssim:.3f}  dE {vis.de_mean:.2f}"
            if vis is not None and jnd is not None else "no face")


def sheet(clean: np.ndarray, versions: list[tuple[str, np.ndarray]], box,
          max_side: int) -> Image.Image:
    h, w = clean.shape[:2]
    x0, y0, x1, y1 = widened_box(box, w, h)
    # A big face is cut around its centre: the 100% tile shows real pixels, never a resample.
    if x1 - x0 > max_side:
        c = (x0 + x1) // 2
        x0, x1 = c - max_side // 2, c + max_side // 2
    if y1 - y0 > max_side:
        c = (y0 + y1) // 2
        y0, y1 = c - max_side // 2, c + max_side // 2
    tiles = [("clean", clean)] + versions
    labels = ["clean"] + [f"{name}: {figures(clean, v, box)}" for name, v in versions]
    cw, ch = x1 - x0, y1 - y0
    pad, text_h = 8, 16
    width = len(tiles) * (2 * cw + pad)
    out = Image.new("RGB", (width, text_h + ch + pad + 2 * ch), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, ((_, img), label) in enumerate(zip(tiles, labels, strict=True)):
        crop = Image.fromarray(to_uint8(img[y0:y1, x0:x1]))
        left = i * (2 * cw + pad)
        draw.text((left + 2, 2), label, fill=(0, 0, 0))
        out.paste(crop, (left, text_h))
        out.paste(crop.resize((2 * cw, 2 * ch), Image.Resampling.NEAREST),
                  (left, text_h + ch + pad))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", type=Path, required=True)
    ap.add_argument("--version", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--face", type=int, default=0, help="which face, largest first")
    ap.add_argument("--max-side", type=int, default=360)
    args = ap.parse_args()
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    clean = load_image(args.clean).pixels
    versions = []
    for spec in args.version:
        name, _, path = spec.partition("=")
        versions.append((name, load_image(Path(path)).pixels))
    faces = sorted(DlibDetector().detect(clean),
                   key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    if not faces:
        print("no face found", file=sys.stderr)
        return 1
    box = [float(v) for v in faces[min(args.face, len(faces) - 1)].box[:4]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet(clean, versions, box, args.max_side).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

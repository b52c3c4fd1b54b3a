"""Where to draw an offline cosine encoder's "same person" line, measured on the tuning photos.

For each encoder named (the app's own differentiable port, as the scores use it): embed every
face of the tuning photos (``judging.tune_photos``: insightface's t1.jpg with 6 people,
skimage's astronaut, insightface's Tom Hanks; 8 people, dlib HOG detection as the app does),
then report

- the cosine between every two different people (28 pairs): max and mean;
- the cosine of each face with itself after JPEG q75 (same landmarks) and mirrored: min.

A lenient line sits just above the different-person maximum. The held-out photos
(``benchmarks/photos/heldout``) are never read here.

Usage::

    python benchmarks/encoder_lines.py edgeface [sface facenet] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from judging import tune_photos  # noqa: E402


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((pixels * 255.0).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def measure(encoder, photos) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``photos``: (pixels (H, W, 3) float RGB [0, 1], faces) pairs, every face one person."""
    embeddings, same = [], []
    with torch.no_grad():
        for pixels, faces in photos:
            image, shared = _tensor(pixels), _tensor(_jpeg(pixels, 75))
            for face in faces:
                emb = encoder.embed(image, face)
                embeddings.append(emb)
                same.append(_cos(emb, encoder.embed(shared, face)))
                same.append(_cos(emb, encoder.embed(image, face, flip=True)))
    different = [_cos(embeddings[i], embeddings[j]) for i in range(len(embeddings))
                 for j in range(i + 1, len(embeddings))]
    return {"faces": len(embeddings), "pairs": len(different), "different_max": max(different),
            "different_mean": float(np.mean(different)), "same_min": min(same)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("encoders", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.registry import load_encoder

    detector = DlibDetector()
    photos = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in tune_photos(Path(tmp)):
            with Image.open(photo.path) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            photos.append((pixels, detector.detect(pixels)))
    print("| encoder | faces | different-person pairs | different max | different mean "
          "| same face after JPEG q75 / mirror, min | line |")
    print("|---|---|---|---|---|---|---|")
    for name in args.encoders:
        encoder = load_encoder(name)
        got = measure(encoder, photos)
        print(f"| {name} | {got['faces']} | {got['pairs']} | {got['different_max']:.3f} "
              f"| {got['different_mean']:.3f} | {got['same_min']:.3f} "
              f"| {encoder.threshold:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

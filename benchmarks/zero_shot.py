"""Benchmark of the zero-shot shield (layer 2) on a folder of photos.

For every photo: detect faces (dlib HOG, offline), protect with every available identity encoder,
write the protected PNG, read it back, and measure on the file as written:

- per encoder, identity of each clean face vs the face re-detected at its place in the file
  (cosine similarity, or Euclidean distance for dlib: "different person" at >= 0.6), and the same
  after sharing (JPEG q75 + resize to 1080 px long side); dlib is judged by dlib itself
  (``dlib.face_recognition_model_v1``), the other encoders by their own PyTorch model;
- PSNR and SSIM of the whole photo, L-inf in 1/255, seconds per photo, peak memory (RSS);
- with two or more encoders, transfer: attack with all but one, measure with the held-out one.

Usage::

    python benchmarks/zero_shot.py PHOTO_DIR [--preset medium] [--steps N] [--out DIR]
    python benchmarks/zero_shot.py --builtin [--upscale-mp 12]   # t1.jpg and astronaut

``--builtin`` uses the real photos that ship with installed packages; ``--upscale-mp`` resizes
each photo to that many megapixels first (timing of big photos: the cost should follow the face
area, not the megapixels).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.core.imageio import load_image, save_image, to_uint8  # noqa: E402
from dladiff_app.core.presets import preset  # noqa: E402
from dladiff_app.core.quality import psnr, simulate_sharing, ssim  # noqa: E402
from dladiff_app.engine.faces.types import Face, IdentityEncoder  # noqa: E402
from dladiff_app.engine.shield.layer2 import identity_value, protect_faces  # noqa: E402


def builtin_photos(folder: Path) -> list[Path]:
    """Write the package photos (insightface t1.jpg, skimage astronaut) into ``folder``."""
    import importlib.util

    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    spec = importlib.util.find_spec("insightface")
    if spec is not None and spec.origin is not None:
        t1 = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
        if t1.is_file():
            out.append(t1)
    astro = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(astro)
    out.append(astro)
    return out


def upscale(pixels: np.ndarray, megapixels: float) -> np.ndarray:
    from PIL import Image

    h, w = pixels.shape[:2]
    f = (megapixels * 1e6 / (h * w)) ** 0.5
    im = Image.fromarray(to_uint8(pixels)).resize((round(w * f), round(h * f)),
                                                  Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def load_encoders(names: list[str] | None) -> list[IdentityEncoder]:
    from dladiff_app.engine.faces.registry import available_encoders

    encoders = available_encoders(names=names)
    for enc in encoders:
        if isinstance(enc, torch.nn.Module):
            enc.eval()
            for p in enc.parameters():
                p.requires_grad_(False)
            # oneDNN convolutions on CPU (2-3x faster than the fallback for these nets).
            enc.to(memory_format=torch.channels_last)
    return encoders


class Judge:
    """Identity of clean faces against faces re-detected in another version of the photo."""

    def __init__(self, detector, encoders: list[IdentityEncoder]) -> None:
        self.detector = detector
        self.encoders = encoders
        self._dlib_rec = None
        if any(e.name == "dlib" for e in encoders):
            import dlib

            from dladiff_app.engine.models.dlib_pack import find_dlib_pack

            self._dlib_rec = dlib.face_recognition_model_v1(str(find_dlib_pack().recognition))

    def _dlib_descriptor(self, image8: np.ndarray, face: Face) -> np.ndarray:
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.dlib_shape])
        det = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), pts)
        return np.asarray(self._dlib_rec.compute_face_descriptor(image8, det))

    def embed(self, enc: IdentityEncoder, pixels: np.ndarray, face: Face) -> np.ndarray:
        if enc.name == "dlib" and self._dlib_rec is not None:
            return self._dlib_descriptor(np.ascontiguousarray(to_uint8(pixels)), face)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            return enc.embed(x, face).numpy()

    def compare(self, clean: np.ndarray, clean_faces: list[Face], other: np.ndarray
                ) -> dict[str, list[float | None]]:
        """Per encoder, per clean face: identity value (None: no face there any more)."""
        scale = other.shape[1] / clean.shape[1]
        found = self.detector.detect(other)
        out: dict[str, list[float | None]] = {e.name: [] for e in self.encoders}
        for f in clean_faces:
            centre = (f.box[:2] + f.box[2:]) / 2 * scale
            size = (f.box[2] - f.box[0]) * scale
            near = [g for g in found
                    if np.linalg.norm((g.box[:2] + g.box[2:]) / 2 - centre) < 0.3 * size]
            for e in self.encoders:
                if not near:
                    out[e.name].append(None)
                    continue
                a = torch.from_numpy(self.embed(e, clean, f))
                b = torch.from_numpy(self.embed(e, other, near[0]))
                out[e.name].append(identity_value(e, a, b))
        return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_photo(path: Path, out_dir: Path, detector, encoders, judge: Judge, settings,
              steps: int | None, megapixels: float | None,
              weights: dict[str, float] | None = None) -> dict:
    pixels = load_image(path).pixels
    if megapixels:
        pixels = upscale(pixels, megapixels)
    faces = detector.detect(pixels)
    clean = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].contiguous()
    t0 = time.perf_counter()
    res = protect_faces(clean, None, faces, encoders, settings, steps=steps, weights=weights)
    seconds = time.perf_counter() - t0
    tag = "" if not weights else "-" + "-".join(k for k, v in weights.items() if v == 0)
    saved = save_image(res.protected[0].permute(1, 2, 0).numpy(),
                       out_dir / f"{path.stem}{tag}-protected.png")
    prot = load_image(saved).pixels
    shared_clean = simulate_sharing(pixels)
    shared = simulate_sharing(prot)
    return {
        "photo": path.name, "size": f"{pixels.shape[1]}x{pixels.shape[0]}", "faces": len(faces),
        "seconds": round(seconds, 2), "steps": res.steps_done, "peak_rss_mb": round(_peak_rss_mb()),
        "psnr": round(psnr(pixels, prot), 2), "ssim": round(ssim(pixels, prot), 4),
        "linf_255": int(np.abs(to_uint8(prot).astype(int) - to_uint8(pixels).astype(int)).max()),
        "optimiser_final": res.final_similarity,
        "saved": judge.compare(pixels, faces, prot),
        "shared": judge.compare(pixels, faces, shared),
        "shared_clean": judge.compare(pixels, faces, shared_clean),
        "warnings": list(res.warnings),
    }


def _different(enc: IdentityEncoder, v: float | None) -> bool:
    """Measured and past the encoder's threshold. A face the judge no longer finds is not
    counted here: it is reported in its own column, because another detector may still find it."""
    if v is None:
        return False
    return v >= enc.threshold if enc.metric == "euclidean" else v < enc.threshold


def _verdicts(enc: IdentityEncoder, vs: list[float | None]) -> str:
    """``different/total``, plus how many faces were not re-detected at all."""
    lost = sum(v is None for v in vs)
    text = f"{sum(_different(enc, v) for v in vs)}/{len(vs)}"
    return f"{text} ({lost} not re-detected)" if lost else text


def table(rows: list[dict], encoders: list[IdentityEncoder], title: str) -> str:
    lines = [f"## {title}"]
    for enc in encoders:
        lines.append(f"\n### encoder {enc.name} ({enc.metric}, threshold {enc.threshold})")
        lines.append("| photo | faces | clean->saved mean | saved different | after JPEG75+1080 mean "
                     "| shared different | clean shared (ref) | PSNR | SSIM | Linf | s/photo | peak MB |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            sv, sh, ref = r["saved"][enc.name], r["shared"][enc.name], r["shared_clean"][enc.name]

            def mean(vs: list[float | None]) -> str:
                got = [v for v in vs if v is not None]
                return f"{np.mean(got):.3f}" if got else "n/a"

            lines.append(f"| {r['photo']} | {r['faces']} | {mean(sv)} | {_verdicts(enc, sv)} | "
                         f"{mean(sh)} | {_verdicts(enc, sh)} | {mean(ref)} | {r['psnr']} | "
                         f"{r['ssim']} | {r['linf_255']} | {r['seconds']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path)
    ap.add_argument("--builtin", action="store_true")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--encoders", nargs="*", default=None)
    ap.add_argument("--upscale-mp", type=float, default=None)
    ap.add_argument("--no-eot", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/zero_shot"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    args.out.mkdir(parents=True, exist_ok=True)
    if args.builtin:
        photos = builtin_photos(args.out / "inputs")
    elif args.folder is not None:
        photos = sorted(p for p in args.folder.iterdir()
                        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    else:
        ap.error("give a folder of photos or --builtin")
    settings = preset(args.preset)
    if args.no_eot:
        settings = settings.with_overrides(eot=False)
    detector = DlibDetector()
    encoders = load_encoders(args.encoders)
    judge = Judge(detector, encoders)
    rows = [run_photo(p, args.out, detector, encoders, judge, settings, args.steps,
                      args.upscale_mp) for p in photos]
    report = [table(rows, encoders, f"attack: all encoders ({settings.preset}, eps "
                    f"{settings.eps}/255, steps {args.steps or settings.layer2_steps})")]
    if len(encoders) >= 2:
        for held in encoders:
            w = {e.name: (0.0 if e is held else 1.0) for e in encoders}
            trows = [run_photo(p, args.out, detector, encoders, judge, settings, args.steps,
                               args.upscale_mp, weights=w) for p in photos]
            report.append(table(trows, [held], f"transfer: held-out {held.name}"))
            rows.extend({**r, "held_out": held.name} for r in trows)
    text = "\n\n".join(report)
    print(text)
    (args.out / "zero_shot.md").write_text(text + "\n")
    (args.out / "zero_shot.json").write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

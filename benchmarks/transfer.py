"""Does the zero-shot shield fool face models it never saw? White-box and held-out figures.

For every photo of a set: detect faces (dlib HOG, as the app), protect them with the zero-shot
shield (the encoders given, default the shipped offline ensemble: dlib + SFace + EdgeFace), write
the 8-bit PNG, read it back, and judge the file as written and that file after sharing (JPEG q75 +
1080 px long side) with real runtimes (``judging.py``): dlib, SFace and EdgeFace (white-box: the
shield attacks their ports) and the held-out judges of ``../shared/judges`` (never attacked). Per face and judge:

- the clean face against the protected face re-detected at its place (cosine, or dlib distance),
  saved and shared, and the clean photo shared as a reference;
- for people with several photos, the protected-and-shared face against their *other* clean
  photos (what an identity match in an attack tool does), next to clean-vs-other;
- whether that is past the judge's same-person line ("hidden");
- PSNR, face-region SSIM (luma) and CIEDE2000 (box widened 1.5x), seconds per face (after a
  few untimed warm-up steps of each shield, see ``warm_up``).

``--leave-one-out`` also protects with each ensemble member left out and judges it.

Usage::

    python benchmarks/transfer.py --set heldout --preset medium [--threads 1]
    python benchmarks/transfer.py --set tune --preset low --encoders dlib
    python benchmarks/transfer.py --set heldout --shield flip=0   # a shield option off

Results: ``--out`` (default benchmarks/out/transfer) gets the PNGs, ``transfer.md`` and
``transfer.json``; the committed tables live in ``benchmarks/results/transfer_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from judging import PHOTO_SETS, load_judges, match_face, photo_set  # noqa: E402
from shading import face_shading  # noqa: E402

from dladiff_app.core.imageio import load_image, save_image, to_uint8  # noqa: E402
from dladiff_app.core.presets import preset  # noqa: E402
from dladiff_app.core.quality import psnr, simulate_sharing, ssim  # noqa: E402
from dladiff_app.core.visibility import face_visibility  # noqa: E402
from dladiff_app.engine.faces.score import to_tensor  # noqa: E402
from dladiff_app.engine.shield import layer2  # noqa: E402
from dladiff_app.engine.visible_diff import face_jnd  # noqa: E402


def load_encoders(names: list[str]) -> list:
    from dladiff_app.engine.faces.registry import available_encoders, encoder_from_path

    # A name that is a file (an ONNX recognizer) is loaded from that file.
    files = [n for n in names if Path(n).is_file()]
    named = [n for n in names if n not in files]
    encoders = (available_encoders(names=named) if named else []) + \
        [encoder_from_path(f) for f in files]
    for enc in encoders:
        enc.eval()
        for p in enc.parameters():
            p.requires_grad_(False)
    return encoders


def shield_options(pairs: list[str]) -> layer2.ShieldOptions:
    """``key=value`` overrides of :class:`layer2.ShieldOptions`."""
    opts = layer2.ShieldOptions()
    # Options whose default is None (off) take a number.
    kinds = {f.name: (float if getattr(opts, f.name) is None else type(getattr(opts, f.name)))
             for f in fields(opts)}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in kinds:
            raise SystemExit(f"unknown shield option {key!r}; known: {', '.join(kinds)}")
        kind = kinds[key]
        if kind is bool:
            parsed: object = value.strip().lower() in ("1", "true", "yes", "on")
        else:
            parsed = kind(float(value)) if kind is not str else value
        opts = replace(opts, **{key: parsed})
    return opts


class Photos:
    """Clean photos of a set with their faces and every judge's clean embeddings."""

    def __init__(self, photos, detector, judges) -> None:
        self.items = []
        for ph in photos:
            pixels = load_image(ph.path).pixels
            faces = detector.detect(pixels)
            image8 = np.ascontiguousarray(to_uint8(pixels))
            emb = [{j.name: j.embed(image8, f) for j in judges} for f in faces]
            self.items.append((ph, pixels, faces, emb))

    def others(self, person: str | None, path: Path) -> list[dict]:
        """Clean embeddings (largest face) of the person's other single-person photos."""
        if person is None:
            return []
        return [emb[0] for ph, _, _, emb in self.items
                if ph.person == person and ph.path != path and emb]


def judge_version(version: np.ndarray, clean: np.ndarray, faces, judges, detector
                  ) -> list[dict[str, np.ndarray | None]]:
    """Per clean face: each judge's embedding of the face re-detected at its place in
    ``version`` (None when no face is found there any more)."""
    scale = version.shape[1] / clean.shape[1]
    found = detector.detect(version)
    image8 = np.ascontiguousarray(to_uint8(version))
    out = []
    for face in faces:
        g = match_face(found, face.box, scale)
        out.append({j.name: None if g is None else j.embed(image8, g) for j in judges})
    return out


def run_photo(item, photos: Photos, encoders, judges, detector, settings, opts, out_dir: Path,
              tag: str) -> dict:
    ph, pixels, faces, emb = item
    clean = to_tensor(pixels).contiguous()
    t0 = time.perf_counter()
    res = layer2.protect_faces(clean, None, faces, encoders, settings, options=opts)
    seconds = time.perf_counter() - t0
    saved = save_image(res.protected[0].permute(1, 2, 0).numpy(),
                       out_dir / f"{ph.path.stem}-{tag}.png")
    prot = load_image(saved).pixels
    shared = simulate_sharing(prot)
    versions = {"saved": prot, "shared": shared, "clean_shared": simulate_sharing(pixels)}
    judged = {k: judge_version(v, pixels, faces, judges, detector)
              for k, v in versions.items()}
    others = photos.others(ph.person, ph.path) if len(faces) == 1 else []
    rows = []
    for i, _ in enumerate(faces):
        row: dict = {"photo": ph.path.name, "face": i, "person": ph.person}
        for j in judges:
            for k in versions:
                now = judged[k][i][j.name]
                row[f"{j.name}:{k}"] = None if now is None else j.compare(emb[i][j.name], now)
            if others:
                row[f"{j.name}:other_clean"] = float(np.mean(
                    [j.compare(emb[i][j.name], o[j.name]) for o in others]))
                got = judged["shared"][i][j.name]
                row[f"{j.name}:other_shared"] = None if got is None else float(np.mean(
                    [j.compare(got, o[j.name]) for o in others]))
        rows.append(row)
    vis = face_visibility(pixels, prot, [f.box for f in faces])
    jnd = face_jnd(clean, to_tensor(prot).contiguous(), [f.box for f in faces])
    shade = face_shading(pixels, prot, [f.box for f in faces])
    return {"photo": ph.path.name, "faces": len(faces), "seconds": round(seconds, 2),
            "s_per_face": round(seconds / max(1, len(faces)), 2),
            "psnr": round(psnr(pixels, prot), 2), "ssim": round(ssim(pixels, prot), 4),
            "linf": int(np.abs(to_uint8(prot).astype(int) - to_uint8(pixels).astype(int)).max()),
            "face_jnd": None if jnd is None else round(jnd, 2),
            "face_ssim": None if vis is None else round(vis.ssim, 4),
            "face_de_mean": None if vis is None else round(vis.de_mean, 3),
            "face_de_p95": None if vis is None else round(vis.de_p95, 3),
            "face_shade": None if shade is None else round(shade[0], 3),
            "face_ssim4": None if shade is None else round(shade[1], 4),
            "rows": rows}


BASELINE = layer2.FIRST_RELEASE
# The previous release's presets (budget 1/255, zero-shot steps), held at face SSIM.
PREVIOUS_PRESETS = {"low": (4.0, 50), "medium": (8.0, 100), "high": (12.0, 200)}


def previous_settings(name: str):
    """The previous release's settings of preset ``name`` (its budget, steps, step scale eps/20
    and face SSIM target), for ``--previous``."""
    from dladiff_app.core.presets import face_ssim_for_eps

    eps, steps = PREVIOUS_PRESETS.get(name, PREVIOUS_PRESETS["medium"])
    return preset(name).with_overrides(eps=eps, layer2_steps=steps,
                                       face_ssim=face_ssim_for_eps(eps))
WARM_UP_STEPS = 3


def warm_up(items, encoders, settings, opts, baseline=None) -> None:
    """A few untimed steps of each shield on the first photo with faces: a process pays some
    costs once (lazy imports, oneDNN kernels built for each shape, the allocator's growth), and
    without this the first photo's time carries them for whichever shield happens to run
    first. The app pays them once per session, not per face. ``baseline``: the first
    release's (settings, encoders), or None when it is not timed."""
    for _, pixels, faces, _ in items:
        if not faces:
            continue
        clean = to_tensor(pixels).contiguous()
        layer2.protect_faces(clean, None, faces, encoders, settings, steps=WARM_UP_STEPS,
                             options=opts)
        if baseline is not None:
            first_settings, first_encoders = baseline
            layer2.protect_faces(clean, None, faces, first_encoders, first_settings,
                                 steps=WARM_UP_STEPS, options=BASELINE)
        return


def time_table(results: list[dict], base: list[dict]) -> str:
    lines = ["| photo | faces | s/face now | s/face first release | ratio |", "|---|---|---|---|---|"]
    for r, b in zip(results, base, strict=True):
        ratio = r["seconds"] / b["seconds"] if b["seconds"] else float("nan")
        lines.append(f"| {r['photo']} | {r['faces']} | {r['s_per_face']} | {b['s_per_face']} | "
                     f"{ratio:.2f} |")
    tot = sum(r["seconds"] for r in results) / max(1e-9, sum(b["seconds"] for b in base))
    lines.append(f"| all | | | | {tot:.2f} |")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "lost" if v is None else f"{v:.3f}"


def report(results: list[dict], judges, title: str) -> str:
    lines = [f"## {title}", "",
             "Per face: clean vs protected file / vs it after JPEG q75 + 1080 px (`*` = past the "
             "judge's same-person line: hidden); `other`: shared protected face vs the person's "
             "other clean photos (clean vs other in brackets).", ""]
    head = "| photo | face | " + " | ".join(
        f"{j.name}{' (held-out)' if j.held_out else ''}" for j in judges) + " |"
    lines += [head, "|---|---|" + "---|" * len(judges)]
    for r in results:
        for row in r["rows"]:
            cells = []
            for j in judges:
                sv, sh = row[f"{j.name}:saved"], row[f"{j.name}:shared"]
                mark = "*" if sh is not None and not j.same(sh) else ""
                cell = f"{_fmt(sv)} / {_fmt(sh)}{mark}"
                if f"{j.name}:other_shared" in row:
                    cell += (f"; other {_fmt(row[f'{j.name}:other_shared'])} "
                             f"({_fmt(row[f'{j.name}:other_clean'])})")
                cells.append(cell)
            lines.append(f"| {row['photo']} | {row['face']} | " + " | ".join(cells) + " |")
    lines += ["", "| judge | line | hidden after sharing | mean after sharing | clean shared "
              "(ref) | other photos: protected / clean (hidden) |", "|---|---|---|---|---|---|"]
    for j in judges:
        rows = [row for r in results for row in r["rows"]]
        sh = [row[f"{j.name}:shared"] for row in rows]
        ref = [row[f"{j.name}:clean_shared"] for row in rows if row[f"{j.name}:clean_shared"]
               is not None]
        got = [v for v in sh if v is not None]
        hidden = sum(not j.same(v) for v in got)
        lost = len(sh) - len(got)
        oth = [(row[f"{j.name}:other_shared"], row[f"{j.name}:other_clean"]) for row in rows
               if row.get(f"{j.name}:other_shared") is not None]
        # The attack tool's question: does the protected face still match the person's other
        # photos? Hidden = past the line against them.
        other = (f"{np.mean([o[0] for o in oth]):.3f} / {np.mean([o[1] for o in oth]):.3f} "
                 f"({sum(not j.same(o[0]) for o in oth)}/{len(oth)} hidden)" if oth else "n/a")
        lines.append(f"| {j.name}{' (held-out)' if j.held_out else ''} | {j.threshold} | "
                     f"{hidden}/{len(sh)}{f' ({lost} lost)' if lost else ''} | "
                     f"{np.mean(got) if got else float('nan'):.3f} | "
                     f"{np.mean(ref) if ref else float('nan'):.3f} | {other} |")
    # shade / SSIM 4x: benchmarks/shading.py (the smooth shading the face SSIM misses).
    lines += ["", "| photo | faces | s/face | PSNR | max change | visible (JND, worst face) | "
              "face SSIM | face dE mean | face dE p95 | face shade | face SSIM 4x |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['photo']} | {r['faces']} | {r['s_per_face']} | {r['psnr']} | "
                     f"{r['linf']}/255 | {r['face_jnd']} | {r['face_ssim']} | "
                     f"{r['face_de_mean']} | "
                     f"{r['face_de_p95']} | {r['face_shade']} | {r['face_ssim4']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", choices=PHOTO_SETS, default="heldout")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--steps", type=int, default=None, help="zero-shot steps (default: preset)")
    ap.add_argument("--encoders", nargs="*", default=["dlib", "sface", "edgeface"],
                    help="encoder names, or paths of ONNX recognizers to add as encoders")
    ap.add_argument("--seed", type=int, default=None, help="the shield's seed (default: preset)")
    ap.add_argument("--shield", nargs="*", default=[], help="ShieldOptions overrides key=value")
    ap.add_argument("--alpha2", type=float, default=None,
                    help="the shield's PGD step scale in 1/255 (default: the preset's, eps/20)")
    ap.add_argument("--eps", type=float, default=None,
                    help="L-inf budget in 1/255 (default: the preset's); the face SSIM target "
                         "and step count stay the preset's, the step scale follows the budget "
                         "(eps/20) as a custom budget's does in the app")
    ap.add_argument("--face-jnd", type=float, default=None,
                    help="the visibility target in JND (shield option visibility=jnd)")
    ap.add_argument("--face-ssim", type=float, default=None,
                    help="face SSIM target of the shield (default: the preset's)")
    ap.add_argument("--leave-one-out", action="store_true")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the first release's shield (dlib only, no transfer or "
                         "visibility options) on each photo, alternating, for a time ratio")
    ap.add_argument("--previous", action="store_true",
                    help="also run the previous release's shield (SSIM-held, its own preset "
                         "budget and steps) on each photo, alternating, for a side-by-side "
                         "table and time ratio")
    ap.add_argument("--only", nargs="*", default=None, help="photo file names to run")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/transfer"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    args.out.mkdir(parents=True, exist_ok=True)
    photos = photo_set(args.set, args.out / "inputs")
    if args.only:
        photos = [p for p in photos if p.path.name in args.only]
    settings = preset(args.preset)
    # The first release's shield ran the preset's own step count, whatever --steps says.
    first_release = settings
    if args.steps:
        settings = settings.with_overrides(layer2_steps=args.steps)
    if args.seed is not None:
        # Another draw of the random start, views and jitter: a single run's noise level.
        settings = settings.with_overrides(seed=args.seed)
    if args.eps is not None:
        # The preset's face SSIM target, not the new budget's: only the budget changes.
        settings = settings.with_overrides(eps=args.eps, face_ssim=settings.face_ssim_target)
    if args.face_ssim is not None:
        settings = settings.with_overrides(face_ssim=args.face_ssim)
    if args.face_jnd is not None:
        settings = settings.with_overrides(face_jnd=args.face_jnd)
    if args.alpha2 is not None:
        settings = settings.with_overrides(alpha2=args.alpha2)
    opts = shield_options(args.shield)
    detector = DlibDetector()
    judges = load_judges()
    encoders = load_encoders(args.encoders)
    clean = Photos(photos, detector, judges)
    load = os.getloadavg()[0]
    head = (f"set {args.set}, preset {settings.preset} (eps {settings.eps}/255, "
            f"{settings.layer2_steps} steps of {settings.step2:g}/255, face SSIM target "
            f"{settings.face_ssim_target:g}), encoders {'+'.join(e.name for e in encoders)}, "
            f"options {opts}, {args.threads} thread(s), load average {load:.2f}")
    results, base, prev = [], [], []
    previous = previous_settings(args.preset)
    if args.previous:
        warm_up(clean.items, encoders, previous, layer2.SSIM_RELEASE)
    # The first release's ensemble (dlib alone), loaded once for every photo's baseline run.
    first_encoders = load_encoders(["dlib"]) if args.baseline else []
    warm_up(clean.items, encoders, settings, opts,
            (first_release, first_encoders) if args.baseline else None)
    for item in clean.items:
        results.append(run_photo(item, clean, encoders, judges, detector, settings, opts,
                                 args.out, f"{settings.preset}-all"))
        if args.baseline:
            base.append(run_photo(item, clean, first_encoders, judges, detector,
                                  first_release, BASELINE, args.out,
                                  f"{settings.preset}-baseline"))
        if args.previous:
            prev.append(run_photo(item, clean, encoders, judges, detector, previous,
                                  layer2.SSIM_RELEASE, args.out, f"{settings.preset}-previous"))
    text = [report(results, judges, "attack: " + head)]
    if base:
        text.append(report(base, judges, "first release's shield (dlib only, no options), same "
                                         "run"))
        text.append(time_table(results, base))
    if prev:
        text.append(report(prev, judges, f"previous release's shield (SSIM-held, eps "
                                         f"{previous.eps:g}/255, {previous.layer2_steps} steps, "
                                         f"face SSIM {previous.face_ssim_target:g}), same run"))
        text.append(time_table(results, prev).replace("first release", "previous release"))
    if args.leave_one_out and len(encoders) > 1:
        for held in encoders:
            rest = [e for e in encoders if e is not held]
            res = [run_photo(item, clean, rest, judges, detector, settings, opts, args.out,
                             f"{settings.preset}-no-{held.name}") for item in clean.items]
            text.append(report(res, [j for j in judges if j.name == held.name],
                               f"leave-one-out: {held.name} not attacked"))
            results += [{**r, "left_out": held.name} for r in res]
    out = "\n\n".join(text)
    print(out)
    (args.out / "transfer.md").write_text(out + "\n")
    (args.out / "transfer.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bit-level parity of the three shield entry points across an engine refactor.

Runs ``protect_album_layer1`` (tiny random Stable Diffusion from ``tests/fixtures``, built
here), ``protect_faces`` (the real offline dlib detector and ResNet) and ``polish_photo`` on
small real inputs (skimage's astronaut, cut and reduced) on the CPU with fixed seeds, in
several configurations, and saves every output tensor and reported number to one file. Run it
on two commits and compare: ``--compare a.pt b.pt`` prints, per entry, whether the tensors are
``torch.equal`` and otherwise the largest absolute difference.

    PYTHONPATH=$PWD python benchmarks/driver_parity.py --out after.pt
    PYTHONPATH=$PWD python benchmarks/driver_parity.py --compare before.pt after.pt

About a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def _photos() -> dict[str, Any]:
    from skimage import data

    astro = data.astronaut().astype(np.float32) / 255.0  # (512, 512, 3)
    face = np.ascontiguousarray(astro[:224, 112:336])    # the face, 224 px
    # The whole photo halved to 256 px (2x2 area average): a face dlib sees small.
    whole = astro.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    return {"face": face, "whole": np.ascontiguousarray(whole)}


def _tensor(photo: np.ndarray) -> Any:
    import torch

    t = torch.from_numpy(np.rint(photo * 255.0) / 255.0).permute(2, 0, 1)[None]
    return t.float().contiguous()


def run(out: Path) -> None:
    import torch

    from dladiff_app.core.presets import Layers, ProtectionSettings
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
    from dladiff_app.engine.shield.layer1 import protect_album_layer1
    from dladiff_app.engine.shield.layer2 import FIRST_RELEASE, ShieldOptions, protect_faces
    from dladiff_app.engine.shield.polish import polish_photo
    from dladiff_app.engine.shield.views import ViewPolicy
    from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION, build_tiny_sd

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    photos = _photos()
    encoder = DlibEncoder.load()
    detector = DlibDetector()
    base = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.BOTH, layer1_rounds=3,
                              layer1_pgd_steps=3, layer1_lora_steps=2, prior_steps=2,
                              prior_refresh_every=2, layer2_steps=8, polish_steps=4, seed=3)

    # Layer 2 on its own: default levers with EOT, the first release without EOT, a blurred
    # gradient with both encoders' weights given, and a photo where the face is small.
    for name, key, opts, eot in (
            ("l2_default", "face", ShieldOptions(), True),
            ("l2_first_release_no_eot", "face", FIRST_RELEASE, False),
            ("l2_blur_hard_budget", "face", replace(ShieldOptions(), grad_blur=1.0,
                                                     soft_budget=0.0), True),
            ("l2_whole", "whole", ShieldOptions(), True)):
        photo = photos[key]
        clean = _tensor(photo)
        faces = detector.detect(photo)
        res = protect_faces(clean, None, faces, [encoder], replace(base, eot=eot),
                            options=opts, weights={encoder.name: 0.7})
        results[name] = {"protected": res.protected, "final": res.final_similarity,
                         "initial": res.initial_similarity, "steps": res.steps_done}

    with tempfile.TemporaryDirectory() as tmp:
        sd = build_tiny_sd(Path(tmp) / "sd")
        album = [_tensor(photos["face"])[0], _tensor(photos["whole"][:, :192])[0]]
        for name, settings, views in (
                ("l1_centre", replace(base, eot=False), None),
                ("l1_views", base, None),
                ("l1_offsets_prompts", base, ViewPolicy(offsets=True, prompts=True))):
            res = protect_album_layer1(album, sd, settings, working_size=TINY_SD_RESOLUTION,
                                       views=views, micro_batch=1 if name != "l1_views" else 2,
                                       keep_surrogates=name == "l1_views",
                                       cache_dir=Path(tmp) / "cache")
            st = res.stats
            results[name] = {"protected": res.protected, "pgd_loss": st.pgd_loss,
                             "lora_loss": st.lora_loss, "prior_loss": st.prior_loss,
                             "objective": [e.objective for e in st.epochs], "cache_hit": res.prior_cache_hit,
                             "lora": res.lora_states}
            if res.surrogates is not None:
                clean = _tensor(photos["face"])
                faces = detector.detect(photos["face"])
                l2 = protect_faces(clean, res.protected[0][None], faces, [encoder], base)
                current = torch.round(l2.protected * 255) / 255
                for pname, eot in (("polish_eot", True), ("polish_no_eot", False)):
                    pol = polish_photo(clean, current, faces, [encoder], res.surrogates,
                                       replace(base, eot=eot), dual_weight=0.5)
                    results[pname] = {"protected": pol.protected, "steps": pol.steps_done,
                                      "numbers": (pol.identity_before, pol.identity_after,
                                                  pol.dual_first, pol.dual_last)}
    torch.save(results, out)
    print(f"saved {len(results)} entries to {out}")


def _diff(a: Any, b: Any) -> str:
    import torch

    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if torch.equal(a, b):
            return "equal"
        return f"max |diff| {float((a.double() - b.double()).abs().max()):.3e}"
    if isinstance(a, dict):
        diffs = {k: _diff(a[k], b.get(k)) for k in a}
        bad = {k: v for k, v in diffs.items() if v != "equal"}
        return "equal" if not bad and set(a) == set(b) else str(bad or "keys differ")
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"length {len(a)} vs {len(b)}"
        diffs = [_diff(x, y) for x, y in zip(a, b, strict=True)]
        bad = [f"[{i}] {d}" for i, d in enumerate(diffs) if d != "equal"]
        return "equal" if not bad else "; ".join(bad)
    return "equal" if a == b else f"{a!r} vs {b!r}"


def compare(a_path: Path, b_path: Path) -> int:
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    failed = 0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"{key}: only in {'first' if key in a else 'second'}")
            failed += 1
            continue
        verdict = _diff(a[key], b[key])
        failed += verdict != "equal"
        print(f"{key}: {verdict}")
    print("PARITY: all equal" if not failed else f"PARITY: {failed} entries differ")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", type=Path, nargs=2)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("--out or --compare is required")
    run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

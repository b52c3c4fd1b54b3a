"""GPU readiness check: the Medium preset with both layers on 4 photos, through the real job
runner, on the full-size SD 1.5 architecture with random weights (no download needed).

Writes ``gpu_check_<device>_<size>.json`` and ``.md`` to ``--out`` (default
``benchmarks/results``): total time, time per PGD step and per LoRA step (the device is waited
for at the end of each phase, so these are real), peak VRAM (CUDA) or peak RSS (CPU), achieved
TFLOPS of the PGD step (FLOPs counted by ``torch.utils.flop_counter``) against the card's dense
bf16 peak when the card is known, and the same PGD step as a plain reference loop (two fp32
UNets, each loss computed from scratch: ``benchmarks/fine_tune_shield.py``) side by side.

README targets on one datacenter GPU (Medium, both layers, 4 photos at 512 px): whole job
<= 20 s, peak VRAM <= 8 GB, PGD step <= 0.8 x the plain reference.

    bash benchmarks/gpu_check.sh                         # CUDA, 512 px, full SD 1.5 architecture
    bash benchmarks/gpu_check.sh --device cpu --size 64  # CI: the tiny SD config, ~1-2 min

Below 256 px the tiny random SD of the tests (native 64 px) stands in for SD 1.5, so CI can
afford the run; the photos stay large enough (>= 256 px) for the face detector either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fine_tune_shield import (  # noqa: E402
    build_sd15_random,
    reference_pgd_seconds,
    reset_rss_peak,
    rss_peak_bytes,
)
from dladiff_app.core.events import Event, PhotoDone, PhotoFailed  # noqa: E402
from dladiff_app.core.jobs import ProtectJob  # noqa: E402
from dladiff_app.core.presets import Layers, preset  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOPS.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 peak when its name contains a known model (longest match)."""
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def face_photos(folder: Path, n: int, side: int) -> list[Path]:
    """n face photos (crops of skimage's astronaut at different offsets), ``side`` px on the
    shorter side, saved as PNG."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astro = Image.fromarray(data.astronaut())
    paths = []
    for i in range(n):
        crop = astro.crop((60 + 12 * i, 0, 460 + 12 * i, 480))  # 400 x 480, the face inside
        photo = crop.resize((side, side * 6 // 5), Image.Resampling.LANCZOS)
        paths.append(folder / f"photo{i}.png")
        photo.save(paths[-1])
    return paths


def pgd_step_flops(kit: Any, size: int) -> float | None:
    """FLOPs of the dual loss of one view of one photo (forward + backward to the pixels),
    counted on the surrogates the job left loaded."""
    from torch.utils.flop_counter import FlopCounterMode

    session = getattr(kit.layer1, "__self__", None)
    surrogates = getattr(session, "surrogates", None)
    if surrogates is None:
        return None
    x = torch.full((1, 3, size, size), 0.5, device=surrogates.sur.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        loss = surrogates.dual_loss(x, torch.Generator().manual_seed(0))
        torch.autograd.grad(loss, x)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512, help="working size of layer 1")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--reference-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="keep/reuse the random SD folder here (default: a temp folder)")
    args = ap.parse_args(argv)

    from dladiff_app.engine.device import resolve_device
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
    from dladiff_app.engine.kit import build_kit
    from dladiff_app.engine.runner import run_job

    info = resolve_device(args.device)
    dev = torch.device(info.torch_device)
    cuda = dev.type == "cuda"
    tiny = args.size < 256
    settings = preset(args.preset).with_overrides(layers=Layers.BOTH)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.model_dir or tmp / ("tiny_sd" if tiny else "sd15_random")
        t0 = time.perf_counter()
        if not (folder / "model_index.json").is_file():
            if tiny:
                from tests.fixtures.tiny_sd import build_tiny_sd

                build_tiny_sd(folder)
            else:
                build_sd15_random(folder)
        build_s = time.perf_counter() - t0
        photos = face_photos(tmp / "album", args.photos, max(args.size, 256))
        # The tiny CI run takes up to 4 photos per pass, layer 1's CUDA default, so it does
        # the GPU run's work in the same batches (the CPU default of one photo per pass is for
        # full-size SD's memory, which the tiny model does not need).
        kit = build_kit(settings, device=args.device, pipeline_dir=folder,
                        detector=DlibDetector(), encoders=[DlibEncoder.load()],
                        working_size=args.size, cache_dir=tmp / "prior_cache",
                        micro_batch=min(args.photos, 4) if tiny else None)
        events: list[Event] = []
        job = ProtectJob(inputs=(tmp / "album",), output_dir=tmp / "out", settings=settings)
        reset_rss_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t_job = time.perf_counter()
        summary = run_job(job, kit, events.append)
        total_s = time.perf_counter() - t_job
        peak_rss = rss_peak_bytes()
        peak_vram = torch.cuda.max_memory_allocated(dev) if cuda else None
        failed = [e.reason for e in events if isinstance(e, PhotoFailed)]
        done = [e.result for e in events if isinstance(e, PhotoDone)]
        stats = kit.layer1.__self__.last_stats
        pgd_s = stats.pgd_seconds / max(1, settings.layer1_total_pgd)
        lora_steps = (settings.layer1_rounds - 1) * settings.layer1_lora_steps
        lora_s = stats.lora_seconds / lora_steps if lora_steps else float("nan")
        flops = pgd_step_flops(kit, stats.working_size)
        del kit
        if cuda:
            torch.cuda.empty_cache()
        from dladiff_app.core.imageio import load_image

        tensors = [torch.from_numpy(load_image(p).pixels).permute(2, 0, 1) for p in photos]
        # The reference does the same work: both surrogates, on as many views per photo.
        views = 2 if "mirrored" in stats.attacker_views else 1
        ref = reference_pgd_seconds(folder, tensors, stats.working_size,
                                    args.reference_steps, dev, surrogates=2, views=views)
    ref_s = sorted(ref)[len(ref) // 2]
    # FLOPs were counted on one view of one photo; a PGD step does ``views`` per photo.
    achieved = flops * views * args.photos / pgd_s / 1e12 if flops and pgd_s > 0 else None
    peak = bf16_peak(info.name) if cuda else None
    report = {
        "device": info.torch_device, "device_name": info.name,
        "precision": str(info.autocast_dtype or torch.float32),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "model": "tiny random SD (test config)" if tiny else "SD 1.5 architecture, random",
        "model_build_seconds": build_s, "working_size": stats.working_size,
        "photos": args.photos, "photo_size": list(tensors[0].shape[-2:]),
        "preset": args.preset, "layers": "both",
        "done": summary.done, "failed": failed,
        "layers_done": sorted({"+".join(r.layers_done) for r in done}),
        "total_seconds": total_s,
        "attacker_views": stats.attacker_views, "reference_views_per_photo": views,
        "pgd_step_seconds_album": pgd_s, "lora_step_seconds": lora_s,
        "prior_seconds": stats.prior_seconds, "step_downs": stats.step_downs,
        "reference_pgd_step_seconds_album": ref_s, "reference_pgd_steps": ref,
        "pgd_ratio_vs_reference": pgd_s / ref_s,
        "dual_loss_flops_per_view": flops, "achieved_tflops": achieved,
        "bf16_peak_tflops": peak,
        "peak_vram_bytes": peak_vram, "peak_rss_bytes": peak_rss,
        "targets": {"total_seconds": 20.0, "peak_vram_bytes": 8 * 10**9,
                    "pgd_ratio_vs_reference": 0.8,
                    "apply_to": "cuda, 512 px, 4 photos, medium, both layers"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu_check_{dev.type}_{args.size}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    gib = 2**30

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    on_target = cuda and args.size == 512 and args.photos == 4 and args.preset == "medium"
    lines = [
        f"# GPU check: {args.preset}, both layers, {args.photos} photos, {args.size} px, "
        f"{info.name}",
        "",
        f"Command: `bash benchmarks/gpu_check.sh --device {args.device} --size {args.size}`; "
        f"{report['model']}; {report['precision']}; {report['threads']} torch thread(s), "
        f"load average {report['load_average']:.1f} at the end. Layer-1 views: "
        f"{stats.attacker_views}; the reference loop does the same {views} view(s) per photo "
        "with two fp32 UNets and every loss computed from scratch.",
        "",
        "| measure | ours | plain reference | target (CUDA, 512 px) |",
        "|---|---|---|---|",
        f"| whole job (s) | {total_s:.1f} | | <= 20 |",
        f"| PGD step, album of {args.photos} (s) | {pgd_s:.3f} | {ref_s:.3f} | |",
        f"| PGD step ratio ours / reference | {pgd_s / ref_s:.2f} | 1 | <= 0.8 |",
        f"| LoRA step (s) | {fmt(lora_s, '.3f')} | | |",
        f"| prior surrogate, all steps (s) | {stats.prior_seconds:.1f} | | |",
        f"| peak VRAM (GiB) | {fmt(peak_vram / gib if peak_vram else None, '.2f')} | | <= 7.45 (8 GB) |",
        f"| peak RSS (GiB) | {peak_rss / gib:.2f} | | |",
        f"| achieved TFLOPS (PGD) | {fmt(achieved, '.3g')} | | |",
        f"| card's dense bf16 peak (TFLOPS) | {fmt(peak, '.0f')} | | |",
        "",
        f"Photos done {summary.done}/{args.photos}, layers {report['layers_done']}"
        + (f", failures: {failed}" if failed else "")
        + (f"; step-downs: {stats.step_downs}" if stats.step_downs else "") + ".",
        "" if on_target else "Not the target configuration: the targets above are not "
        "judged by this run.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {stem}.json, {stem}.md")
    return 0 if summary.done == args.photos else 1


if __name__ == "__main__":
    raise SystemExit(main())

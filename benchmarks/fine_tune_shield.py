"""Benchmark of layer 1 (the fine-tuning shield) on the full-size SD 1.5 architecture.

Builds Stable Diffusion 1.5's exact architecture (UNet 320/640/1280/1280 with cross-attention
768, VAE 128/256/512/512, CLIP text encoder 12 x 768) with RANDOM weights from configs (no
download), saves it as a diffusers folder, and runs ``protect_album_layer1`` on it, timing every
PGD step and every LoRA step through the progress callback. It then times the same PGD step
written as a plain fp32 reference loop (straight diffusers calls, two UNets for the two
surrogates, each loss computed from scratch, no project code) and reports our per-photo PGD step as a ratio of it. Random weights cost the same
FLOPs as real ones, so the timings and memory are representative; the losses are not.

Usage::

    python benchmarks/fine_tune_shield.py --device cpu --size 256 --steps 2
    python benchmarks/fine_tune_shield.py --device cuda --size 512   # Medium preset, 4 photos

Peak memory: RSS high-water mark from /proc/self/status (reset between phases through
/proc/self/clear_refs), and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.core.presets import preset  # noqa: E402
from dladiff_app.engine.shield.layer1 import protect_album_layer1  # noqa: E402
from tests.fixtures.tiny_sd import make_tiny_clip_tokenizer  # noqa: E402


def rss_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_rss_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def sd15_unet() -> torch.nn.Module:
    """SD 1.5's UNet (config as published) with random weights, built on the current default
    device (``with torch.device("meta")`` builds it without memory, for counting)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )


def build_sd15_random(folder: Path) -> Path:
    """SD 1.5's architecture (configs as published for runwayml/stable-diffusion-v1-5) with
    random weights, saved as a diffusers folder. The tokenizer is the tiny test one: the
    instance prompt's ids are all inside CLIP's 49408-token embedding table."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = sd15_unet()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
    ))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=make_tiny_clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def album(n: int, size: int) -> list[torch.Tensor]:
    """n real face photos (skimage's astronaut, shifted crops), a bit larger than ``size``."""
    from skimage import data

    base = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    side = max(size + size // 4, 64)
    photos = []
    for i in range(n):
        crop = base[:, 8 * i: 8 * i + 480, 16 * i: 16 * i + 400]
        photos.append(F.interpolate(crop[None], size=(side * 6 // 5, side), mode="bilinear",
                                    antialias=True, align_corners=False)[0].clamp(0, 1))
    return photos


def reference_pgd_seconds(folder: Path, photos: list[torch.Tensor], size: int, steps: int,
                          device: torch.device, surrogates: int = 2,
                          views: int = 1, *, dtype: torch.dtype | None = None,
                          micro_batch: int = 1) -> list[float]:
    """The same PGD step written the plain way: diffusers calls only, and each of the
    ``surrogates`` (2 = DSUR's dynamic and prior surrogate) a UNet of its own whose loss
    L(S, x) is computed from scratch (its own resize, VAE encode, noise and UNet pass), summed,
    then one backward to the pixels. Seconds per step for the whole album.
    ``surrogates=1`` is the single-model textbook step, reported for scale. ``views=2``: each
    loss also on the mirrored crop (the work layer 1's default view pair does).
    ``dtype``: the half dtype the frozen weights are loaded in and autocast to (what our
    layer 1 runs on CUDA), None for fp32; ``micro_batch``: photos per pass (ours: its plan's),
    1 = one photo at a time. The folder's fp16 files are read when only they exist
    (``variant="fp16"``, as a CUDA ``models download sd15`` leaves it)."""
    import contextlib
    import copy

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from dladiff_app.engine.models.loaders import folder_variant

    weights = dtype or torch.float32
    variant = folder_variant(folder, weights)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant=variant).to(
        device, weights).requires_grad_(False)
    unets = [unet] + [copy.deepcopy(unet) for _ in range(surrogates - 1)]
    vae = AutoencoderKL.from_pretrained(folder / "vae", variant=variant).to(
        device, weights).requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    cond = torch.randn(1, 77, int(unet.config.cross_attention_dim), device=device)
    gen = torch.Generator().manual_seed(0)
    xs = [p.clone().to(device) for p in photos]

    def autocast() -> contextlib.AbstractContextManager[object]:
        return (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())

    def crop(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        rh, rw = round(h * scale), round(w * scale)
        top, left = (rh - size) // 2, (rw - size) // 2
        img = F.interpolate(x[None], size=(rh, rw), mode="bilinear", antialias=True)
        return img[..., top: top + size, left: left + size]

    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for first in range(0, len(xs), micro_batch):
            idx = list(range(first, min(first + micro_batch, len(xs))))
            leaves = [xs[i].detach().requires_grad_(True) for i in idx]
            loss = torch.zeros((), device=device)
            for model in unets:
                for view in range(views):
                    img = torch.cat([crop(x) for x in leaves])
                    img = img.flip(-1) if view else img
                    with autocast():
                        lat = vae.encode(img * 2 - 1).latent_dist.sample().float() \
                            * vae.config.scaling_factor
                    noise = torch.randn(lat.shape, generator=gen).to(device)
                    t = torch.randint(0, 1000, (len(idx),), generator=gen).to(device)
                    with autocast():
                        pred = model(sched.add_noise(lat, noise, t), t,
                                     encoder_hidden_states=cond.expand(len(idx), -1, -1)).sample
                    loss = loss + F.mse_loss(pred.float(), noise)
            grads = torch.autograd.grad(loss, leaves)
            for i, x, g in zip(idx, leaves, grads, strict=True):
                xs[i] = (x.detach() + g.sign() / 255).clamp(0, 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del unets
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=None, help="working size (CPU 256, CUDA 512)")
    ap.add_argument("--steps", type=int, default=None,
                    help="PGD steps (CPU default 4; CUDA default: the Medium preset)")
    ap.add_argument("--photos", type=int, default=None, help="album size (CPU 1, CUDA 4)")
    ap.add_argument("--json", type=Path, default=Path("fine_tune_shield.json"))
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="reuse/keep the random SD 1.5 folder here (default: a temp folder)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = args.size or (512 if cuda else 256)
    n_photos = args.photos or (4 if cuda else 1)
    settings = preset("medium")
    if args.steps is not None or not cuda:
        steps = args.steps or 4
        settings = settings.with_overrides(
            layer1_rounds=2, layer1_pgd_steps=math.ceil(steps / 2),
            layer1_lora_steps=max(1, steps // 4), prior_steps=max(1, steps // 2))
    tmp = None
    if args.model_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="sd15_random_"))
        folder = tmp / "sd15"
    else:
        folder = args.model_dir
    try:
        if not (folder / "model_index.json").is_file():
            t0 = time.perf_counter()
            build_sd15_random(folder)
            print(f"built random SD 1.5 in {time.perf_counter() - t0:.0f} s", flush=True)
        photos = album(n_photos, size)
        stamps: list[tuple[str, float]] = []
        reset_rss_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t_start = time.perf_counter()
        result = protect_album_layer1(
            photos, folder, settings, device=args.device, working_size=size,
            progress=lambda stage, step, total: stamps.append((stage, time.perf_counter())),
        )
        ours_total = time.perf_counter() - t_start
        ours_rss = rss_peak_bytes()
        ours_cuda = torch.cuda.max_memory_allocated() if cuda else None
        per_stage: dict[str, list[float]] = {}
        prev = None
        for stage, t in stamps:
            # The first step of each stage also pays for the stage's set-up; it is kept in.
            per_stage.setdefault(stage, []).append(t - (prev if prev is not None else t_start))
            prev = t
        views = 2 if "mirrored" in result.stats.attacker_views else 1  # same work as ours
        del result
        reset_rss_peak()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        ref = reference_pgd_seconds(folder, photos, size, max(1, len(per_stage["layer1_pgd"])),
                                    device, surrogates=2, views=views)
        ref_rss = rss_peak_bytes()
        ref_cuda = torch.cuda.max_memory_allocated() if cuda else None
        single = reference_pgd_seconds(folder, photos, size, 1, device, surrogates=1)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def mean(v: list[float]) -> float:
        return sum(v) / len(v) if v else float("nan")

    def steady(v: list[float]) -> float:
        """Median of the steps after the first: the first step of a phase pays one-off costs
        (allocator warm-up, lazy kernels) that a long protection run amortises."""
        rest = sorted(v[1:] if len(v) > 1 else v)
        if not rest:
            return float("nan")
        mid = len(rest) // 2
        return rest[mid] if len(rest) % 2 else (rest[mid - 1] + rest[mid]) / 2

    # The first prior step's interval also holds the model load: reported apart, and left out
    # of the LoRA mean when there is another prior step.
    prior = per_stage.get("prior", [])
    first_interval = prior[0] if prior else float("nan")
    steady_prior = prior[1:] if len(prior) > 1 else prior
    pgd_s = steady(per_stage.get("layer1_pgd", []))
    lora_s = mean(per_stage.get("layer1_lora", []) + steady_prior)
    ref_s = steady(ref)
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "working_size": size, "photos": n_photos, "photo_size": list(photos[0].shape[-2:]),
        "settings": settings.to_dict(), "total_seconds": ours_total,
        "pgd_step_seconds": pgd_s, "pgd_step_seconds_per_photo": pgd_s / n_photos,
        "lora_step_seconds": lora_s, "load_plus_first_prior_step_seconds": first_interval, "pgd_steps": per_stage.get("layer1_pgd", []),
        "lora_steps": per_stage.get("layer1_lora", []), "prior_steps": per_stage.get("prior", []),
        "reference_pgd_step_seconds": ref_s, "reference_pgd_steps": ref,
        "pgd_ratio_vs_reference": pgd_s / ref_s,
        "single_surrogate_step_seconds": mean(single),
        "peak_rss_bytes": ours_rss, "reference_peak_rss_bytes": ref_rss,
        "cuda_max_allocated_bytes": ours_cuda, "reference_cuda_max_allocated_bytes": ref_cuda,
        "note": "ours: dual surrogates as two LoRA adapters on one base UNet, one shared VAE "
                "encode, 2 UNet passes per photo; reference: the same dual loss the plain way "
                "(two fp32 UNets, each loss with its own encode); single: one UNet, for scale",
    }
    gib = 2**30
    print(f"\nlayer 1 on SD 1.5 architecture (random weights), {report['device_name']}, "
          f"{size} px, {n_photos} photo(s)")
    print(f"{'':30s}{'ours':>12s}{'reference':>12s}")
    print(f"{'PGD step, s (album)':30s}{pgd_s:12.2f}{ref_s:12.2f}")
    print(f"{'PGD ratio ours/reference':30s}{pgd_s / ref_s:12.2f}")
    print(f"{'single-surrogate step, s':30s}{'':>12s}{mean(single):12.2f}")
    print(f"{'LoRA step, s':30s}{lora_s:12.2f}{'':>12s}")
    print(f"{'peak RSS, GiB':30s}{ours_rss / gib:12.2f}{ref_rss / gib:12.2f}")
    if cuda:
        print(f"{'CUDA max allocated, GiB':30s}{ours_cuda / gib:12.2f}{ref_cuda / gib:12.2f}")
    print(f"{'total layer-1 run, s':30s}{ours_total:12.1f}")
    args.json.write_text(json.dumps(report, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

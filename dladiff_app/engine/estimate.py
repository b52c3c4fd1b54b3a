"""Time estimates for a protection job, from costs measured on this machine.

Per-photo work (layer 2, polish, detection, scoring) is timed once per device with the real
identity encoders and detector on a synthetic face-sized crop (:func:`calibrate`, about a second
on a CPU). Layer 1 costs one Stable Diffusion forward/backward per PGD step and photo: it comes
from a real step timed on the loaded surrogates when a kit has them, else from the table
measured for the full SD 1.5 architecture on the reference CPU (shared ENVIRONMENT.md); on a GPU
without a measurement the layer-1 part is NaN ("unknown until the first step").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dladiff_app.core.presets import ProtectionSettings

if TYPE_CHECKING:
    from dladiff_app.engine.faces.types import FaceDetector, IdentityEncoder

# Measured on this project's reference CPU (2 threads, fp32, full SD 1.5 architecture, 512 px;
# see shared ENVIRONMENT.md "Costs measured on this CPU"): seconds per layer-1 PGD step and per
# LoRA step, for one photo.
CPU_SECONDS_PER_PGD_STEP_512 = 21.8
CPU_SECONDS_PER_LORA_STEP_512 = 15.7
LORA_PER_PGD = CPU_SECONDS_PER_LORA_STEP_512 / CPU_SECONDS_PER_PGD_STEP_512
# Layer 1's default views (``shield.views.ViewPolicy``): each PGD step evaluates every photo on
# its plain and its mirrored crop, twice the one-view step measured above; a measured step
# already includes them, a LoRA step and the polish's one-view loss do not.
LAYER1_VIEWS_PER_PGD_STEP = 2

# The calibration face: a 256 px face in the middle of a 640 px crop, about the crop layer 2
# works on for a face of a phone portrait seen at 1080 px (crop = 2.6 x the face box).
_FACE_PX, _CROP_PX = 256, 640
# insightface's 112 px ArcFace template (left eye, right eye, nose, mouth corners).
_TEMPLATE_112 = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37],
                          [70.73, 92.20]])
# Detections per photo: the runner's one on the clean photo, and the scorer's two on the saved
# file vs the clean photo at full size; the two "after sharing" ones run at <= 1080 px.
_FULL_DETECTIONS, _SHARED_DETECTIONS, _SHARED_MP = 3, 2, 1080 * 810 / 1e6
_EMBEDS_PER_PHOTO = 4


@dataclass(frozen=True)
class Calibration:
    """Seconds measured on this machine: one layer-2 step on one face (every encoder's forward
    and backward plus one EOT view), one forward of every encoder, one detection per megapixel.
    Zero where the piece is absent (no encoder, no detector)."""

    layer2_step_s: float
    embed_s: float
    detect_s_per_mp: float
    encoders: tuple[str, ...]


@dataclass(frozen=True)
class JobEstimate:
    """``layer1_s`` is NaN when unknown (a GPU before its first measured step); ``total_s`` is
    then NaN too. ``note`` says where the numbers come from."""

    layer1_s: float
    per_photo_s: float
    total_s: float
    note: str


def calibration_face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(box (4,), insightface landmarks (5, 2), dlib 5-point shape (5, 2)) of the synthetic face
    in the calibration crop."""
    off = (_CROP_PX - _FACE_PX) / 2
    lm = _TEMPLATE_112 * (_FACE_PX / 112) + off
    box = np.array([off, off, off + _FACE_PX, off + _FACE_PX], dtype=np.float64)
    # dlib's 5-point order: eye corners (outer, inner) of one eye, then the other, then nose.
    eye_w = 0.12 * _FACE_PX
    right, left = lm[1], lm[0]
    dlib5 = np.array([right + [eye_w / 2, 0], right - [eye_w / 2, 0], left - [eye_w / 2, 0],
                      left + [eye_w / 2, 0], lm[2] + [0, 0.06 * _FACE_PX]])
    return box, lm, dlib5


def calibrate(encoders: Sequence[IdentityEncoder], detector: FaceDetector | None,
              settings: ProtectionSettings | None = None) -> Calibration:
    """Time the real encoders and detector once (each after one warm-up call)."""
    import torch

    from dladiff_app.engine.faces.types import Face
    from dladiff_app.engine.shield.eot import EotConfig, apply_transform, sample_transform
    from dladiff_app.engine.shield.layer2 import layer2_loss

    box, lm, dlib5 = calibration_face()
    face = Face(box=box, landmarks5=lm, dlib_shape=dlib5)
    gen = torch.Generator().manual_seed(0)
    crop = torch.rand((1, 3, _CROP_PX, _CROP_PX), generator=gen)
    use_eot = settings.eot if settings is not None else True
    layer2_s = embed_s = 0.0
    if encoders:
        with torch.no_grad():
            targets = [{e.name: e.embed(crop, face).detach() for e in encoders}]  # warm-up
        started = time.perf_counter()
        with torch.no_grad():
            for e in encoders:
                e.embed(crop, face)
        embed_s = time.perf_counter() - started
        # Always-on EOT so the step timed is the expensive kind (JPEG + resize + shift).
        eot = EotConfig(p_jpeg=1.0, p_scale=1.0, p_shift=1.0)
        for _ in range(2):  # the first step pays one-off costs (allocations, kernels)
            started = time.perf_counter()
            x = crop.clone().requires_grad_(True)
            view = apply_transform(x, sample_transform(eot, gen)) if use_eot else x
            (grad,) = torch.autograd.grad(layer2_loss(view, [face], encoders, targets), x)
            float(grad.abs().sum())
            layer2_s = time.perf_counter() - started
    detect_s = 0.0
    if detector is not None:
        image = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
        detector.detect(image)  # warm-up
        started = time.perf_counter()
        detector.detect(image)
        detect_s = (time.perf_counter() - started) / (512 * 512 / 1e6)
    return Calibration(layer2_s, embed_s, detect_s, tuple(e.name for e in encoders))


def layer1_steps(settings: ProtectionSettings) -> tuple[int, int]:
    """(PGD steps, LoRA steps) of layer 1 on one album, the prior counted as not cached."""
    # Only the old dual objective refreshes the static surrogate during the run.
    refreshes = len([k for k in range(1, settings.layer1_rounds)
                     if k % settings.prior_refresh_every == 0]) \
        if settings.layer1_objective == "dual" else 0
    lora = settings.layer1_total_lora + refreshes * settings.layer1_lora_steps \
        + settings.prior_steps
    return settings.layer1_total_pgd, lora


def estimate_job(n_photos: int, settings: ProtectionSettings, megapixels: float,
                 calibration: Calibration, *, layer1_available: bool,
                 pgd_step_s: float | None, device_kind: str,
                 faces: Sequence[int] | None = None) -> JobEstimate:
    """Wall-clock estimate of protecting ``n_photos`` photos of ``megapixels`` each in one album.

    ``faces``: the faces detected in each photo (``len(faces) == n_photos``). The zero-shot
    shield and the polish work on every face, so their cost is per face; a photo without a face
    costs its detections and scoring only. None: one face per photo is assumed (no detection
    has run yet). ``pgd_step_s``: a measured layer-1 PGD step for one photo on this device, or
    None (then the CPU table, or NaN on a GPU)."""
    n = max(0, int(n_photos))
    counts = [max(0, int(f)) for f in faces] if faces is not None else [1] * n
    if len(counts) != n:
        raise ValueError(f"faces has {len(counts)} entries for {n} photos")
    s = settings
    run_l1 = s.layers.finetune and layer1_available
    run_l2 = s.layers.zeroshot and bool(calibration.encoders)
    note = []
    layer1 = 0.0
    step_l1 = pgd_step_s
    if run_l1:
        if step_l1 is None and device_kind == "cpu":
            step_l1 = CPU_SECONDS_PER_PGD_STEP_512 * LAYER1_VIEWS_PER_PGD_STEP
            note.append("layer 1 from the CPU table for full SD 1.5 at 512 px")
        elif step_l1 is None:
            note.append("layer 1: unknown until the first step")
        else:
            note.append("layer 1 from a measured step")
        pgd_steps, lora_steps = layer1_steps(s)
        layer1 = (pgd_steps + lora_steps * LORA_PER_PGD / LAYER1_VIEWS_PER_PGD_STEP) \
            * step_l1 * n if step_l1 is not None else math.nan
    # Every photo: its detections (the runner's and the scorer's) whether or not a face is found.
    per_photo = calibration.detect_s_per_mp * (
        _FULL_DETECTIONS * megapixels + _SHARED_DETECTIONS * min(megapixels, _SHARED_MP))
    # Every face: scoring embeds, the zero-shot steps and the polish.
    per_face = _EMBEDS_PER_PHOTO * calibration.embed_s
    if run_l2:
        per_face += s.layer2_steps * calibration.layer2_step_s
        note.append(f"layer 2 measured with {', '.join(calibration.encoders)}")
        if run_l1 and s.polish_steps:
            per_face += s.polish_steps * calibration.layer2_step_s
            # The polish's Stable Diffusion half is per photo, not per face.
            per_photo += s.polish_steps * (step_l1 / LAYER1_VIEWS_PER_PGD_STEP
                                           if step_l1 is not None else math.nan)
    if faces is not None:
        note.append(f"{sum(counts)} faces detected in {n} photos")
    total_faces = sum(counts)
    total = layer1 + per_photo * n + per_face * total_faces
    mean = (per_photo * n + per_face * total_faces) / n if n else per_photo + per_face
    return JobEstimate(layer1, mean, total, "; ".join(note))


def estimate_layer1_seconds(settings: ProtectionSettings, n_photos: int, device_kind: str,
                            working_size: int = 512) -> float | None:
    """Layer-1 wall time from the measured CPU costs (scaled by pixel count of the working size;
    per-step cost grows with the album through micro-batches). None where no measurement exists
    for the device (the caller then says the time is unknown)."""
    if device_kind != "cpu" or not settings.layers.finetune:
        return None if settings.layers.finetune else 0.0
    scale = (working_size / 512) ** 2 * max(1, n_photos)
    pgd = settings.layer1_total_pgd * CPU_SECONDS_PER_PGD_STEP_512 * LAYER1_VIEWS_PER_PGD_STEP
    lora = (settings.layer1_total_lora + settings.prior_steps) * CPU_SECONDS_PER_LORA_STEP_512
    return (pgd + lora) * scale

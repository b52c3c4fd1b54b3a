"""Protection strength: the presets of METHOD.md and the explicit settings they map onto.

Budgets are in 1/255 steps of 8-bit pixel values ("eps 8" means ||delta||_inf <= 8/255).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import Enum


class Layers(str, Enum):
    """Which shields run."""

    BOTH = "both"
    FINETUNE = "finetune"  # layer 1: against DreamBooth / LoRA fine-tuning
    ZEROSHOT = "zeroshot"  # layer 2: against identity encoders of zero-shot tools

    @property
    def finetune(self) -> bool:
        return self in (Layers.BOTH, Layers.FINETUNE)

    @property
    def zeroshot(self) -> bool:
        return self in (Layers.BOTH, Layers.ZEROSHOT)


# Layer 1's objectives: the paper's attention-map loss (DSUR) or the dual denoising loss an
# earlier reading of the paper used (both surrogates' denoising loss maximised), for comparison.
LAYER1_OBJECTIVES = ("attention", "dual")
# The paper's fine-tuning budget and PGD step in 1/255 units (7/255 and 5e-3 in [0, 1] pixels).
PAPER_EPS_FT = 7.0
PAPER_STEP_FT = 0.005 * 255
# Medium's zero-shot budget on the faces (the paper's 11/255, held under its visibility target).
MEDIUM_EPS = 11.0


@dataclass(frozen=True)
class ProtectionSettings:
    """Everything that decides what the shields do to a photo.

    Budgets, L-inf in 1/255 units, one per layer (METHOD.md "Composition and strength"):
    ``eps`` is the zero-shot shield's budget on the faces, added ON TOP of the fine-tuning
    shield's ``finetune_eps`` (``eps_ft``; None: derived from ``eps``, 7/11 of it, Medium's
    ratio), which covers
    the whole photo. A face may so end ``finetune_eps + eps`` from the clean photo, the rest of
    the photo at most ``finetune_eps``.

    Layer 1 (the paper's Algorithm 1) runs ``epochs`` (``layer1_rounds``) epochs of: ``iter1``
    (``layer1_pgd_steps``) PGD steps on the ``layer1_objective`` (the attention-map loss
    between the static and the dynamic surrogate), ``iter2`` (``layer1_denoise_steps``) PGD
    steps on the dynamic surrogate's denoising loss, ``iter3`` (``layer1_lora_steps``)
    fine-tuning steps of the dynamic surrogate on the protected photos (none after the last
    epoch: they could no longer change the photos). ``prior_steps`` train the static surrogate
    on the clean photos once; with the ``"dual"`` objective it is refreshed every
    ``prior_refresh_every`` epochs. ``alpha1``/``alpha2`` are PGD step sizes in 1/255 units
    (None: the paper's 5e-3 scaled by ``finetune_eps / 7``, and eps/20). ``face_ssim`` is how
    much of each face's look the zero-shot shield may change, as the luma SSIM of the face
    box widened 1.5x (:mod:`core.visibility`; None: :func:`face_ssim_for_eps` of ``eps``), for
    the SSIM-held shield (``ShieldOptions.visibility == "ssim"``); ``face_jnd`` is the promise
    of the default shield: the most visible face's predicted visibility at 100% in JND
    (:mod:`engine.visible_diff`; None: :func:`face_jnd_for_eps` of ``eps``), so that a
    stronger budget may also be more visible.
    """

    preset: str = "medium"
    eps: float = MEDIUM_EPS
    layers: Layers = Layers.BOTH
    layer1_rounds: int = 10
    layer1_pgd_steps: int = 5
    layer1_lora_steps: int = 5
    prior_steps: int = 200
    prior_refresh_every: int = 5
    layer2_steps: int = 50
    polish_steps: int = 10
    alpha1: float | None = None
    alpha2: float | None = None
    eot: bool = True
    seed: int = 0
    face_ssim: float | None = None
    face_jnd: float | None = None
    eps_ft: float | None = None
    layer1_denoise_steps: int = 5
    layer1_objective: str = "attention"

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 32:
            raise ValueError(f"eps must be in (0, 32] (units of 1/255), got {self.eps}")
        if self.eps_ft is not None and not 0 < self.eps_ft <= 32:
            raise ValueError(f"eps_ft must be in (0, 32] (units of 1/255), got {self.eps_ft}")
        for name in ("layer1_rounds", "layer1_pgd_steps", "layer1_lora_steps", "prior_steps",
                     "layer2_steps", "polish_steps", "layer1_denoise_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.prior_refresh_every < 1:
            raise ValueError("prior_refresh_every must be >= 1")
        if self.face_jnd is not None and not 0.1 <= self.face_jnd <= 10.0:
            raise ValueError(f"face_jnd must be in [0.1, 10] (JND), got {self.face_jnd}")
        if self.face_ssim is not None and not 0.5 <= self.face_ssim < 1.0:
            raise ValueError(f"face_ssim must be in [0.5, 1), got {self.face_ssim}")
        if self.layer1_objective not in LAYER1_OBJECTIVES:
            raise ValueError(f"layer1_objective must be one of {LAYER1_OBJECTIVES}, got "
                             f"{self.layer1_objective!r}")

    @property
    def finetune_eps(self) -> float:
        """Layer 1's budget on the whole photo, 1/255 units (see ``eps_ft``)."""
        return self.eps_ft if self.eps_ft is not None else self.eps * PAPER_EPS_FT / MEDIUM_EPS

    @property
    def epochs(self) -> int:
        """ADFT epochs of layer 1 (``layer1_rounds``)."""
        return self.layer1_rounds

    @property
    def iter1(self) -> int:
        """PGD steps on the layer-1 objective per epoch (``layer1_pgd_steps``)."""
        return self.layer1_pgd_steps

    @property
    def iter2(self) -> int:
        """PGD steps on the dynamic surrogate's denoising loss per epoch."""
        return self.layer1_denoise_steps

    @property
    def iter3(self) -> int:
        """Fine-tuning steps of the dynamic surrogate per epoch (``layer1_lora_steps``)."""
        return self.layer1_lora_steps

    @property
    def face_ssim_target(self) -> float:
        """The face SSIM the zero-shot shield steers every face to (see ``face_ssim``)."""
        return self.face_ssim if self.face_ssim is not None else face_ssim_for_eps(self.eps)

    @property
    def face_jnd_target(self) -> float:
        """The visibility (JND at 100%) the zero-shot shield keeps every face at or under."""
        return self.face_jnd if self.face_jnd is not None else face_jnd_for_eps(self.eps)

    @property
    def step1(self) -> float:
        """Layer-1 PGD step in 1/255 units."""
        return self.alpha1 if self.alpha1 is not None else \
            PAPER_STEP_FT * self.finetune_eps / PAPER_EPS_FT

    @property
    def step2(self) -> float:
        """Layer-2 PGD step in 1/255 units."""
        return self.alpha2 if self.alpha2 is not None else self.eps / 20

    @property
    def layer1_total_pgd(self) -> int:
        """PGD steps of layer 1 on one album (both PGD stages of every epoch)."""
        return self.layer1_rounds * (self.layer1_pgd_steps + self.layer1_denoise_steps)

    @property
    def layer1_total_lora(self) -> int:
        """Fine-tuning steps of the dynamic surrogate on one album (none after the last
        epoch)."""
        return max(0, self.layer1_rounds - 1) * self.layer1_lora_steps

    def with_overrides(self, **changes: object) -> ProtectionSettings:
        """Copy with explicit overrides (``None`` values are ignored). Any change of strength
        makes the preset ``custom``; choosing the shields (``layers``) does not: a Medium run of
        the zero-shot shield alone is still Medium."""
        clean = {k: v for k, v in changes.items() if v is not None}
        if set(clean) - {"layers"} and "preset" not in clean:
            clean["preset"] = "custom"
        return replace(self, **clean)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["layers"] = self.layers.value
        return d


# Face SSIM each budget may cost under the SSIM-held shield (luma SSIM of the face box widened
# 1.5x), piecewise linear in eps through the previous release's presets (4, 8 and 12/255), so
# that they keep their order in both protection and visibility.
FACE_SSIM_POINTS = ((4.0, 0.985), (8.0, 0.972), (12.0, 0.958))


# The zero-shot shield's visibility promise per budget: the most visible face's predicted
# visibility at 100% on a normal display, in JND (engine.visible_diff; under 1: not visible),
# piecewise linear in eps through the presets' points. Low and Medium are not visible (Medium
# 0.05 under the line, for the figure of the saved photo measured in a different crop; Low with
# a wider margin); High is the strong option: visible, and still less than the SSIM-held
# release's Medium (8-11 JND on large portraits). Large faces need more visible change than
# small ones for the same protection (the encoders see them shrunk to 112 px).
FACE_JND_POINTS = ((8.0, 0.7), (11.0, 0.95), (16.0, 6.0))


def face_jnd_for_eps(eps: float) -> float:
    """The visibility target of a budget of ``eps``/255 (:data:`FACE_JND_POINTS`, extended
    with the end slopes and kept in [0.5, 10])."""
    return _through(FACE_JND_POINTS, eps, 0.5, 10.0)


def face_ssim_for_eps(eps: float) -> float:
    """The face SSIM target of a budget of ``eps``/255 (:data:`FACE_SSIM_POINTS`, extended
    with the end slopes and kept in [0.9, 0.995])."""
    return _through(FACE_SSIM_POINTS, eps, 0.9, 0.995)


def _through(points: tuple[tuple[float, float], ...], eps: float, low: float,
             high: float) -> float:
    """The piecewise-linear line through three (eps, value) ``points`` at ``eps``, extended
    with the end slopes and kept in [``low``, ``high``]."""
    i = 0 if eps <= points[1][0] else 1
    (e0, v0), (e1, v1) = points[i], points[i + 1]
    return min(high, max(low, v0 + (v1 - v0) * (eps - e0) / (e1 - e0)))


# METHOD.md: Medium's fine-tuning budget is the paper's 7/255; Low and High scale it (see
# benchmarks/results/fine_tune_ablation_cpu.md). Each layer-1 epoch: iter1 attention-loss PGD
# steps, iter2 denoising-loss PGD steps, iter3 fine-tuning steps of the dynamic surrogate.
PRESETS: dict[str, ProtectionSettings] = {
    "low": ProtectionSettings(preset="low", eps=8.0, eps_ft=4.0, layer1_rounds=4,
                              layer1_pgd_steps=5, layer1_denoise_steps=5, layer1_lora_steps=5,
                              prior_steps=100, layer2_steps=25, polish_steps=5),
    "medium": ProtectionSettings(preset="medium", eps=MEDIUM_EPS, eps_ft=PAPER_EPS_FT,
                                 layer1_rounds=10, layer1_pgd_steps=5, layer1_denoise_steps=5,
                                 layer1_lora_steps=5, prior_steps=200, layer2_steps=50,
                                 polish_steps=10),
    "high": ProtectionSettings(preset="high", eps=16.0, eps_ft=10.0, layer1_rounds=20,
                               layer1_pgd_steps=5, layer1_denoise_steps=5, layer1_lora_steps=5,
                               prior_steps=400, layer2_steps=100, polish_steps=20),
}


def preset(name: str) -> ProtectionSettings:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

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


@dataclass(frozen=True)
class ProtectionSettings:
    """Everything that decides what the shields do to a photo.

    ``eps`` is the L-inf budget in 1/255 units shared by both layers. ``layer1_rounds`` x
    ``layer1_pgd_steps`` PGD steps alternate with ``layer1_lora_steps`` LoRA steps of the dynamic
    surrogate per round; ``prior_steps`` pre-fine-tune the prior surrogate on the clean photos.
    ``alpha1``/``alpha2`` are PGD step sizes in 1/255 units (None: eps/10 and eps/20).
    """

    preset: str = "medium"
    eps: float = 8.0
    layers: Layers = Layers.BOTH
    layer1_rounds: int = 10
    layer1_pgd_steps: int = 10
    layer1_lora_steps: int = 5
    prior_steps: int = 200
    prior_refresh_every: int = 5
    layer2_steps: int = 100
    polish_steps: int = 10
    alpha1: float | None = None
    alpha2: float | None = None
    eot: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 32:
            raise ValueError(f"eps must be in (0, 32] (units of 1/255), got {self.eps}")
        for name in ("layer1_rounds", "layer1_pgd_steps", "layer1_lora_steps", "prior_steps",
                     "layer2_steps", "polish_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.prior_refresh_every < 1:
            raise ValueError("prior_refresh_every must be >= 1")

    @property
    def step1(self) -> float:
        """Layer-1 PGD step in 1/255 units."""
        return self.alpha1 if self.alpha1 is not None else self.eps / 10

    @property
    def step2(self) -> float:
        """Layer-2 PGD step in 1/255 units."""
        return self.alpha2 if self.alpha2 is not None else self.eps / 20

    @property
    def layer1_total_pgd(self) -> int:
        return self.layer1_rounds * self.layer1_pgd_steps

    def with_overrides(self, **changes: object) -> ProtectionSettings:
        """Copy with explicit overrides (``None`` values are ignored)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        if clean and "preset" not in clean:
            clean["preset"] = "custom"
        return replace(self, **clean)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["layers"] = self.layers.value
        return d


# METHOD.md table: eps, layer-1 PGD steps (K x p), prior LoRA steps, layer-2 steps.
PRESETS: dict[str, ProtectionSettings] = {
    "low": ProtectionSettings(preset="low", eps=4.0, layer1_rounds=4, layer1_pgd_steps=10,
                              prior_steps=100, layer2_steps=50, polish_steps=5),
    "medium": ProtectionSettings(preset="medium", eps=8.0, layer1_rounds=10, layer1_pgd_steps=10,
                                 prior_steps=200, layer2_steps=100, polish_steps=10),
    "high": ProtectionSettings(preset="high", eps=12.0, layer1_rounds=20, layer1_pgd_steps=10,
                               prior_steps=400, layer2_steps=200, polish_steps=20),
}


def preset(name: str) -> ProtectionSettings:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

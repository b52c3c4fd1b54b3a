"""Strength panel: preset, strength (eps) and thoroughness (steps), the two shields, an estimate."""

from __future__ import annotations

import math
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.presets import PRESETS, Layers, ProtectionSettings

EPS_MIN, EPS_MAX = 2, 16
# Thoroughness multiplies every step count of the chosen preset; 1x is the preset itself.
THOROUGHNESS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
_NAMES = {"low": "Low", "medium": "Medium", "high": "High"}


def scale_steps(base: ProtectionSettings, factor: float) -> ProtectionSettings:
    """``base`` with all optimisation step counts scaled by ``factor`` (at least 1 where the
    base had any), so thoroughness keeps the preset's balance between the stages."""
    def s(n: int) -> int:
        return 0 if n == 0 else max(1, round(n * factor))

    return replace(base, layer1_rounds=s(base.layer1_rounds), prior_steps=s(base.prior_steps),
                   layer2_steps=s(base.layer2_steps), polish_steps=s(base.polish_steps))


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class StrengthPanel(QGroupBox):
    """Emits ``changed`` whenever the settings it describes change."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Protection", parent)
        self._finetune_available = True
        self._base = PRESETS["medium"]
        self._updating = False

        self.preset = QComboBox()
        self.preset.setAccessibleName("Preset")
        for key, name in _NAMES.items():
            self.preset.addItem(name, key)
        self.preset.addItem("Custom", "custom")
        self.preset.setCurrentIndex(1)

        self.eps = QSlider(Qt.Orientation.Horizontal)
        self.eps.setAccessibleName("Strength")
        self.eps.setRange(EPS_MIN, EPS_MAX)
        self.eps.setPageStep(2)
        self.eps_label = QLabel()
        self.eps.setToolTip("Largest change to any pixel, in 1/255 steps. "
                            "Stronger protects better but is more visible.")

        self.steps = QSlider(Qt.Orientation.Horizontal)
        self.steps.setAccessibleName("Thoroughness")
        self.steps.setRange(0, len(THOROUGHNESS) - 1)
        self.steps.setPageStep(1)
        self.steps_label = QLabel()
        self.steps.setToolTip("More optimisation steps: stronger protection, longer run.")

        self.finetune = QCheckBox("Fine-tuning shield")
        self.finetune.setAccessibleName("Fine-tuning shield")
        self.finetune.setChecked(True)
        finetune_help = QLabel("Spoils DreamBooth/LoRA training on your photos. Needs a GPU to "
                               "be quick.")
        self.finetune_missing = QLabel("Stable Diffusion is not on this computer yet, so this "
                                       "shield will be skipped. Get it under Models…")
        self.finetune_missing.setAccessibleName("Fine-tuning shield unavailable")
        self.finetune_missing.setWordWrap(True)
        self.finetune_missing.setStyleSheet("color: #b45309; margin-left: 22px;")
        self.finetune_missing.hide()
        self.zeroshot = QCheckBox("Zero-shot shield")
        self.zeroshot.setAccessibleName("Zero-shot shield")
        self.zeroshot.setChecked(True)
        zeroshot_help = QLabel("Hides your face from the identity encoders that one-photo tools "
                               "(IP-Adapter, InstantID, PuLID) copy.")
        for label in (finetune_help, zeroshot_help):
            label.setWordWrap(True)
            label.setStyleSheet("color: palette(mid); margin-left: 22px;")

        self.warning = QLabel("Turn on at least one shield.")
        self.warning.setStyleSheet("color: #b91c1c;")
        self.warning.hide()
        self.estimate = QLabel("Estimated time: add photos to see an estimate")
        self.estimate.setAccessibleName("Time estimate")
        self.estimate.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Preset", self.preset)
        eps_row = QHBoxLayout()
        eps_row.addWidget(self.eps, 1)
        eps_row.addWidget(self.eps_label)
        form.addRow("Strength", eps_row)
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps, 1)
        steps_row.addWidget(self.steps_label)
        form.addRow("Thoroughness", steps_row)

        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addSpacing(6)
        box.addWidget(self.finetune)
        box.addWidget(finetune_help)
        box.addWidget(self.finetune_missing)
        box.addWidget(self.zeroshot)
        box.addWidget(zeroshot_help)
        box.addWidget(self.warning)
        box.addSpacing(6)
        box.addWidget(self.estimate)

        self.preset.currentIndexChanged.connect(self._on_preset)
        self.eps.valueChanged.connect(self._on_slider)
        self.steps.valueChanged.connect(self._on_slider)
        self.finetune.toggled.connect(self._on_slider)
        self.finetune.toggled.connect(self._sync_finetune_note)
        self.zeroshot.toggled.connect(self._on_slider)
        self._apply(self._base, THOROUGHNESS.index(1.0))

    # ------------------------------------------------------------------ state
    def _apply(self, base: ProtectionSettings, steps_index: int) -> None:
        self._updating = True
        self._base = base
        self.eps.setValue(int(round(min(max(base.eps, EPS_MIN), EPS_MAX))))
        self.steps.setValue(steps_index)
        self.finetune.setChecked(base.layers.finetune)
        self.zeroshot.setChecked(base.layers.zeroshot)
        idx = self.preset.findData(base.preset)
        self.preset.setCurrentIndex(idx if idx >= 0 else self.preset.findData("custom"))
        self._updating = False
        self._refresh()

    def set_preset(self, name: str) -> None:
        self._apply(PRESETS[name.lower()], THOROUGHNESS.index(1.0))

    def set_settings(self, settings: ProtectionSettings) -> None:
        """Show explicit settings (for example a saved default); thoroughness is 1x of them."""
        self._apply(settings, THOROUGHNESS.index(1.0))

    def set_finetune_available(self, available: bool) -> None:
        """Say up front when the fine-tuning shield cannot run (no Stable Diffusion model)."""
        self._finetune_available = available
        self._sync_finetune_note()

    def _sync_finetune_note(self) -> None:
        self.finetune_missing.setVisible(not self._finetune_available
                                         and self.finetune.isChecked())

    def set_layers(self, layers: Layers) -> None:
        self.finetune.setChecked(layers.finetune)
        self.zeroshot.setChecked(layers.zeroshot)

    def layers(self) -> Layers | None:
        ft, zs = self.finetune.isChecked(), self.zeroshot.isChecked()
        if ft and zs:
            return Layers.BOTH
        if ft:
            return Layers.FINETUNE
        if zs:
            return Layers.ZEROSHOT
        return None

    def settings(self) -> ProtectionSettings | None:
        """The settings to protect with, or None when both shields are off."""
        layers = self.layers()
        if layers is None:
            return None
        factor = THOROUGHNESS[self.steps.value()]
        out = replace(scale_steps(self._base, factor), eps=float(self.eps.value()), layers=layers)
        if factor != 1.0 or out.eps != self._base.eps:
            out = replace(out, preset="custom")
        return out

    def _on_preset(self, _index: int) -> None:
        if self._updating:
            return
        key = self.preset.currentData()
        if key in PRESETS:
            layers = self.layers() or Layers.BOTH
            self._apply(replace(PRESETS[key], layers=layers), THOROUGHNESS.index(1.0))
            self.changed.emit()

    def _on_slider(self, *_args: object) -> None:
        if self._updating:
            return
        self._refresh()
        self.changed.emit()

    def _refresh(self) -> None:
        self.eps_label.setText(f"{self.eps.value()}/255")
        factor = THOROUGHNESS[self.steps.value()]
        current = self.settings()
        steps = current.layer2_steps if current else scale_steps(self._base, factor).layer2_steps
        self.steps_label.setText(f"{factor:g}x ({steps} steps)")
        self.warning.setVisible(current is None)
        if current is not None and current.preset == "custom":
            self._updating, was = True, self._updating
            self.preset.setCurrentIndex(self.preset.findData("custom"))
            self._updating = was
        elif current is not None:
            self._updating, was = True, self._updating
            self.preset.setCurrentIndex(self.preset.findData(self._base.preset))
            self._updating = was

    def set_estimate(self, seconds: float | None, device: str, n_photos: int,
                     listed: bool = False) -> None:
        """``listed``: photos are listed but none is left to protect."""
        if n_photos == 0:
            self.estimate.setText("Estimated time: nothing left to protect" if listed else
                                  "Estimated time: add photos to see an estimate")
        elif seconds is None:
            self.estimate.setText("Estimated time: calculating…")
        elif not math.isfinite(seconds):
            self.estimate.setText(f"Estimated time: not known yet on {device} "
                                  "(no speed measurement for this device)")
        else:
            plural = "photo" if n_photos == 1 else "photos"
            self.estimate.setText(f"Estimated time: about {format_duration(seconds)} "
                                  f"for {n_photos} {plural} on {device}")

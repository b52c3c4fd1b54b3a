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
    QPushButton,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.presets import PRESETS, Layers, ProtectionSettings, face_jnd_for_eps
from dladiff_app.core.visibility_words import seen_level

EPS_MIN, EPS_MAX = 2, 20
# Thoroughness is measured against Medium's step counts, so a preset's own steps land on a mark
# of the slider (Low is half of Medium, High twice): the slider moves with the preset.
THOROUGHNESS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
THOROUGHNESS_WORDS = ("Quick look", "Quick", "Standard", "Careful", "Thorough", "Very thorough",
                      "Exhaustive")
_NAMES = {"low": "Low", "medium": "Medium", "high": "High"}


def scale_steps(base: ProtectionSettings, factor: float) -> ProtectionSettings:
    """``base`` with all optimisation step counts scaled by ``factor`` (at least 1 where the
    base had any), so thoroughness keeps the preset's balance between the stages."""
    def s(n: int) -> int:
        return 0 if n == 0 else max(1, round(n * factor))

    return replace(base, layer1_rounds=s(base.layer1_rounds), prior_steps=s(base.prior_steps),
                   layer2_steps=s(base.layer2_steps), polish_steps=s(base.polish_steps))


def thoroughness_of(settings: ProtectionSettings) -> float:
    """How many times Medium's zero-shot steps ``settings`` takes (High: 2.0)."""
    medium = PRESETS["medium"].layer2_steps
    return settings.layer2_steps / medium if medium else 1.0


def nearest_mark(factor: float) -> int:
    return min(range(len(THOROUGHNESS)), key=lambda i: abs(math.log(THOROUGHNESS[i])
                                                            - math.log(max(factor, 1e-3))))


def strength_words(eps: float) -> str:
    """The strength as people say it, its look first: "Medium: not visible at 100% (a face
    pixel changes by at most 4%)"; the look is the zero-shot shield's promise for that budget
    (``core.presets.face_jnd_for_eps``, in the viewer's words)."""
    level = ("Low" if eps <= 9 else "Medium" if eps <= 13 else "High" if eps <= 17
             else "Very high")
    pct = 100 * eps / 255
    figure = f"{pct:.0f}%" if pct >= 1.5 else f"{pct:.1f}%"
    look = seen_level(face_jnd_for_eps(eps)).split(" (")[0]
    return f"{level}: {look} (a face pixel changes by at most {figure})"


def technical_details(settings: ProtectionSettings) -> str:
    """The figures behind the words, for people who want them (one click away)."""
    s = settings
    lines = []
    if s.layers.finetune:
        lines.append(f"Fine-tuning shield budget: {s.finetune_eps:g}/255 per pixel (L∞) on the "
                     f"whole photo, step {s.step1:.2g}/255")
    if s.layers.zeroshot:
        lines.append(f"Zero-shot shield budget: {s.eps:g}/255 per pixel (L∞) on the faces"
                     + (" on top of the fine-tuning one" if s.layers.finetune else "")
                     + f", step {s.step2:.2g}/255")
    if s.layers.finetune:
        lines.append(f"Fine-tuning shield: {s.layer1_rounds} epochs × ({s.iter1} attention-map "
                     f"+ {s.iter2} denoising PGD steps, {s.iter3} fine-tuning steps), "
                     f"{s.prior_steps} static-surrogate LoRA steps")
    if s.layers.zeroshot:
        lines.append(f"Zero-shot shield: {s.layer2_steps} steps per face"
                     + (" with JPEG/resize robustness (EOT)" if s.eot else "")
                     + f"; every face held at or under {s.face_jnd_target:.2g} JND at 100% "
                       "(predicted visibility; under 1 is not visible)")
    if s.layers.finetune and s.layers.zeroshot and s.polish_steps:
        lines.append(f"Joint polish: {s.polish_steps} steps")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# Why the fine-tuning shield's box cannot be ticked, in words (no commands in the window).
FINETUNE_UNAVAILABLE = ("Not available: this shield works on a Stable Diffusion model, which is "
                        "not on this computer yet. Download it in the Models window (menu "
                        "Models…) to switch this shield on.")


class StrengthPanel(QGroupBox):
    """Emits ``changed`` whenever the settings it describes change."""

    changed = Signal()
    preview_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Protection", parent)
        self._finetune_available = True
        self._base = PRESETS["medium"]
        self._base_index = THOROUGHNESS.index(1.0)
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
        self.eps_label.setAccessibleName("Strength in words")
        self.eps_label.setWordWrap(True)
        self.eps.setToolTip("How much a face may change. Low and Medium are held where the eye "
                            "does not see them at 100%; High protects better and can be seen.")

        self.steps = QSlider(Qt.Orientation.Horizontal)
        self.steps.setAccessibleName("Thoroughness")
        self.steps.setRange(0, len(THOROUGHNESS) - 1)
        self.steps.setPageStep(1)
        self.steps_label = QLabel()
        self.steps_label.setAccessibleName("Thoroughness in words")
        self.steps_label.setMinimumWidth(90)
        self.steps.setToolTip("How long the protection keeps improving: more thorough protects "
                              "better and takes longer.")

        self.details_button = QToolButton()
        self.details_button.setText("Technical details")
        self.details_button.setAccessibleName("Technical details")
        self.details_button.setCheckable(True)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setAutoRaise(True)
        self.details = QLabel()
        self.details.setAccessibleName("Technical figures")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setStyleSheet("color: palette(mid); margin-left: 14px;")
        self.details.hide()
        self.details_button.toggled.connect(self._on_details)

        self.finetune = QCheckBox("Fine-tuning shield")
        self.finetune.setAccessibleName("Fine-tuning shield")
        self.finetune.setChecked(True)
        finetune_help = QLabel("Spoils DreamBooth/LoRA training on your photos. Needs a GPU to "
                               "be quick.")
        self.finetune_missing = QLabel(FINETUNE_UNAVAILABLE)
        self.finetune_missing.setAccessibleName("Fine-tuning shield unavailable")
        self.finetune_missing.setWordWrap(True)
        self.finetune_missing.setStyleSheet("color: #b45309; margin-left: 22px;")
        self.finetune_missing.hide()
        self.zeroshot = QCheckBox("Zero-shot shield")
        self.zeroshot.setAccessibleName("Zero-shot shield")
        self.zeroshot.setChecked(True)
        # "Hides" would promise more than is measured: models the shield never saw still
        # recognise some faces (README, Known limits).
        zeroshot_help = QLabel("Changes your face so that face-recognition models, like the "
                               "ones one-photo tools (IP-Adapter, InstantID, PuLID) copy faces "
                               "with, see someone else.")
        for label in (finetune_help, zeroshot_help):
            label.setWordWrap(True)
            label.setStyleSheet("color: palette(mid); margin-left: 22px;")

        self.warning = QLabel("Turn on at least one shield.")
        self.warning.setStyleSheet("color: #b91c1c;")
        self.warning.hide()
        self.preview_button = QPushButton("Preview on a face…")
        self.preview_button.setAccessibleName("Preview")
        self.preview_button.setToolTip("See the largest face of the selected photo protected "
                                       "at this strength (a few steps, seconds) before a long "
                                       "run. Nothing is saved.")
        self.preview_button.clicked.connect(self.preview_requested)
        self.estimate = QLabel("Estimated time: add photos to see an estimate")
        self.estimate.setAccessibleName("Time estimate")
        self.estimate.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Preset", self.preset)
        form.addRow("Strength", self.eps)
        form.addRow("", self.eps_label)
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps, 1)
        steps_row.addWidget(self.steps_label)
        form.addRow("Thoroughness", steps_row)

        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addWidget(self.details_button)
        box.addWidget(self.details)
        box.addSpacing(6)
        box.addWidget(self.finetune)
        box.addWidget(finetune_help)
        box.addWidget(self.finetune_missing)
        box.addWidget(self.zeroshot)
        box.addWidget(zeroshot_help)
        box.addWidget(self.warning)
        box.addSpacing(6)
        box.addWidget(self.preview_button, 0, Qt.AlignmentFlag.AlignLeft)
        box.addWidget(self.estimate)

        self.preset.currentIndexChanged.connect(self._on_preset)
        self.eps.valueChanged.connect(self._on_slider)
        self.steps.valueChanged.connect(self._on_slider)
        self.finetune.toggled.connect(self._on_slider)
        self.finetune.toggled.connect(self._sync_finetune_note)
        self.zeroshot.toggled.connect(self._on_slider)
        self._apply(self._base)

    # ------------------------------------------------------------------ state
    def _apply(self, base: ProtectionSettings) -> None:
        self._updating = True
        self._base = base
        self._base_index = nearest_mark(thoroughness_of(base))
        self.eps.setValue(int(round(min(max(base.eps, EPS_MIN), EPS_MAX))))
        self.steps.setValue(self._base_index)  # High's doubled steps move the slider too
        self.finetune.setChecked(base.layers.finetune and self._finetune_available)
        self.zeroshot.setChecked(base.layers.zeroshot)
        idx = self.preset.findData(base.preset)
        self.preset.setCurrentIndex(idx if idx >= 0 else self.preset.findData("custom"))
        self._updating = False
        self._refresh()

    def set_preset(self, name: str) -> None:
        self._apply(replace(PRESETS[name.lower()], layers=self.layers() or Layers.BOTH))

    def set_settings(self, settings: ProtectionSettings) -> None:
        """Show explicit settings (for example a saved default) exactly as given."""
        self._apply(settings)

    def set_finetune_available(self, available: bool) -> None:
        """Without a Stable Diffusion model the fine-tuning shield cannot run: its box is
        unticked and disabled, and the reason is shown under it (and as its tooltip)."""
        self._finetune_available = available
        self.finetune.setEnabled(available)
        self.finetune.setToolTip("" if available else FINETUNE_UNAVAILABLE)
        if not available:
            self.finetune.setChecked(False)
        self._sync_finetune_note()

    def _sync_finetune_note(self) -> None:
        self.finetune_missing.setVisible(not self._finetune_available)

    def set_layers(self, layers: Layers) -> None:
        self.finetune.setChecked(layers.finetune and self._finetune_available)
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
        index = self.steps.value()
        out = replace(self._base, eps=float(self.eps.value()), layers=layers)
        if index != self._base_index:
            out = scale_steps(out, THOROUGHNESS[index] / THOROUGHNESS[self._base_index])
        if index != self._base_index or out.eps != self._base.eps:
            out = replace(out, preset="custom")
        return out

    def _on_preset(self, _index: int) -> None:
        if self._updating:
            return
        key = self.preset.currentData()
        if key in PRESETS:
            self.set_preset(key)
            self.changed.emit()

    def _on_slider(self, *_args: object) -> None:
        if self._updating:
            return
        self._refresh()
        self.changed.emit()

    def _on_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown
                                         else Qt.ArrowType.RightArrow)

    def _refresh(self) -> None:
        self.eps_label.setText(strength_words(self.eps.value()))
        self.steps_label.setText(THOROUGHNESS_WORDS[self.steps.value()])
        current = self.settings()
        self.details.setText(technical_details(current) if current is not None
                             else "No shield is on.")
        self.warning.setVisible(current is None)
        if current is not None:
            key = "custom" if current.preset == "custom" else self._base.preset
            self._updating, was = True, self._updating
            self.preset.setCurrentIndex(max(0, self.preset.findData(key)))
            self._updating = was

    def set_estimate(self, seconds: float | None, device: str, n_photos: int,
                     listed: bool = False, faces: int | None = None) -> None:
        """``listed``: photos are listed but none is left to protect. ``faces``: the faces
        detected in them (None while they are being counted)."""
        plural = "photo" if n_photos == 1 else "photos"
        what = f"{n_photos} {plural}"
        if faces is not None:
            what += f" ({faces} face{'' if faces == 1 else 's'})"
        if n_photos == 0:
            self.estimate.setText("Estimated time: nothing left to protect" if listed else
                                  "Estimated time: add photos to see an estimate")
        elif seconds is None:
            self.estimate.setText("Estimated time: counting faces…" if faces is None
                                  else "Estimated time: calculating…")
        elif not math.isfinite(seconds):
            self.estimate.setText(f"Estimated time: not known yet on {device} "
                                  "(no speed measurement for this device)")
        else:
            self.estimate.setText(f"Estimated time: about {format_duration(seconds)} "
                                  f"for {what} on {device}")

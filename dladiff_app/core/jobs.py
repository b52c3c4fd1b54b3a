"""What the user asked for: a protection job and its export options (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from dladiff_app.core.presets import ProtectionSettings


class OutputFormat(str, Enum):
    PNG = "png"    # default: lossless, keeps every bit of the perturbation
    JPEG = "jpeg"
    WEBP = "webp"


class AlbumMode(str, Enum):
    """How photos are grouped into albums (one person's photos, protected together)."""

    PER_FOLDER = "folder"  # default: one album per input folder
    SINGLE = "single"      # everything is one album
    PER_PHOTO = "photo"    # every photo on its own


@dataclass(frozen=True)
class ExportOptions:
    format: OutputFormat = OutputFormat.PNG
    quality: int = 95            # JPEG/WebP quality, 1-100
    keep_metadata: bool = False  # keep orientation-neutral, location-free EXIF
    write_report: bool = True    # manifest.json + report.html per album
    # Photos no shield could change (no face found) are not written by default: a file named
    # "-protected" that is not protected is worse than none. On request they are copied out as
    # "<name>-unprotected.<ext>" (same export rules: format, metadata).
    export_unprotected: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1-100, got {self.quality}")


@dataclass(frozen=True)
class ProtectJob:
    inputs: tuple[Path, ...]
    output_dir: Path
    settings: ProtectionSettings = field(default_factory=ProtectionSettings)
    export: ExportOptions = field(default_factory=ExportOptions)
    device: str = "auto"
    recursive: bool = False
    album_mode: AlbumMode = AlbumMode.PER_FOLDER
    resume: bool = False
    # Stable Diffusion folder or .safetensors checkpoint for the fine-tuning shield; None: the
    # model store's sd15 (a download or the local copy chosen in the settings). Journaled, so a
    # resumed job protects its remaining photos with the same model.
    pipeline: Path | None = None

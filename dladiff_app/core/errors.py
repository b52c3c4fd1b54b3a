"""Typed errors that carry a message a person can act on.

Every error the engine or the I/O layer raises for a user-facing reason is a ``DladiffError``;
``str(err)`` is the sentence shown in the GUI and printed by the CLI. Library code never shows
UI and never exits the process: it raises one of these.
"""

from __future__ import annotations

from pathlib import Path


class DladiffError(Exception):
    """Base class: ``str(self)`` is a complete sentence for the user."""


class Cancelled(DladiffError):
    """The user cancelled; raised at the next cooperative check."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)


class ImageError(DladiffError):
    """A photo could not be used. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


class ImageMissingError(ImageError):
    pass


class ImageUnreadableError(ImageError):
    """Unreadable, truncated or corrupt file."""


class NotAnImageError(ImageError):
    pass


class UnsupportedFormatError(ImageError):
    pass


class ImageTooSmallError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    """Decompression-bomb guard: the header announces more pixels than the configured limit."""


class OutputError(DladiffError):
    """An output could not be written (read-only folder, disk full, ...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Could not write {self.path}: {reason}")


class ModelMissingError(DladiffError):
    """A model is not on disk; the message names it, its size and how to fetch or point to it."""


class ModelIntegrityError(DladiffError):
    """A download or model file failed verification (hash mismatch, unsafe archive, ...)."""


class ModelDownloadError(DladiffError):
    """A download failed (network, server, disk); partial data is kept so a retry resumes."""


class DeviceError(DladiffError):
    """The requested device cannot be used (or ran out of memory in a way we cannot recover)."""


class NoFaceError(DladiffError):
    """No face was found in a photo where one is needed."""


class UnsupportedOps(ModelMissingError):
    """A model file uses operations our torch reader does not implement; names them and the
    file. A ``ModelMissingError`` because, to the user, the differentiable model is not
    available (the file itself may still run in its own runtime)."""

    kind = "model operation(s)"

    def __init__(self, path: Path | str, ops: list[str]) -> None:
        self.path = Path(path)
        self.ops = sorted(set(ops))
        super().__init__(
            f"{self.path.name}: cannot be converted to a differentiable torch model because it "
            f"uses unsupported {self.kind} {', '.join(self.ops)}; use another model file or "
            "report these names."
        )


class UnsupportedOnnxOp(UnsupportedOps):
    """An ONNX model uses operators our converter does not implement."""

    kind = "ONNX operator(s)"


class UnsupportedTfOp(UnsupportedOps):
    """A frozen TensorFlow graph uses ops (or tensor types) our reader does not implement."""

    kind = "TensorFlow op(s)"


class JobConflictError(DladiffError):
    """The output folder already holds another job (resume it or choose another folder)."""


class JobLockedError(JobConflictError):
    """Another live process is protecting into the same output folder right now."""


class NothingToProtectError(DladiffError):
    """The inputs hold no photo at all (an empty folder, only hidden files): nothing was started."""


class UnusableOutputError(DladiffError):
    """The output folder cannot hold a job (it is a file, or it is the photos' own folder):
    nothing was started."""

"""The engine services the window is given (composition root: ``dladiff_app.app``)."""

from __future__ import annotations

from dataclasses import dataclass

from dladiff_app.core.services import DeviceService, ModelService, ProtectService


@dataclass(frozen=True)
class Services:
    """Everything the GUI needs from the engine; tests pass fakes, ``app.py`` the real ones.

    Every method of these objects is called on the engine worker thread, never on the UI thread.
    """

    protect: ProtectService
    models: ModelService
    device: DeviceService

"""Start the app under Xvfb with sample photos, run a protection, save screenshots.

    python packaging/screenshots.py [--out DIR] [--real]

Starts its own Xvfb unless ``DISPLAY`` is set (needs ``apt-get install -y xvfb libxcb-icccm4
libxcb-keysyms1 libxcb-cursor0``). Sample photos: ``skimage.data.astronaut`` and insightface's
``data/images/t1.jpg`` (when installed). The default engine is the fake service of the GUI tests
(real files, configured scores); ``--real`` uses ``dladiff_app.engine.services`` with the
zero-shot shield at the Medium preset. Prints the folder holding ``main_window.png`` and
``viewer.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_xvfb() -> subprocess.Popen[bytes] | None:
    if os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM", "xcb") == "xcb":
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("Xvfb is not installed: apt-get install -y xvfb libxcb-icccm4 "
                 "libxcb-keysyms1 libxcb-cursor0")
    display = ":97"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        sys.exit(f"Xvfb exited with code {proc.returncode}")
    os.environ["DISPLAY"] = display
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    return proc


def sample_photos(folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image
    from skimage import data

    album = folder / "samples"
    album.mkdir(parents=True, exist_ok=True)
    out = [album / "astronaut.png"]
    Image.fromarray(np.asarray(data.astronaut())).save(out[0])
    spec = importlib.util.find_spec("insightface")
    if spec is not None and spec.submodule_search_locations:
        t1 = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
        if t1.is_file():
            out.append(album / "t1.jpg")
            shutil.copyfile(t1, out[-1])
    return out


def build_services(real: bool, work: Path):  # type: ignore[no-untyped-def]
    from dladiff_app.gui.services import Services
    from tests.gui.fakes import FakeDeviceService, FakeModelService, FakeProtectService

    models = FakeModelService(work / "models")
    if not real:
        return Services(protect=FakeProtectService(steps=20, step_seconds=0.02),
                        models=models, device=FakeDeviceService())
    from dladiff_app.engine import services as eng

    return Services(protect=eng.EngineProtectService(), models=eng.EngineModelService(),
                    device=eng.EngineDeviceService())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNG files")
    parser.add_argument("--real", action="store_true", help="use the real engine (slow)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="dladiff-shots-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dladiff-shots-work-"))
    xvfb = start_xvfb()
    try:
        from dladiff_app.gui.qt_env import sanitize_qt_environment

        sanitize_qt_environment()
        from dataclasses import replace

        from PySide6.QtWidgets import QApplication

        from dladiff_app.core.presets import PRESETS, Layers
        from dladiff_app.core.settings import Settings
        from dladiff_app.gui.main_window import MainWindow

        app = QApplication.instance() or QApplication([])
        window = MainWindow(services=build_services(args.real, work), settings=Settings(
            default_output=str(work / "protected"), first_run_done=True),
            settings_path=work / "config" / "settings.json")
        window.resize(1280, 800)
        window.show()
        photos = sample_photos(work / "in")
        window.add_paths(photos)
        if args.real:
            # The Medium preset's zero-shot shield, as a user without Stable Diffusion runs it.
            window.strength.set_settings(replace(PRESETS["medium"], layers=Layers.ZEROSHOT))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
                e.pixels for e in window.batch.entries()):
            app.processEvents()
        window.protect()
        grabbed_running = False
        deadline = time.monotonic() + args.timeout
        while window.engine.busy and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.01)
            if not grabbed_running and window.batch_progress.value() > 300:
                window.grab().save(str(out / "main_window_running.png"))
                grabbed_running = True
        if window.engine.busy:
            window.cancel()
            print("protection did not finish in time; cancelled", file=sys.stderr)
        app.processEvents()
        window.grab().save(str(out / "main_window.png"))
        done = [e for e in window.batch.entries() if e.result is not None]
        if done:
            window.batch.select_path(done[0].path)
            window.show_selected_in_viewer()
            app.processEvents()
            window.grab().save(str(out / "viewer.png"))
            window.viewer.diff_toggle.setChecked(True)
            app.processEvents()
            window.grab().save(str(out / "viewer_difference.png"))
        window.close()
        app.processEvents()
        ok = bool(done) and (out / "viewer.png").is_file()
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"Screenshots in {out}:")
    for png in sorted(out.glob("*.png")):
        print(f"  {png}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

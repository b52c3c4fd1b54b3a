"""Start the app under Xvfb with sample photos, run a protection, save screenshots.

    python packaging/screenshots.py [--out DIR] [--real]

Starts its own Xvfb unless ``DISPLAY`` is set (needs ``apt-get install -y xvfb libxcb-icccm4
libxcb-keysyms1 libxcb-cursor0``). Sample photos: ``skimage.data.astronaut`` and insightface's
``data/images/t1.jpg`` (when installed). The default engine is the fake service of the GUI tests
(real files, configured scores); ``--real`` uses ``dladiff_app.engine.services`` with the
zero-shot shield at the Medium preset. Captures the first start (model offer), the model
manager, the settings, the photo list with a file that is not a photo, a run, the finished album
with its verdict, the viewer (and its difference map), the group photo with a badge and an outline
per face, one face at 100%, the quick preview of a face (100% and 300%), a protected face next
to its original cropped from the files at 100% and 300% (nearest neighbour), the export dialog,
Help/About, and a run being cancelled and then cancelled; prints the folder holding them. Exits 1 when the run did not finish, a picture is
missing, or the cancelling and cancelled pictures are the same.
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
    # -displayfd: Xvfb picks a free display and writes its number, so runs never collide.
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1400x900x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if proc.poll() is not None or not number:
        sys.exit(f"Xvfb did not start (exit code {proc.poll()})")
    display = f":{number}"
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
        return Services(protect=FakeProtectService(steps=20, step_seconds=0.02,
                                                   face_counts={"t1.jpg": 6}),
                        models=models, device=FakeDeviceService())
    from dladiff_app.engine import services as eng

    return Services(protect=eng.EngineProtectService(), models=eng.EngineModelService(),
                    device=eng.EngineDeviceService())


def pump(app, seconds: float, until=None) -> bool:  # type: ignore[no-untyped-def]
    """Run the event loop for up to ``seconds``, or until ``until()`` is true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        if until is not None and until():
            return True
        time.sleep(0.01)
    app.processEvents()
    return until is None


def shoot(app, widget, path: Path) -> None:  # type: ignore[no-untyped-def]
    pump(app, 0.2)
    widget.grab().save(str(path))


def first_start_and_dialogs(app, window, out: Path) -> None:  # type: ignore[no-untyped-def]
    """The empty window with the first-start offer, the model manager and the settings."""
    from dladiff_app.gui.settings_dialog import SettingsDialog

    # The banner is there at once; the picture waits for the model list (and what it changes).
    pump(app, 60, lambda: bool(window.model_rows))
    shoot(app, window, out / "first_start.png")
    manager = window.open_model_manager()
    pump(app, 10, lambda: manager.table.rowCount() > 0)
    shoot(app, manager, out / "model_manager.png")
    manager.close()
    dialog = SettingsDialog(window.settings, window.device, window)
    dialog.show()
    shoot(app, dialog, out / "settings.png")
    dialog.reject()
    window.first_run_offline.click()  # offline zero-shot mode, as a user without SD picks


def group_photo_views(app, window, out: Path) -> None:  # type: ignore[no-untyped-def]
    """The group photo (t1.jpg) with its per-face outlines and badges, then one face at 100%."""
    group = next((e for e in window.batch.entries() if e.path.name == "t1.jpg"
                  and e.result is not None), None)
    if group is None:
        print("the group photo was not protected: no per-face screenshots", file=sys.stderr)
        return
    window.batch.select_path(group.path)
    window.show_selected_in_viewer()
    shoot(app, window, out / "group_photo_faces.png")
    if group.result.per_face:
        window.viewer.focus_face(0)
        window.viewer.actual_button.click()
        shoot(app, window, out / "face_100_percent.png")
    window.viewer.canvas.reset_view()


def preview_dialog(app, window, out: Path, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    """The quick preview of the chosen strength on the first photo's face (100% and 300%)."""
    window.batch.select_path(window.batch.entries()[0].path)
    window.strength.preview_button.click()
    dialog = window.preview_dialog
    pump(app, timeout, lambda: not dialog.running)
    shoot(app, dialog, out / "face_preview.png")
    dialog.close_button.click()
    return dialog.result is not None


def face_crops(source: Path, result, out: Path) -> bool:  # type: ignore[no-untyped-def]
    """The largest face of a protected photo next to its original, cropped from the two files:
    at 100% and at 300% with nearest-neighbour zoom, so the change is seen pixel for
    pixel."""
    from PIL import Image, ImageDraw

    if not result.per_face:
        return False
    x0, y0, x1, y1 = result.per_face[0].box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    with Image.open(source) as a, Image.open(result.output) as b:
        before, after = a.convert("RGB"), b.convert("RGB")
    # 100%: the face box widened 2x; 300%: the middle of the face (eyes, nose, mouth).
    for name, factor, radius in (("face_crop_100.png", 1, half), ("face_crop_300.png", 3,
                                                                  half / 2)):
        box = (max(0, int(cx - radius)), max(0, int(cy - radius)),
               min(before.width, int(cx + radius)), min(before.height, int(cy + radius)))
        pair = [img.crop(box) for img in (before, after)]
        pair = [p.resize((p.width * factor, p.height * factor), Image.Resampling.NEAREST)
                for p in pair]
        gap, label = 12, 22
        sheet = Image.new("RGB", (pair[0].width * 2 + gap, pair[0].height + label), "white")
        draw = ImageDraw.Draw(sheet)
        for i, (p, text) in enumerate(zip(pair, ("Original", "Protected"), strict=True)):
            sheet.paste(p, (i * (p.width + gap), label))
            draw.text((i * (p.width + gap) + 4, 4), f"{text} · {factor * 100}%", fill="black")
        sheet.save(out / name)
    return True


def cancelled_run(app, window, photo: Path, out: Path, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    """Protect one more photo and cancel it once it is under way; True when the two pictures
    show a run being cancelled and then cancelled."""
    from PIL import Image, ImageOps

    from dladiff_app.gui.batch_list import Status

    copy = photo.parent.parent / "more" / f"again{photo.suffix}"
    copy.parent.mkdir(parents=True, exist_ok=True)
    # Mirrored: a byte-identical copy counts as already protected and would finish at once.
    with Image.open(photo) as img:
        ImageOps.mirror(img.convert("RGB")).save(copy)
    window.add_paths([copy])
    entry = window.batch.entry(copy.resolve())
    pump(app, 5, lambda: entry.pixels is not None)
    window.protect()
    pump(app, timeout, lambda: (entry.status is Status.RUNNING and bool(entry.percent))
         or not window.engine.busy)
    if not window.engine.busy:
        print("the run to cancel ended before it could be cancelled", file=sys.stderr)
        return False
    window.cancel()
    # Grabbed at once: grab() renders synchronously, and pumping events first would let the
    # engine's "cancelled" arrive, making both pictures the same.
    window.grab().save(str(out / "cancelling.png"))
    pump(app, timeout, lambda: not window.engine.busy)
    shoot(app, window, out / "cancelled.png")
    same = (out / "cancelling.png").read_bytes() == (out / "cancelled.png").read_bytes()
    if same:
        print("cancelling.png and cancelled.png are identical", file=sys.stderr)
    return not same and entry.status is Status.CANCELLED


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
        from dladiff_app.gui.export_album import export_dialog
        from dladiff_app.gui.main_window import MainWindow

        app = QApplication.instance() or QApplication([])
        window = MainWindow(services=build_services(args.real, work), settings=Settings(
            default_output=str(work / "protected")),
            settings_path=work / "config" / "settings.json")
        window.resize(1280, 800)
        window.show()
        first_start_and_dialogs(app, window, out)
        photos = sample_photos(work / "in")
        not_a_photo = photos[0].parent / "notes.jpg"  # a text file with a photo's name
        not_a_photo.write_text("shopping list: milk, eggs")
        window.add_paths([*photos, not_a_photo])
        if args.real:
            # The Medium preset's zero-shot shield, as a user without Stable Diffusion runs it.
            window.strength.set_settings(replace(PRESETS["medium"], layers=Layers.ZEROSHOT))
        pump(app, 5, lambda: all(e.pixels or e.detail for e in window.batch.entries()))
        shoot(app, window, out / "photos_added.png")
        previewed = preview_dialog(app, window, out, args.timeout)
        window.protect()
        grabbed_running = False
        deadline = time.monotonic() + args.timeout
        while window.engine.busy and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.01)
            if not grabbed_running and window.batch_progress.value() > 300:
                window.grab().save(str(out / "main_window_running.png"))
                grabbed_running = True
        finished = not window.engine.busy
        if not finished:
            window.cancel()
            pump(app, 60, lambda: not window.engine.busy)
            print("protection did not finish in time; cancelled", file=sys.stderr)
        shoot(app, window, out / "finished_album.png")  # the verdict per album, open buttons
        done = [e for e in window.batch.entries() if e.result is not None]
        cancelled_ok = False
        if done:
            window.batch.select_path(done[0].path)
            window.show_selected_in_viewer()
            shoot(app, window, out / "viewer.png")
            window.viewer.diff_toggle.setChecked(True)
            shoot(app, window, out / "viewer_difference.png")
            window.viewer.diff_toggle.setChecked(False)
            face_crops(done[0].path, done[0].result, out)
            group_photo_views(app, window, out)
            window.tabs.setCurrentIndex(0)
            dialog = export_dialog(window, len(done))
            dialog.show()
            shoot(app, dialog, out / "export.png")
            dialog.reject()
            window.help_action.trigger()
            shoot(app, window.help_dialog, out / "help_about.png")
            window.help_dialog.close()
            cancelled_ok = cancelled_run(app, window, photos[0], out, args.timeout)
        window.close()
        app.processEvents()
        expected = ("first_start.png", "model_manager.png", "finished_album.png", "viewer.png",
                    "help_about.png", "cancelling.png", "cancelled.png", "face_preview.png",
                    "face_crop_100.png", "face_crop_300.png")
        if len(photos) > 1:
            expected += ("group_photo_faces.png", "face_100_percent.png")
        missing = [name for name in expected if not (out / name).is_file()]
        if missing:
            print(f"screenshots missing: {', '.join(missing)}", file=sys.stderr)
        if not previewed:
            print("the preview did not show a protected face", file=sys.stderr)
        ok = finished and bool(done) and cancelled_ok and previewed and not missing
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

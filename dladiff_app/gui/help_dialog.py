"""Help and About: how the protection works, the models and their licences, where files go."""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from dladiff_app import __version__
from dladiff_app.core.services import ModelRow
from dladiff_app.core.settings import Settings

METHOD_HTML = """
<h3>What DLADiff does</h3>
<p>Anyone can now make convincing new pictures of a person from a few of their photos, either by
<b>fine-tuning</b> an image generator on them (DreamBooth, LoRA) or <b>from a single photo</b>
with tools that copy the face's identity (IP-Adapter-FaceID, InstantID, PuLID, PhotoMaker).
DLADiff adds a small, carefully chosen change to your photos before you share them, so that these
tools learn or copy the wrong face.</p>
<h3>Two shields</h3>
<ul>
<li><b>Fine-tuning shield</b>: trains two copies of Stable Diffusion on your photos while it
works (one learns alongside the change, one already knows your face), and changes the photos so
that training on them goes wrong. It needs Stable Diffusion on this computer and a GPU to be
quick.</li>
<li><b>Zero-shot shield</b>: changes each face so the identity models the one-photo tools use
no longer recognise it, also after the photo is recompressed and resized the way social networks
do. It works offline with the bundled dlib model.</li>
</ul>
<h3>Strength and thoroughness</h3>
<p><b>Strength</b> sets how much a face may change. Low and Medium are held where a person
does not see the change at 100% on a normal screen (a visual model of the eye checks every
face); at that look they do not fool face-recognition models, as the verdicts show. High is
the strength that protects, and its change can be seen up close. <b>Thoroughness</b> is how long the protection keeps
improving. The before/after viewer shows, for every face, whether each identity model still
recognises the person, on the saved file and after sharing.</p>
<p>After the method of <i>DLADiff: A Dual-Layer Defense Framework against Fine-Tuning and
Zero-Shot Customization of Diffusion Models</i> (Jia et al., arXiv 2511.19910).</p>
<p>Everything runs on this computer. Nothing is uploaded, there is no telemetry, and your
originals are never modified.</p>
"""

LIBRARIES = (
    ("DLADiff app", "Apache-2.0"),
    ("Qt / PySide6", "LGPL-3.0"),
    ("PyTorch", "BSD-3-Clause"),
    ("diffusers, transformers, peft", "Apache-2.0"),
    ("dlib (dlib-bin)", "Boost Software License 1.0"),
    ("insightface (code)", "MIT"),
    ("ONNX Runtime", "MIT"),
)


def models_html(rows: list[ModelRow]) -> str:
    """Every model the app can use, whether it is here, and its licence (from the registry, so
    a new encoder appears here without a change to this page)."""
    out = ["<h3>Models</h3>"]
    if not rows:
        out.append("<p>The model list is still loading; open Models… for details.</p>")
    else:
        out.append("<table cellpadding='4'><tr><th align='left'>Model</th>"
                   "<th align='left'>Used for</th><th align='left'>Here?</th>"
                   "<th align='left'>Licence</th></tr>")
        for r in rows:
            out.append(f"<tr><td>{escape(r.title)}</td><td>{escape(r.purpose)}</td>"
                       f"<td>{'yes' if r.present else 'no'}</td>"
                       f"<td>{escape(r.license_name)}</td></tr>")
        out.append("</table>")
        for r in rows:
            if r.license_text:
                out.append(f"<p><b>{escape(r.title)}</b> ({escape(r.license_name)}): "
                           f"{escape(r.license_text)}</p>")
    out.append("<h3>Software</h3><ul>")
    out += [f"<li>{escape(name)}: {escape(lic)}</li>" for name, lic in LIBRARIES]
    out.append("</ul><p>No model weights are bundled with the app: they come from Python "
               "packages (dlib's CC0 models) or are downloaded when you ask, after their "
               "licence is shown.</p>")
    return "".join(out)


def files_html(settings: Settings, output_dir: Path) -> str:
    from dladiff_app.core import paths

    rows = [
        ("Protected photos", str(output_dir),
         "one folder per album, with manifest.json and report.html; nothing is overwritten"),
        ("Settings", str(paths.settings_path()), "your choices, as JSON"),
        ("Models", str(paths.models_dir(settings)),
         f"downloaded models; set {paths.ENV_CACHE_DIR} or Settings to move it"),
        ("Learned face priors", str(paths.cache_dir(settings) / "prior_lora"),
         "the fine-tuning shield's cache per album; safe to delete"),
    ]
    out = ["<h3>Where files go</h3><table cellpadding='4'>"]
    for what, where, note in rows:
        out.append(f"<tr><td><b>{escape(what)}</b></td><td><code>{escape(where)}</code><br>"
                   f"<small>{escape(note)}</small></td></tr>")
    out.append("</table><p>Your original photos are only read, never changed.</p>")
    return "".join(out)


def about_html() -> str:
    from PySide6 import __version__ as pyside_version

    return (f"<h3>DLADiff {escape(__version__)}</h3>"
            "<p>Protect your face photos from AI identity copying.</p>"
            f"<p>Python {sys.version.split()[0]} · PySide6 {escape(pyside_version)}</p>"
            "<p>Licensed under the Apache License 2.0.</p>")


class HelpDialog(QDialog):
    """Tabs: how it works, models and licences, where files go, about."""

    def __init__(self, rows: list[ModelRow], settings: Settings, output_dir: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Help and about DLADiff")
        self.resize(760, 560)
        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Help pages")
        self.pages: dict[str, QTextBrowser] = {}
        for title, html in (("How it works", METHOD_HTML), ("Models and licences",
                                                             models_html(rows)),
                            ("Where files go", files_html(settings, output_dir)),
                            ("About", about_html())):
            page = QTextBrowser()
            page.setOpenExternalLinks(False)
            page.setAccessibleName(title)
            page.setHtml(html)
            self.tabs.addTab(page, title)
            self.pages[title] = page
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.Close).setAccessibleName("Close")
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(buttons)

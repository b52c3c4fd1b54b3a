"""``report.html``: a self-contained page (no external files, no scripts) a person can open.

Everything, thumbnails included (as ``data:`` URIs), is inside the one file, so the report can be
mailed or moved next to the photos and still show them.
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import numpy as np
from PIL import Image

from dladiff_app.core.names import readable
from dladiff_app.core.results import result_from_record
from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE
from dladiff_app.core.verdict import album_verdict
from dladiff_app.core.visibility_words import face_change_figures, face_change_words

_LAYER_TEXT = {
    "layer1": "Fine-tuning shield: a perturbation over the whole album that makes DreamBooth/LoRA "
              "training on these photos learn the wrong thing.",
    "layer2": "Zero-shot shield: the face region was changed so that face-recognition models, "
              "like those IP-Adapter/InstantID/PhotoMaker-style tools use, see a different "
              "person.",
    "polish": "Joint polish: a few final steps on both shields' losses, inside both budgets.",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
.pair{display:flex;gap:1em;flex-wrap:wrap} figure{margin:0} figcaption{font-size:.85em;color:#555}
img{max-width:360px;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.9em} .different{color:#0a6b2d;font-weight:600}
.same{color:#a31b1b;font-weight:600} .warn{color:#8a5a00} .failed{color:#a31b1b}
"""


def thumbnail_jpeg(pixels: np.ndarray, max_side: int = 360, quality: int = 85) -> bytes:
    """``pixels``: (H, W, 3) float32 RGB in [0, 1] (or uint8). Returns JPEG bytes whose long side
    is at most ``max_side`` (aspect kept)."""
    arr = pixels if pixels.dtype == np.uint8 else np.rint(np.clip(pixels, 0, 1) * 255).astype(
        np.uint8)
    img = Image.fromarray(arr, "RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _scores_table(scores: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    if not scores:
        return "<p class='warn'>No identity encoder was available to score this photo.</p>"
    after_by = {s["encoder"]: s for s in after}
    rows = []
    for s in scores:
        a = after_by.get(s["encoder"])
        rel = "&lt;" if s["metric"] == "euclidean" else "&ge;"
        rows.append(
            "<tr><td>{enc}</td><td>{metric}</td><td>{val}</td><td class='{cls}'>{verdict}</td>"
            "<td>{aval}</td><td class='{acls}'>{averdict}</td><td>same person if {rel} {thr}</td>"
            "</tr>".format(
                enc=escape(s["encoder"]), metric=escape(s["metric"]), val=_fmt(s["value"]),
                cls=_verdict_class(s), verdict=escape(s["verdict"]),
                aval=_fmt(a["value"]) if a else "n/a", acls=_verdict_class(a) if a else "",
                averdict=escape(a["verdict"]) if a else "n/a", rel=rel,
                thr=_fmt(s["threshold"], 2)))
    return ("<table><tr><th>encoder</th><th>metric</th><th>clean vs protected</th>"
            "<th>verdict</th><th>after JPEG q75 + 1080 px</th><th>verdict</th><th>rule</th></tr>"
            + "".join(rows) + "</table>")


def _verdict_class(score: dict[str, Any] | None) -> str:
    if not score or score.get("same_person") is None:
        return "warn"
    return "same" if score["same_person"] else "different"


def _photo_section(photo: dict[str, Any], thumbs: tuple[bytes, bytes] | None) -> str:
    name = photo["source"].replace("\\", "/").rsplit("/", 1)[-1]
    parts = [f"<section><h2>{escape(name)}</h2>"]
    if thumbs is not None:
        before, after = thumbs
        parts.append(
            "<div class='pair'>"
            f"<figure><img alt='original {escape(name)}' src='{_data_uri(before)}'>"
            "<figcaption>original</figcaption></figure>"
            f"<figure><img alt='protected {escape(name)}' src='{_data_uri(after)}'>"
            "<figcaption>protected</figcaption></figure></div>")
    parts.append(
        f"<p>Output: <code>{escape(photo['output'])}</code> ({photo['width']}&times;"
        f"{photo['height']} px), preset {escape(str(photo['preset']))}, budget "
        f"{_budget_text(photo)}, device {escape(photo['device'])}, "
        f"{_fmt(photo['seconds'], 1)} s. PSNR {_fmt(photo['psnr'], 2)} dB, SSIM "
        f"{_fmt(photo['ssim'], 4)}, largest pixel change {_fmt(photo['linf'], 0)}/255.</p>")
    parts.append(_visibility_paragraph(photo))
    parts.append(_scores_table(photo.get("scores", []), photo.get("scores_after_sharing", [])))
    notes = photo.get("layer_notes", {})
    items = [f"<li>{escape(_LAYER_TEXT.get(layer, layer))}"
             + (f" <em>{escape(str(notes[layer]))}</em>" if layer in notes else "") + "</li>"
             for layer in photo.get("layers_done", [])]
    if not items:
        items = ["<li class='warn'>No shield changed this photo.</li>"]
    parts.append("<h3>What each layer did</h3><ul>" + "".join(items) + "</ul>")
    if photo.get("warnings"):
        parts.append("<ul>" + "".join(f"<li class='warn'>{escape(w)}</li>"
                                      for w in photo["warnings"]) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def _visibility_paragraph(photo: dict[str, Any]) -> str:
    """The change on the faces in words, with the figures behind them (absent in manifests
    written before they were measured)."""
    words = face_change_words(photo.get("face_ssim"), photo.get("face_de_mean"),
                              photo.get("face_jnd"))
    if not words:
        return ""
    figures = face_change_figures(photo.get("face_ssim"), photo.get("face_de_mean"),
                                  photo.get("face_de_p95"), photo.get("face_jnd"))
    return f"<p>{escape(words)}. <small>({escape(figures)})</small></p>"


def _verdict_paragraph(manifest: dict[str, Any]) -> str:
    """The album's verdict, the sentence the app shows after a run (which attacks the photos
    are protected against, and which not); empty for an album without a protected photo."""
    try:
        results = [result_from_record(p) for p in manifest["photos"]]
    except (KeyError, TypeError, ValueError):  # a record too old to judge: no verdict
        return ""
    if not results:
        return ""
    text = album_verdict(results).text.split(": ", 1)[-1]  # the album is the page's title
    return f"<p class='verdict'><strong>Verdict:</strong> {escape(text[:1].upper() + text[1:])}</p>"


def render_report(manifest: dict[str, Any],
                  thumbnails: dict[str, tuple[bytes, bytes]] | None = None) -> str:
    """HTML for one album. ``thumbnails`` maps a photo's ``output`` (or its ``source``) to
    (before, after) JPEG bytes (see :func:`thumbnail_jpeg`); photos without an entry are listed
    without pictures."""
    thumbnails = thumbnails or {}
    unprotected = manifest.get("unprotected", [])
    head = (f"<h1>DLADiff protection report: {escape(manifest['album'])}</h1>"
            f"<p>{len(manifest['photos'])} protected, {len(unprotected)} not protected (no "
            f"shield could change them), {len(manifest['failed'])} failed. "
            f"{_settings_sentence(manifest)} Device: {escape(manifest['device']['name'])}. "
            f"DLADiff {escape(manifest['app_version'])}, {escape(manifest['created'])}.</p>"
            f"{_verdict_paragraph(manifest)}"
            "<p>Identity scores compare the original with the protected file as written: "
            "&ldquo;different person&rdquo; means the encoder no longer recognises the face. "
            f"{escape(UNSEEN_MODELS_NOTE)}</p>")
    warned = ""
    if unprotected:
        warned = ("<h2>Not protected</h2><p class='failed'>These photos are <strong>not "
                  "protected</strong>: no shield could change them. Do not share them as "
                  "protected.</p><ul>" + "".join(
                      f"<li class='failed'>{escape(u['source'])}: {escape(u['reason'])}"
                      + (f" (exported unchanged as <code>{escape(u['output'])}</code>)"
                         if u.get("output") else " (no file was written)") + "</li>"
                      for u in unprotected) + "</ul>")
    failed = ""
    if manifest["failed"]:
        failed = ("<h2>Failed</h2><ul>" + "".join(
            f"<li class='failed'>{escape(f['source'])}: {escape(f['reason'])}</li>"
            for f in manifest["failed"]) + "</ul>")
    body = "".join(_photo_section(p, thumbnails.get(p["output"], thumbnails.get(p["source"])))
                   for p in manifest["photos"])
    # Names that are not UTF-8 are shown with their odd bytes as \\xNN (HTML must be UTF-8).
    return readable("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                    f"<title>DLADiff report: {escape(manifest['album'])}</title>"
                    f"<style>{_CSS}</style></head><body>{head}{warned}{failed}{body}"
                    "</body></html>\n")


def _shields_ran(photo: dict[str, Any]) -> str:
    """The shields that changed the photo (``both``, ``zeroshot``, ``finetune``), and the ones
    asked for when fewer ran (Stable Diffusion not installed, a shield that failed)."""
    asked = str(photo.get("layers"))
    done = set(photo.get("layers_done") or ())
    ran = ("both" if {"layer1", "layer2"} <= done else "zeroshot" if "layer2" in done
           else "finetune" if "layer1" in done else asked)
    words = _SHIELD_WORDS.get(ran, ran)
    return words if ran == asked else f"{words} ({_SHIELD_WORDS.get(asked, asked)} asked for)"


# The manifest's shield ids as a reader says them.
_SHIELD_WORDS = {"both": "fine-tuning and zero-shot", "zeroshot": "zero-shot only",
                 "finetune": "fine-tuning only"}


def _budget_text(photo: dict[str, Any]) -> str:
    """Each shield's budget that changed the photo (a manifest without ``eps_ft`` predates
    budgets per shield: its one budget is given as it was)."""
    done = photo.get("layers_done", [])
    if "eps_ft" not in photo:
        return f"{_fmt(photo['eps'], 1)}/255"
    parts = []
    if "layer1" in done:
        parts.append(f"{_fmt(photo['eps_ft'], 1)}/255 on the whole photo (fine-tuning shield)")
    if "layer2" in done:
        parts.append(f"{_fmt(photo['eps'], 1)}/255 on the faces (zero-shot shield"
                     + (", on top)" if parts else ")"))
    return " + ".join(parts) if parts else f"{_fmt(photo['eps'], 1)}/255"


def _settings_sentence(manifest: dict[str, Any]) -> str:
    """The settings the photos actually carry: the latest run's, or each preset with its count
    when the album holds protections made at different settings."""
    job = manifest["job"]
    kinds: dict[tuple[str, str, str], int] = {}
    for p in manifest["photos"]:
        key = (str(p.get("preset")), _fmt(p.get("eps"), 1), _shields_ran(p))
        kinds[key] = kinds.get(key, 0) + 1
    if len(kinds) <= 1:
        preset, eps, layers = next(iter(kinds)) if kinds else (
            str(job["preset"]), _fmt(job["eps"], 1),
            _SHIELD_WORDS.get(str(job["layers"]), str(job["layers"])))
        return (f"Preset {escape(preset)}, budget {eps}/255, shields: {escape(layers)}.")
    parts = [f"preset {escape(pr)} at {eps}/255, shields {escape(la)} ({n} photo(s))"
             for (pr, eps, la), n in sorted(kinds.items())]
    return ("Protections at different settings are listed (a photo protected again keeps its "
            "earlier file): " + "; ".join(parts) + ".")

"""One sentence per album after a run: which attacks it is protected against and which not.

Built from the measured results only: the zero-shot claim counts the faces that every identity
model read as a different person after the sharing transform (JPEG + resize), names those
models, and says that face models the shield never saw may still recognise some (the models
that score are the ones the shield attacked: a measured "different person" from them is not a
promise about the others, ``core.score_words``); the fine-tuning claim is made only when the
fine-tuning shield ran on every photo of the album. A zero-shot-only album is said to be not
protected against fine-tuning, in those words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.score_words import deciding_scores, model_list

ZERO_SHOT = "one-photo tools (IP-Adapter, InstantID, PuLID)"
FINE_TUNING = "fine-tuning (DreamBooth/LoRA)"


@dataclass(frozen=True)
class AlbumVerdict:
    album: str
    folder: Path
    text: str
    zero_shot: bool      # every photo got the zero-shot shield and every face reads as another
    fine_tuning: bool    # every photo got the fine-tuning shield


def _hidden(scores: Iterable[IdentityScore]) -> bool | None:
    """True: every encoder that saw the face reads a different person; None: none measured."""
    measured = [s for s in scores if s.same_person is not None]
    if not measured:
        return None
    return not any(s.same_person for s in measured)


def album_verdict(results: list[PhotoResult]) -> AlbumVerdict:
    """The verdict of one album's protected photos (all from one output folder)."""
    folder = Path(results[0].output).parent
    zs_photos = [r for r in results if "layer2" in r.layers_done]
    faces = [f for r in zs_photos for f in r.scored_faces()]
    hidden = [_hidden(deciding_scores(f)) for f in faces]
    n_hidden, n_measured = sum(h is True for h in hidden), sum(h is not None for h in hidden)
    if not zs_photos:
        zs_text = f"not protected against {ZERO_SHOT}: the zero-shot shield did not run"
    else:
        zs_text = (f"protected against {ZERO_SHOT}" if n_hidden == n_measured > 0
                   and len(zs_photos) == len(results)
                   else f"not protected against {ZERO_SHOT}" if n_measured and not n_hidden
                   else f"partly protected against {ZERO_SHOT}")
        names = [s.encoder for f in faces for s in (*f.scores, *f.scores_after_sharing)
                 if s.same_person is not None]
        zs_text += (f": {n_hidden} of {n_measured} faces read as a different person after "
                    "JPEG/resize")
        if names:
            zs_text += (f" by {model_list(names)}, the face models the shield worked against "
                        "(models it never saw may still recognise some)")
        if len(zs_photos) < len(results):
            missing = len(results) - len(zs_photos)
            zs_text += f" ({missing} photo{'s' if missing != 1 else ''} without the shield)"
    ft = bool(results) and all("layer1" in r.layers_done for r in results)
    ft_text = (f"protected against {FINE_TUNING}" if ft else
               f"not protected against {FINE_TUNING}: the fine-tuning shield did not run")
    zero_shot = bool(zs_photos) and len(zs_photos) == len(results) and n_hidden == n_measured > 0
    text = f"{folder.name}: {zs_text}; {ft_text}."
    return AlbumVerdict(folder.name, folder, text, zero_shot, ft)


def verdicts(results: Iterable[PhotoResult]) -> list[AlbumVerdict]:
    """One verdict per output folder, in folder order."""
    albums: dict[Path, list[PhotoResult]] = {}
    for r in results:
        albums.setdefault(Path(r.output).parent, []).append(r)
    return [album_verdict(albums[k]) for k in sorted(albums)]


def report_for(folder: Path) -> Path | None:
    """The album's report: ``report.html``, or the newest numbered one the runner had to use
    because a user file held the name."""
    plain = folder / "report.html"
    if plain.is_file():
        return plain
    found = sorted(folder.glob("report*.html"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None

"""Progress and ETA for a protection job, from measured step times.

Three kinds of work cost very different amounts, so each gets its own measured seconds per unit
and the ETA is what is left of each times its rate:

- ``album``: layer-1 steps over a whole album (a Stable Diffusion forward/backward each);
- ``photo``: zero-shot and polish steps, one unit per step *per face* (one step works on every
  face of the photo);
- ``finish``: saving and measuring a photo (two units: encode, then detection and identity
  scores on the file and after sharing), whatever its steps.

The plan assumes one face per photo until the runner has detected a photo's faces
(:meth:`EtaTracker.faces_found`), then that photo's plan is corrected (six faces: six times the
steps; no face: its saving and measuring only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dladiff_app.core.events import EventSink, Progress
from dladiff_app.core.presets import ProtectionSettings

_PER_FACE_STAGES = ("layer2", "polish")
_FINISH_STAGES = ("save", "score")
_FINISH_UNITS = 2.0
_STAGE = {"prior": "prior", "layer1_pgd": "layer1", "layer1_lora": "layer1", "layer1": "layer1",
          "layer2": "layer2", "polish": "polish", "save": "save", "score": "score"}


class EtaTracker:
    def __init__(self, sink: EventSink, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.clock = sink, clock
        self.left = {"album": 0.0, "photo": 0.0, "finish": 0.0}
        self.total = 0.0
        self.rate: dict[str, float] = {}
        self.last_tick: dict[str, float] = {}
        self.per_face = 0.0
        self.plans: dict[tuple[str, int], float] = {}   # (kind, photo) -> planned units
        self.used: dict[tuple[str, int], float] = {}    # (kind, photo) -> units done
        self.faces: dict[int, int] = {}
        self._shown = 0.0
        self.per_album: list[float] = []
        self.album_used = 0.0
        self.last_step: dict[tuple[int | None, str], int] = {}

    def _plan_of(self, kind: str, photo_id: int) -> float:
        default = self.per_face if kind == "photo" else _FINISH_UNITS
        return self.plans.get((kind, photo_id), default)

    def plan(self, settings: ProtectionSettings, album_sizes: Sequence[int], layer1: bool,
             layer2: bool, polish: bool = True, unusable: int = 0) -> None:
        """Plan the work; ``unusable`` photos (missing inputs) only count as finished ones."""
        s = settings
        run_l1 = s.layers.finetune and layer1
        l1 = s.prior_steps + s.layer1_total_pgd + s.layer1_total_lora if run_l1 else 0
        self.per_album = [float(l1) if n else 0.0 for n in album_sizes]
        run_l2 = s.layers.zeroshot and layer2
        self.per_face = (s.layer2_steps if run_l2 else 0.0) + (
            s.polish_steps if run_l1 and run_l2 and polish else 0.0)
        photos = sum(album_sizes) + unusable
        self.left = {"album": float(sum(self.per_album)), "photo": self.per_face * photos,
                     "finish": _FINISH_UNITS * photos}
        self.total = sum(self.left.values()) or 1.0

    def _tick(self, kind: str, units: float, photo_id: int | None) -> None:
        now = self.clock()
        if kind in self.last_tick and units > 0:
            dt = (now - self.last_tick[kind]) / units
            old = self.rate.get(kind)
            self.rate[kind] = dt if old is None else 0.7 * old + 0.3 * dt
        self.last_tick[kind] = now
        units = min(units, self.left[kind])
        self.left[kind] -= units
        if photo_id is not None:
            self.used[(kind, photo_id)] = self.used.get((kind, photo_id), 0.0) + units
        elif kind == "album":
            self.album_used += units

    def eta(self) -> float | None:
        known = list(self.rate.values())
        if not known:
            return None
        fallback = max(known)
        return sum(left * self.rate.get(kind, fallback) for kind, left in self.left.items())

    def faces_found(self, photo_id: int, faces: int) -> None:
        """The runner detected ``faces`` faces in the photo: its per-face work is re-planned."""
        faces = max(0, int(faces))
        key = ("photo", photo_id)
        planned = self._plan_of("photo", photo_id)
        delta = max(self.per_face * faces, self.used.get(key, 0.0)) - planned
        self.plans[key] = planned + delta
        self.faces[photo_id] = faces
        self.left["photo"] = max(0.0, self.left["photo"] + delta)
        self.total = max(self.total + delta, 1.0)

    @property
    def overall(self) -> float:
        if self.total <= 0:  # nothing planned yet
            return 0.0
        # A plan that grows (a photo with more faces than assumed) never moves the bar back.
        self._shown = max(self._shown, max(0.0, min(1.0, 1.0 - sum(self.left.values())
                                                     / self.total)))
        return self._shown

    def step_fn(self, photo_id: int | None) -> Callable[[str, int, int], None]:
        """A progress callback for one photo's work (``photo_id``) or an album's layer 1
        (``None``): ``(stage, step, total)`` with ``step`` counting up from 0 within a stage."""
        def step(stage: str, done: int, total: int) -> None:
            kind = ("album" if photo_id is None else
                    "finish" if stage in _FINISH_STAGES else "photo")
            key = (photo_id, stage)
            units = max(0, done - self.last_step.get(key, 0))
            self.last_step[key] = done
            if photo_id is not None and stage in _PER_FACE_STAGES:
                units *= max(1, self.faces.get(photo_id, 1))  # one step works on every face
            if done == 0:  # a stage (re)starts: the time before it is not a step
                self.last_tick[kind] = self.clock()
            self._tick(kind, float(units), photo_id)
            self.sink(Progress(_STAGE.get(stage, stage), done, total, self.overall, self.eta(),
                               photo_id))
        return step

    def album_finished(self, index: int) -> None:
        """Layer 1 of album ``index`` is over (or skipped): drop what is left of its plan."""
        planned = sum(self.per_album[: index + 1])
        extra = max(0.0, planned - self.album_used)
        self.left["album"] = max(0.0, self.left["album"] - extra)
        self.album_used += extra
        # The next album's layer 1 counts its steps from 1 again.
        self.last_step = {k: v for k, v in self.last_step.items() if k[0] is not None}

    def photo_finished(self, photo_id: int) -> None:
        """The photo is done, failed or skipped: drop what is left of its plan."""
        for kind in ("photo", "finish"):
            planned = self._plan_of(kind, photo_id)
            extra = max(0.0, planned - self.used.get((kind, photo_id), 0.0))
            self.left[kind] = max(0.0, self.left[kind] - extra)
            self.used[(kind, photo_id)] = planned
        # The photo's last word: "score" is its final stage (also for a failed/skipped photo).
        self.sink(Progress("score", 1, 1, self.overall, self.eta(), photo_id))

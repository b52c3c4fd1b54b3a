"""Progress and ETA of a job from measured step times (a fake clock, no model)."""

from __future__ import annotations

import pytest

from dladiff_app.core.events import Event, Progress
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.runner_progress import EtaTracker

SETTINGS = ProtectionSettings(preset="custom", layers=Layers.FINETUNE, layer1_rounds=1,
                              layer1_pgd_steps=4, layer1_denoise_steps=0, layer1_lora_steps=0,
                              prior_steps=0)


def test_every_albums_layer1_steps_count_and_the_eta_follows_the_measured_rate() -> None:
    now = [0.0]
    events: list[Event] = []
    eta = EtaTracker(events.append, clock=lambda: now[0])
    eta.plan(SETTINGS, [1, 1], layer1=True, layer2=False)
    assert eta.left == {"album": 8.0, "photo": 0.0, "finish": 4.0}
    for album in (0, 1):
        step = eta.step_fn(None)
        for done in range(1, 5):
            now[0] += 3.0  # three seconds per layer-1 step
            step("layer1_pgd", done, 4)
        # The album's own steps were counted while they ran, not only when it finished.
        assert eta.left["album"] == 4.0 * (1 - album)
        eta.album_finished(album)
    progress = [e for e in events if isinstance(e, Progress)]
    overall = [p.overall for p in progress]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(8 / 12)
    assert eta.rate["album"] == pytest.approx(3.0)
    assert progress[-1].eta_s == pytest.approx(4.0 * 3.0)  # the photos' two steps each, at the only known rate


def test_a_finished_photo_drops_what_is_left_of_its_plan() -> None:
    events: list[Event] = []
    eta = EtaTracker(events.append, clock=lambda: 0.0)
    eta.plan(SETTINGS, [2], layer1=False, layer2=False)
    assert eta.left == {"album": 0.0, "photo": 0.0, "finish": 4.0}
    eta.photo_finished(0)
    assert eta.left["finish"] == 2.0 and eta.overall == 0.5
    last = events[-1]
    assert isinstance(last, Progress) and (last.stage, last.photo_id) == ("score", 0)


def test_zero_shot_steps_count_per_face_once_the_faces_are_found() -> None:
    zs = ProtectionSettings(preset="custom", layers=Layers.ZEROSHOT, layer2_steps=10,
                            polish_steps=0)
    now = [0.0]
    eta = EtaTracker(lambda e: None, clock=lambda: now[0])
    eta.plan(zs, [3], layer1=False, layer2=True)
    assert eta.left == {"album": 0.0, "photo": 30.0, "finish": 6.0}  # one face each, assumed
    eta.faces_found(0, 6)  # a group photo: six faces
    eta.faces_found(1, 0)  # no face: its saving and measuring only
    assert eta.left["photo"] == 60 + 0 + 10
    step = eta.step_fn(0)
    step("layer2", 0, 10)
    now[0] += 6.0
    step("layer2", 1, 10)  # one step on six faces: six units, one second each
    assert eta.rate["photo"] == pytest.approx(1.0)
    # Saving and measuring have their own rate: one photo's measuring took 8 s.
    step("score", 0, 1)
    now[0] += 8.0
    step("score", 1, 1)
    assert eta.rate["finish"] == pytest.approx(8.0)
    assert eta.eta() == pytest.approx((60 - 6 + 0 + 10) * 1.0 + (6 - 1) * 8.0)
    before = eta.overall
    eta.faces_found(2, 3)  # the plan grows: the bar does not move back
    assert eta.overall >= before
    eta.photo_finished(0)
    assert eta.left["photo"] == 30 and eta.left["finish"] == 4

"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pack():  # type: ignore[no-untyped-def]
    """The offline dlib model pack from the installed face_recognition_models package.

    face_recognition_models is a declared dependency: a pack that cannot be found is a failure,
    not a skip.
    """
    from dladiff_app.engine.models.dlib_pack import find_dlib_pack

    return find_dlib_pack()

"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pack():  # type: ignore[no-untyped-def]
    """The offline dlib model pack from the installed face_recognition_models package."""
    from dladiff_app.core.errors import ModelMissingError
    from dladiff_app.engine.models.dlib_pack import find_dlib_pack

    try:
        return find_dlib_pack()
    except ModelMissingError as err:
        pytest.skip(str(err))

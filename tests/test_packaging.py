"""The installed package must contain every module of the source tree (package-dir mapping)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for top, source in setuptools["package-dir"].items():
        for init in (ROOT / source).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / source)
            found.add(".".join([top, *relative.parts]))
    assert found == listed


def test_cli_and_evaluation_install_under_sada_audio_only():
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert package_dir == {"sada_audio": "sada_audio", "sada_audio.cli": "cli", "sada_audio.evaluation": "evaluation"}

"""What gets installed: every module of the package's source folders, the embedded model, and nothing else
(no trainer, no test fixtures, no research scripts)."""

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# Modules users never import, which live in tools/ and tests/support/ instead (see pyproject.toml).
NOT_SHIPPED = (
    "testing",
    "train",
    "music",
    "components",
    "tiny_model_quality",
    "family_nfe",
    "analytic_ablation",
    "render_throughput",
    "pipeline_wall_time",
    "pruned_call_times",
)
# The package's Python code was 0.63 MB with the trainer, fixtures and research scripts, 0.50 MB after they
# moved out, 0.60 MB with the levels, the benchmark's resume, peers and references and the reliability checks
# (2026-12-07); the budget leaves room to grow without letting the trainer (about 0.13 MB) back in unnoticed.
CODE_BUDGET_BYTES = 640_000


def test_every_source_package_is_listed_for_installation():
    listed = set(SETUPTOOLS["packages"])
    found = set()
    for top, source in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / source).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / source)
            found.add(".".join([top, *relative.parts]))
    assert found == listed


def test_cli_and_evaluation_install_under_sada_audio_only():
    assert SETUPTOOLS["package-dir"] == {
        "sada_audio": "sada_audio",
        "sada_audio.cli": "cli",
        "sada_audio.evaluation": "evaluation",
    }


def _package_folder(package: str) -> Path:
    """The checkout folder ``package`` is installed from (the longest package-dir prefix decides)."""
    top = max(
        (name for name in SETUPTOOLS["package-dir"] if package == name or package.startswith(name + ".")), key=len
    )
    return ROOT / SETUPTOOLS["package-dir"][top] / Path(*package[len(top) :].split(".")[1:])


def _expected_wheel_files() -> set[str]:
    """The modules of every listed package and the embedded model's files, as wheel paths."""
    files = {
        f"{package.replace('.', '/')}/{path.name}"
        for package in SETUPTOOLS["packages"]
        for path in _package_folder(package).glob("*.py")
    }
    package_root = ROOT / "sada_audio"
    assets = (package_root / "assets").rglob("*")
    return files | {f"sada_audio/{path.relative_to(package_root)}" for path in assets if path.is_file()}


@pytest.mark.integration
def test_the_wheel_holds_the_library_and_the_embedded_model_only(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout, and build/ can
    # carry stale modules into later wheels.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".venv*")
    shutil.copytree(ROOT, source, ignore=ignore)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*command, "-w", str(tmp_path), str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("sada_audio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        entries = {info.filename: info.file_size for info in archive.infolist()}
    shipped = {name for name in entries if ".dist-info/" not in name}

    assert shipped == _expected_wheel_files()
    assert not [name for name in shipped if Path(name).stem in NOT_SHIPPED]
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/")[0] for name in entries} == {"sada_audio", dist_info}
    code = sum(size for name, size in entries.items() if name.endswith(".py"))
    assert code < CODE_BUDGET_BYTES


def test_the_version_is_written_once() -> None:
    import sada_audio

    assert "version" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert importlib.metadata.version("sada-audio") == sada_audio.__version__

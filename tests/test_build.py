"""The one build works again from the same checkout: pip's build environment (its ninja, cmake
and pybind11) is deleted after each build, and the CMake cache it leaves in build/ must not stop
the next one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout(folder: Path, with_build: bool) -> Path:
    """The project's sources without build products or environments; with the CMake build
    folders of the checkout's earlier pip builds when `with_build`."""
    shutil.copytree(ROOT, folder, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", "*.so", ".venv*", ".git", ".pytest_cache"))
    for earlier in (ROOT / "build").glob("temp.*") if with_build else ():
        shutil.copytree(earlier, folder / "build" / earlier.name)
    return folder


def _earlier_caches(build: Path) -> list[Path]:
    return list(build.glob("temp.*/engine.cext._core/CMakeCache.txt"))


def _wheel(source: Path, wheels: Path, attempt: int):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(wheels), str(source)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip("the build requirements cannot be fetched (offline)")
    assert done.returncode == 0, f"build {attempt}:\n{done.stdout}\n{done.stderr}"
    assert list(wheels.glob("photometry_engine-*.whl"))


@pytest.mark.slow
def test_pip_builds_again_from_a_checkout_built_before(tmp_path):
    # A checkout that pip built before (CI's `pip install .`) holds the stale cache already:
    # one more build is the test. Otherwise build twice.
    built_before = bool(_earlier_caches(ROOT / "build"))
    source = _checkout(tmp_path / "source", with_build=built_before)
    if not built_before:
        _wheel(source, tmp_path / "wheels1", 1)
    stale = {cache: cache.read_text(errors="replace") for cache in _earlier_caches(source / "build")}
    assert stale  # the build about to run meets an earlier one's cache
    _wheel(source, tmp_path / "wheels2", 2)
    assert any(cache.read_text(errors="replace") != text for cache, text in stale.items())

"""The one build works again from the same checkout: pip's build environment (its ninja, cmake
and pybind11) is deleted after each build, and the CMake cache it leaves in build/ must not stop
the next one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout(folder: Path) -> Path:
    """The project's sources without build products or environments."""
    shutil.copytree(ROOT, folder, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", "*.so", ".venv*", ".git", ".pytest_cache"))
    return folder


@pytest.mark.slow
def test_pip_builds_twice_from_one_checkout(tmp_path):
    source = _checkout(tmp_path / "source")
    for attempt in (1, 2):
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                               "-w", str(tmp_path / f"wheels{attempt}"), str(source)],
                              capture_output=True, text=True, timeout=900)
        if attempt == 1 and done.returncode != 0 and "No matching distribution" in done.stderr:
            pytest.skip("the build requirements cannot be fetched (offline)")
        assert done.returncode == 0, f"build {attempt}:\n{done.stdout}\n{done.stderr}"
        assert list((tmp_path / f"wheels{attempt}").glob("photometry_engine-*.whl"))
    assert (source / "build").is_dir()  # the second build did meet the first one's cache

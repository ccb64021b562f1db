"""Build glue: setuptools hands the compiled core to CMake (CMakeLists.txt is the one build).

`pip install .` and `pip install -e .` both come through here: CMake configures and builds the
pybind11 module engine.cext._core straight into the place setuptools expects it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def clear_stale_cache(build_dir: Path, tools: dict[str, str]) -> bool:
    """Forget a CMake configuration made with other tools than this build's `tools` (cache
    variable -> path). pip builds in a temporary environment (its own ninja and pybind11) that
    it deletes afterwards, so the next `pip install .` would find build/ pointing at programs
    that are gone, and CMake would refuse to build. Returns whether the cache was cleared."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return False
    cached = {}
    for line in cache.read_text(errors="replace").splitlines():
        name, equals, value = line.partition("=")
        if equals and not line.startswith(("#", "//")):
            cached[name.partition(":")[0]] = value
    if all(cached.get(name, path) == path for name, path in tools.items()):
        return False
    cache.unlink()
    shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
    return True


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        target_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        tools = {"pybind11_DIR": pybind11.get_cmake_dir()}
        ninja = shutil.which("ninja")
        if ninja:
            tools["CMAKE_MAKE_PROGRAM"] = ninja
        cmake = shutil.which("cmake")
        clear_stale_cache(build_dir, {**tools, **({"CMAKE_COMMAND": cmake} if cmake else {})})
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-G", "Ninja",
            *(f"-D{name}={path}" for name, path in tools.items()),
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={target_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DENGINE_PYTHON=ON",
            "-DENGINE_TESTS=OFF",
        ]
        subprocess.run(configure, check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    # bench/ stays a top-level folder of the checkout (`python -m bench.night` there) and is
    # installed inside the engine's namespace as engine.bench, never as a top-level `bench`.
    packages=find_namespace_packages(include=["engine", "engine.*"]) + ["engine.bench"],
    package_dir={"engine.bench": "bench"},
    ext_modules=[CMakeExtension("engine.cext._core")],
    cmdclass={"build_ext": CMakeBuild},
)

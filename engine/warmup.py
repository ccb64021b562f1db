"""Compile the engine's Numba kernels once, into Numba's on-disk cache, before a user's first run.

Numba compiles a kernel the first time it is called with new argument types and keeps the
machine code on disk (`engine.kernels._jit` sets cache=True): in `__pycache__` beside each
kernel's source (the installed package's folder), or under NUMBA_CACHE_DIR when that is set. A
fresh install therefore spends its first `reduce` compiling (14 s on a quiet 2-core machine,
over a minute on a busy one). Run

    python -m engine.warmup

once after installing (a post-install step of an image or an environment), as the user who
will run the engine, with the same NUMBA_CACHE_DIR: the first real reduction then finds every
kernel it calls compiled. The cache is tied to the source files' timestamps, the Numba version
and the CPU, so the step runs where the engine will run; a later upgrade runs it again.

It runs the demo on the simulator's `tiny` night (three cameras of different dtypes and
layouts, a transit fit) in a temporary folder, which it removes.

Where nothing ran it (a plain `pip install`), the demo itself starts this module in a second
process while it simulates (`start_warmup`): the compilation then overlaps the simulation
instead of following it, and the demo's reduction finds the kernels cached.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["kernel_cache_is_warm", "start_warmup", "warm_kernel_cache"]


def warm_kernel_cache() -> float:
    """Reduce the simulator's tiny night once so that every kernel it calls is compiled and
    cached; returns the seconds it took."""
    from engine.demo import run_demo
    from engine.progress import quiet

    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="engine-warmup-"))
    try:
        with quiet():
            run_demo(folder, preset="tiny", echo=lambda *args: None, warm_kernels=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - started


def kernel_cache_is_warm() -> bool:
    """Whether Numba's on-disk cache holds, for the current sources, the calibration kernel
    (the reduction's longest compilation, a stand-in for the rest).

    Numba has no public query for this; its cache index is read through its private API, and
    a Numba that changed it reads as a cold cache (a warm-up too many, never one too few).
    """
    from engine.kernels.calibrate import _calibrate_cube

    try:
        return bool(_calibrate_cube._cache._cache_file._load_index())
    except (AttributeError, OSError, ValueError):
        return False


def start_warmup() -> subprocess.Popen:
    """`python -m engine.warmup` in a second process (same interpreter, environment and
    NUMBA_CACHE_DIR), quiet; the caller waits for it before the kernels are needed."""
    return subprocess.Popen([sys.executable, "-m", "engine.warmup"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    seconds = warm_kernel_cache()
    print(f"engine kernels compiled and cached in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

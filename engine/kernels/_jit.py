"""The one place that creates Numba kernels.

Every kernel in engine.kernels is made by `jit` so that caching, the error model and fastmath
flags are the same everywhere. The fastmath set leaves out `nnan` and `ninf`: kernels test for
NaN (masked pixels, failed fits) and those tests must keep working.

A kernel made by `jit` without a signature is also a CUDA device function: a numba.cuda kernel
may call it, and numba compiles the same Python function for the device (fast-math there when it
is on here). That is how one scalar core serves both targets (engine.kernels.sigma_clip).
"""

from __future__ import annotations

import numba

from engine.errors import EngineValueError

# Everything LLVM's `fast` implies except nnan / ninf.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def jit(signature=None, *, parallel: bool = False, fastmath: bool = True, cache: bool = True):
    """Decorator for engine kernels: ``@jit`` or ``@jit("f8(f8)", parallel=True)``.

    Kernels are compiled nopython, release the GIL, cache to disk, and use NumPy's error model
    (division by zero gives inf/nan rather than raising inside a loop).
    """
    options = dict(
        nogil=True,
        cache=cache,
        error_model="numpy",
        fastmath=set(FASTMATH) if fastmath else False,
        parallel=parallel,
    )
    if callable(signature):  # used bare: @jit
        return numba.njit(**options)(signature)
    if signature is None:
        return numba.njit(**options)
    return numba.njit(signature, **options)


def set_threads(threads: int | None) -> int:
    """Set the Numba thread count for parallel kernels launched from this thread.

    Array drivers take `threads` as an argument and call this; None means every core Numba has.
    Returns the count in force.
    """
    if threads is None:
        threads = numba.config.NUMBA_NUM_THREADS
    threads = int(threads)
    if threads < 1:
        raise EngineValueError(f"threads must be >= 1, got {threads}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    return threads

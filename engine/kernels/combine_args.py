"""The arguments of `sigma_clip_combine`, validated and coerced for the kernels.

`prepare` checks what a caller of engine.kernels.combine.sigma_clip_combine (or of the CUDA
driver, engine.kernels.combine_cuda) can get wrong and returns a `CombineJob`: the stack as a
native-order C-contiguous (n, ny, nx) cube, the clipping settings and the outputs as (ny, nx).
Bad arguments raise EngineValueError saying which and why.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.errors import EngineValueError

__all__ = ["STACK_DTYPES", "CombineJob", "prepare"]

#: Stack pixel types the kernels read.
STACK_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.int32, np.uint32,
                                           np.float32, np.float64))
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class CombineJob(NamedTuple):
    """A validated combine: the stack as (n, ny, nx) and the outputs as (ny, nx)."""

    stack: np.ndarray        # C-contiguous, native byte order
    method: str
    cenfunc: str
    stdfunc: str
    sigma_lower: float
    sigma_upper: float
    iterations: int          # -1: until stable
    result: np.ndarray       # what the caller gets back (shape stack.shape[1:])
    out: np.ndarray          # result as (ny, nx)
    kept: np.ndarray | None  # the counts the caller gets back
    counts: np.ndarray       # kept as (ny, nx), or a (1, nx) placeholder


def prepare(stack, *, method, sigma, sigma_lower, sigma_upper, maxiters, cenfunc, stdfunc,
            out, counts, dtype) -> CombineJob:
    """Validate and coerce the arguments of `sigma_clip_combine` (CPU and CUDA drivers)."""
    stack3 = _stack_cube(stack)
    if method not in ("mean", "median"):
        raise EngineValueError(f"method must be 'mean' or 'median', got {method!r}")
    if cenfunc not in ("mean", "median"):
        raise EngineValueError(f"cenfunc must be 'median' or 'mean', got {cenfunc!r}")
    if stdfunc not in ("std", "mad_std"):
        raise EngineValueError(f"stdfunc must be 'std' or 'mad_std', got {stdfunc!r}")
    sigma = _sigma("sigma", sigma)
    sigma_lower = sigma if sigma_lower is None else _sigma("sigma_lower", sigma_lower)
    sigma_upper = sigma if sigma_upper is None else _sigma("sigma_upper", sigma_upper)
    iterations = _iterations(maxiters)
    shape = np.shape(stack)[1:]
    result = _result(out, dtype, shape, stack3)
    kept = _counts(counts, shape)
    _, ny, nx = stack3.shape
    out2 = result.reshape(ny, nx)
    counts2 = kept.reshape(ny, nx) if kept is not None else np.zeros((1, nx), np.int32)
    return CombineJob(stack3, method, cenfunc, stdfunc, sigma_lower, sigma_upper, iterations,
                      result, out2, kept, counts2)


def _stack_cube(stack) -> np.ndarray:
    """The stack as a native-order C-contiguous (n, ny, nx) cube ((n, m) becomes (n, 1, m))."""
    stack = np.asarray(stack)
    if stack.ndim not in (2, 3) or 0 in stack.shape:
        raise EngineValueError(f"stack must be (n, ny, nx) or (n, m) with n >= 1, got shape "
                               f"{stack.shape}")
    if stack.dtype.newbyteorder("=") not in STACK_DTYPES:
        raise EngineValueError(f"stack of dtype {stack.dtype} is not supported "
                               f"({', '.join(str(d) for d in STACK_DTYPES)})")
    stack3 = stack[:, None, :] if stack.ndim == 2 else stack
    return np.ascontiguousarray(stack3, dtype=stack3.dtype.newbyteorder("="))


def _iterations(maxiters) -> int:
    """maxiters as the kernels take it: an integer >= 1, or -1 for until stable (None, inf)."""
    if maxiters is None or maxiters == np.inf:
        return -1
    if isinstance(maxiters, bool) or int(maxiters) != maxiters or maxiters < 1:
        raise EngineValueError(f"maxiters must be an integer >= 1 or None, got {maxiters!r}")
    return int(maxiters)


def _result(out, dtype, shape: tuple, stack3: np.ndarray) -> np.ndarray:
    """The caller's `out`, checked, or a new array of `dtype` (float64 for a float64 stack and
    float32 otherwise by default)."""
    if out is None:
        out_dtype = np.dtype(dtype) if dtype is not None else (
            np.dtype(np.float64) if stack3.dtype == np.float64 else np.dtype(np.float32))
        if out_dtype not in _OUT_DTYPES:
            raise EngineValueError(f"dtype must be float32 or float64, got {out_dtype}")
        return np.empty(shape, out_dtype)
    if (not isinstance(out, np.ndarray) or out.shape != shape
            or out.dtype not in _OUT_DTYPES or not out.flags.c_contiguous
            or not out.flags.writeable):
        raise EngineValueError(f"out must be a writeable C-contiguous float32/float64 array "
                               f"of shape {shape}")
    if np.may_share_memory(out, stack3):
        raise EngineValueError("out shares memory with the stack (inputs are never modified)")
    return out


def _counts(counts, shape: tuple) -> np.ndarray | None:
    """The kept-value counts to fill: new (True), none (False / None), or the caller's array."""
    if counts is True:
        return np.empty(shape, np.int32)
    if counts is False or counts is None:
        return None
    if (not isinstance(counts, np.ndarray) or counts.shape != shape or counts.dtype != np.int32
            or not counts.flags.c_contiguous or not counts.flags.writeable):
        raise EngineValueError(f"counts must be a writeable C-contiguous int32 array of "
                               f"shape {shape}")
    return counts


def _sigma(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise EngineValueError(f"{name} must be a number, got {value!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise EngineValueError(f"{name} must be finite and > 0, got {value!r}")
    return value

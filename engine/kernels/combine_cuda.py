"""Sigma-clipped combine on an NVIDIA GPU (numba.cuda): the numbers of engine.kernels.combine.

What it promises: `sigma_clip_combine_cuda` takes the arguments of `sigma_clip_combine` (it runs
the same validation) and returns the same Combined(data, counts): astropy's sigma_clip along axis
0, as the combine module's docstring states it, then the mean or median of the kept values. One
GPU thread per pixel runs the exact path's sigma-clipping core (engine.kernels.sigma_clip, the
same Python function numba compiles for the CPU) in float64 on the device; the device may fuse
multiply-adds, so results equal the CPU kernels to rounding (~1e-12), not bit for bit. Inputs are copied to the device and results back.

Limits: at most 128 frames per stack (each thread keeps a pixel's values in local memory).

Import this module only where a GPU is wanted: the CPU path never imports numba.cuda. Tested under
the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba.cuda is first imported) on small
stacks. Kernels keep no state; concurrent calls on separate outputs are safe.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from engine.errors import EngineValueError
from engine.kernels.combine import Combined
from engine.kernels.combine_args import prepare
from engine.kernels.sigma_clip import clipped_bounds, wirth_median

__all__ = ["MAX_FRAMES", "sigma_clip_combine_cuda"]

#: The most frames a stack may have on the GPU.
MAX_FRAMES = 128
_THREADS_PER_BLOCK = 128


@cuda.jit
def _combine_pixels(stack, use_median, use_mad_std, maxiters, sigma_lower, sigma_upper,
                    median_output, out, counts, want_counts):
    """One thread per pixel of out (ny, nx): clip stack[:, y, x] and combine what is kept."""
    i = cuda.grid(1)
    n, ny, nx = stack.shape
    if i >= ny * nx:
        return
    y = i // nx
    x = i - y * nx
    data = cuda.local.array(MAX_FRAMES, float64)
    scratch = cuda.local.array(MAX_FRAMES, float64)
    count = 0
    for k in range(n):
        v = float64(stack[k, y, x])
        if math.isfinite(v):
            data[count] = v
            count += 1
    lower = math.nan
    upper = math.nan
    if count > 0:
        # The CPU's core, compiled for the device by numba (see engine.kernels.sigma_clip).
        lower, upper = clipped_bounds(data, count, use_median, use_mad_std, maxiters,
                                      sigma_lower, sigma_upper, scratch)
    # The result: every finite value inside the last bounds, in frame order.
    kept = 0
    total = 0.0
    for k in range(n):
        v = float64(stack[k, y, x])
        if v >= lower and v <= upper:
            scratch[kept] = v
            total += v
            kept += 1
    if kept == 0:
        value = math.nan
    elif median_output:
        value = wirth_median(scratch, kept)
    else:
        value = total / kept
    out[y, x] = value
    if want_counts:
        counts[y, x] = kept


def sigma_clip_combine_cuda(stack, *, method: str = "mean", sigma: float = 3.0,
                            sigma_lower: float | None = None, sigma_upper: float | None = None,
                            maxiters: int | None = 5, cenfunc: str = "median",
                            stdfunc: str = "std", out=None, counts=False,
                            dtype=None) -> Combined:
    """`engine.kernels.combine.sigma_clip_combine` on the GPU: same arguments (no thread count,
    no exact mode), same result to rounding. Raises EngineValueError as the CPU driver does, and
    for a stack of more than MAX_FRAMES frames."""
    job = prepare(stack, method=method, sigma=sigma, sigma_lower=sigma_lower,
                  sigma_upper=sigma_upper, maxiters=maxiters, cenfunc=cenfunc, stdfunc=stdfunc,
                  out=out, counts=counts, dtype=dtype)
    n, ny, nx = job.stack.shape
    if n > MAX_FRAMES:
        raise EngineValueError(f"the GPU combine takes at most {MAX_FRAMES} frames, got {n}")
    d_out = cuda.device_array(job.out.shape, job.out.dtype)
    d_counts = cuda.device_array(job.counts.shape, np.int32)
    pixels = ny * nx
    _combine_pixels[-(-pixels // _THREADS_PER_BLOCK), _THREADS_PER_BLOCK](
        cuda.to_device(job.stack), job.cenfunc == "median", job.stdfunc == "mad_std",
        job.iterations, job.sigma_lower, job.sigma_upper, job.method == "median", d_out,
        d_counts, job.kept is not None)
    d_out.copy_to_host(job.out)
    if job.kept is not None:
        d_counts.copy_to_host(job.counts)
    return Combined(job.result, job.kept)

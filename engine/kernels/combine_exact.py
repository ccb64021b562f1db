"""The exact path of the sigma-clipped combine: astropy's sigma_clip pixel by pixel.

`combine_exact` runs engine.kernels.sigma_clip's core (a port of astropy's C code: the same Wirth
selection, which reorders the values it sums, the same sums in the same order, no fast-math) on
every pixel of a stack, so clipping bounds, and so the kept values, are bit-for-bit astropy's; the
mean then sums the kept values in frame order, as `numpy.ma.mean` does. Several times slower than
the tiled fast path of engine.kernels.combine, whose driver `sigma_clip_combine(exact=True)` calls
it after validating the arguments; the kernel trusts them.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from engine.kernels._jit import jit
from engine.kernels.sigma_clip import clipped_bounds

__all__ = ["combine_exact"]


@jit(parallel=True, fastmath=False)
def combine_exact(stack, use_median, use_mad_std, maxiters, sigma_lower, sigma_upper,
                  median_output, out, counts, want_counts):
    """Sigma-clipped combine of stack (n, ny, nx) into out (ny, nx) (and counts, when
    want_counts), pixel by pixel, rows over threads. maxiters -1 means no limit."""
    n, ny, nx = stack.shape
    for y in prange(ny):
        data = np.empty(n)
        mad = np.empty(n)
        kept = np.empty(n)
        for x in range(nx):
            count = 0
            for k in range(n):
                v = np.float64(stack[k, y, x])
                if np.isfinite(v):
                    data[count] = v
                    count += 1
            c = 0
            total = 0.0
            if count > 0:
                lower, upper = clipped_bounds(data, count, use_median, use_mad_std, maxiters,
                                              sigma_lower, sigma_upper, mad)
                for k in range(n):
                    v = np.float64(stack[k, y, x])
                    if v >= lower and v <= upper:  # False for NaN and for +-inf
                        kept[c] = v
                        total += v
                        c += 1
            if c == 0:
                value = np.nan
            elif median_output:
                values = kept[:c]
                values.sort()
                half = c // 2
                value = values[half] if c % 2 == 1 else (values[half - 1] + values[half]) / 2
            else:
                value = total / c
            out[y, x] = value
            if want_counts:
                counts[y, x] = c

"""The engine's one sigma-clipping rule, as a scalar core compiled for the CPU and the GPU.

The rule is astropy's `sigma_clip` as its C code runs it (astropy/stats/src/compute_bounds.c),
with the same defaults (sigma 3, maxiters 5, cenfunc 'median', stdfunc 'std'):

    kept = the finite values
    repeat (at most maxiters times; maxiters -1: until stable):
        center = median (or mean) of kept;  std = standard deviation of kept (ddof 0, about the
        mean), or MAD_SCALE * median |kept - median| for 'mad_std'
        lower, upper = center - sigma_lower * std, center + sigma_upper * std
        new = the kept values inside [lower, upper] (inclusive)
        stop when new has as many values as kept, or none; else kept = new
    the values kept are those inside the last [lower, upper]

`clip_in_place` is that rule on one set of values; `clipped_bounds` gives its bounds and
`clipped_median_std` the statistics of what it keeps (sigma_clipped_stats). The core is compiled
without fast-math so that every operation rounds as astropy's C does, and without a signature,
so that numba.cuda kernels can call it too: numba compiles the same Python function (and what it calls) for the device.
Users: the exact path of engine.kernels.combine (CPU) and engine.kernels.combine_cuda (GPU), and
the GPU annulus background (engine.kernels.photometry_cuda). The C++ annulus background
(engine/cext, SigmaClipper in aperture.hpp) follows the same rule with cenfunc 'median', stdfunc
'std' and one sigma; tests hold it equal to this core.
"""

from __future__ import annotations

import math

from engine.kernels._jit import jit

__all__ = ["MAD_SCALE", "clip_in_place", "clipped_bounds", "clipped_median_std", "kth_smallest",
           "wirth_median"]

MAD_SCALE = 1.482602218505602  # 1 / Phi^-1(3/4), as astropy's C code writes it


@jit(fastmath=False)
def kth_smallest(a, n, k):
    """Wirth's selection of the k-th smallest of a[:n]; reorders a[:n] exactly as astropy's C."""
    lo = 0
    hi = n - 1
    while lo < hi:
        x = a[k]
        i = lo
        j = hi
        while True:
            while a[i] < x:
                i += 1
            while x < a[j]:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
            if i > j:
                break
        if j < k:
            lo = i
        if k < i:
            hi = j
    return a[k]


@jit(fastmath=False)
def wirth_median(a, n):
    """Median of a[:n] (n >= 1) by Wirth's selection; reorders a[:n]."""
    if n % 2 == 0:
        return 0.5 * (kth_smallest(a, n, n // 2) + kth_smallest(a, n, n // 2 - 1))
    return kth_smallest(a, n, (n - 1) // 2)


@jit(fastmath=False)
def clip_in_place(data, count, use_median, use_mad_std, maxiters, sigma_lower, sigma_upper,
                  scratch):
    """The rule above on data[:count]: (lower, upper, kept), the last clipping bounds and how
    many values lie inside them, packed into data[:kept] (0 when none).

    data[:count] holds finite values (count >= 1); it is reordered and packed in place.
    scratch: at least `count` float64 values of working space (used for 'mad_std').
    maxiters -1 means no limit.
    """
    median = 0.0
    mean = 0.0
    iteration = 0
    while True:
        if use_median or use_mad_std:
            median = wirth_median(data, count)
        if not use_median or not use_mad_std:
            mean = 0.0
            for i in range(count):
                mean += data[i]
            mean /= count
        center = median if use_median else mean
        if use_mad_std:
            for i in range(count):
                scratch[i] = abs(data[i] - median)
            std = wirth_median(scratch, count) * MAD_SCALE
        else:
            std = 0.0
            for i in range(count):
                std += (data[i] - mean) * (data[i] - mean)
            std = math.sqrt(std / count)
        lower = center - sigma_lower * std
        upper = center + sigma_upper * std
        new_count = 0
        for i in range(count):
            if data[i] >= lower and data[i] <= upper:
                data[new_count] = data[i]
                new_count += 1
        if new_count == count or new_count == 0:
            return lower, upper, new_count
        count = new_count
        iteration += 1
        if maxiters != -1 and iteration >= maxiters:
            return lower, upper, count


@jit(fastmath=False)
def clipped_bounds(data, count, use_median, use_mad_std, maxiters, sigma_lower, sigma_upper,
                   scratch):
    """The last clipping bounds (lower, upper) of data[:count]; see `clip_in_place`."""
    lower, upper, _ = clip_in_place(data, count, use_median, use_mad_std, maxiters, sigma_lower,
                                    sigma_upper, scratch)
    return lower, upper


@jit(fastmath=False)
def clipped_median_std(data, count, sigma, iterations):
    """astropy's sigma_clipped_stats(cenfunc='median', stdfunc='std', maxiters=iterations) of
    data[:count] (finite values; reordered): (median, std with ddof 0, how many kept), NaNs and 0
    when none is kept. iterations 0 clips nothing, as the C++ SigmaClipper (the annulus
    background) does. `data` doubles as the (unused) scratch of 'mad_std'."""
    kept = count
    if count > 0 and iterations > 0:
        kept = clip_in_place(data, count, True, False, iterations, sigma, sigma, data)[2]
    if kept == 0:
        return math.nan, math.nan, 0
    median = wirth_median(data, kept)
    mean = 0.0
    for i in range(kept):
        mean += data[i]
    mean /= kept
    spread = 0.0
    for i in range(kept):
        spread += (data[i] - mean) * (data[i] - mean)
    return median, math.sqrt(spread / kept), kept

"""Sigma-clipped combine of a stack of frames along its first axis (masters from many frames).

What it promises. For every pixel, the values of the stack at that pixel go through astropy's
`sigma_clip` as its fast C path runs it (astropy.stats, `axis=0`, string cenfunc / stdfunc), with
the same defaults: sigma 3 (lower and upper), maxiters 5, cenfunc 'median', stdfunc 'std':

    kept = the finite values
    repeat (at most maxiters times):
        center = median (or mean) of kept;  std = standard deviation of kept (ddof 0, about the
        mean), or 1.482602218505602 * median |kept - median| for 'mad_std'
        lower, upper = center - sigma_lower * std, center + sigma_upper * std
        new = the kept values inside [lower, upper]
        stop when new has as many values as kept, or none; else kept = new
    the result combines every finite value inside the last [lower, upper] (as astropy's mask does:
    it is recomputed from the last bounds over all the values), by mean or median

A pixel with no finite value gives NaN (count 0), as does one whose last bounds keep nothing.

Two implementations:
- the default, fast one, loads a row of the stack frame by frame (long contiguous reads) and
  works it in tiles of pixels side by side so that every step vectorises. When a median is
  needed the tile's values are sorted once with a sorting network (Batcher's odd-even merge
  sort, min/max across the tile), after which every kept set is a contiguous run of the sorted
  values and a median is one look-up. Means and standard deviations come from sums of
  d = value - (the pixel's frame-0 value) and d**2, so they do not cancel; each iteration is one
  pass over the tile. One iteration about the mean (ccdproc.combine's clipping) is a single
  pass over the row. Results equal astropy's to rounding (~1e-15 relative in float64); a value
  within rounding of a clipping bound could in principle fall the other way.
- `exact=True` runs engine.kernels.combine_exact: the engine's one sigma-clipping core
  (engine.kernels.sigma_clip, a port of astropy's C code) pixel by pixel: clipping bounds, and so
  the kept values, are bit-for-bit astropy's. It is several times slower.

Values are combined in float64 whatever the stack's type; a float32 or integer stack is sorted
in float32 (exact for those values), a float64 stack in float64. Work is split over blocks of rows
(`prange`); the thread count is an argument. Kernels keep no state: concurrent calls on separate
outputs are safe. The driver `sigma_clip_combine` validates and coerces; the kernels trust it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from engine.kernels._jit import jit, set_threads
from engine.kernels.combine_args import STACK_DTYPES, prepare
from engine.kernels.combine_exact import combine_exact
from engine.kernels.sigma_clip import MAD_SCALE

__all__ = ["Combined", "STACK_DTYPES", "sigma_clip_combine", "sorting_network"]

_TILE = 128  # pixels side by side: a tile of 30 frames in float32 is 15 KB and stays in L1
_LARGEST = np.finfo(np.float64).max
_STATE = 17  # per-pixel state arrays of a tile (see _combine_tile)
_VALUES_PER_THREAD = 1 << 22  # stacks smaller than two of these are combined on one thread


class Combined(NamedTuple):
    """What `sigma_clip_combine` returns: the combined frame, and how many values each pixel
    kept (int32; None when not asked for)."""

    data: np.ndarray
    counts: np.ndarray | None


def sorting_network(n: int) -> np.ndarray:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for n inputs, as an (m, 2)
    int64 array: applying `a[i], a[j] = min, max` for each in order sorts any n values.

    Built for the next power of two; comparators reaching past n are dropped, which is exact
    because padding values of +inf would never move.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# Fast path. A row of the stack is loaded once, frame by frame (long contiguous reads), into
# buf[k, x] in the sort dtype, non-finite values stored as +inf (which sorts last and is never
# inside a finite bound). The row is then worked in tiles of _TILE pixels side by side, with
# per-pixel state in small float64 arrays indexed by t (pixel x0 + t), so every loop over t is a
# plain vector loop. Counts are kept as float64 for the same reason (exact far beyond n).
# ---------------------------------------------------------------------------------------------


@jit
def _load_row(stack, y, all_finite, buf, ref, valid, total, squares):
    """buf[k, :] = stack[k, y, :] (non-finite values as +inf), and per pixel: ref, the value of
    frame 0 (0 if not finite); valid, how many values are finite; total and squares, the sums of
    d and d**2 over them, with d = value - ref. all_finite: the stack's type has no NaN or inf
    (integers), so nothing needs checking."""
    kind = buf.dtype.type
    inf = kind(np.inf)
    n = stack.shape[0]
    nx = buf.shape[1]
    first = stack[0, y]
    for x in range(nx):
        v = np.float64(first[x])
        ref[x] = v if np.isfinite(v) else 0.0
        valid[x] = n if all_finite else 0.0
        total[x] = 0.0
        squares[x] = 0.0
    if all_finite:
        # Four frames per pass over the accumulators: a quarter of the load/store traffic on
        # them, which otherwise outweighs the arithmetic.
        k = 0
        while k + 4 <= n:
            row0, row1, row2, row3 = stack[k, y], stack[k + 1, y], stack[k + 2, y], stack[k + 3, y]
            line0, line1, line2, line3 = buf[k], buf[k + 1], buf[k + 2], buf[k + 3]
            for x in range(nx):
                v0 = np.float64(row0[x])
                v1 = np.float64(row1[x])
                v2 = np.float64(row2[x])
                v3 = np.float64(row3[x])
                line0[x] = kind(v0)
                line1[x] = kind(v1)
                line2[x] = kind(v2)
                line3[x] = kind(v3)
                r = ref[x]
                d0 = v0 - r
                d1 = v1 - r
                d2 = v2 - r
                d3 = v3 - r
                total[x] += (d0 + d1) + (d2 + d3)
                squares[x] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            k += 4
        while k < n:
            row = stack[k, y]
            line = buf[k]
            for x in range(nx):
                v = np.float64(row[x])
                line[x] = kind(v)
                d = v - ref[x]
                total[x] += d
                squares[x] += d * d
            k += 1
        return
    for k in range(n):
        row = stack[k, y]
        line = buf[k]
        for x in range(nx):
            v = np.float64(row[x])
            ok = np.isfinite(v)
            line[x] = kind(v) if ok else inf
            d = v - ref[x] if ok else 0.0
            valid[x] += 1.0 if ok else 0.0
            total[x] += d
            squares[x] += d * d


@jit
def _sort_tile(buf, pairs, x0, width):
    """Sort buf[:, x0:x0+width] along axis 0 with the comparator network `pairs`."""
    for c in range(pairs.shape[0]):
        lo_line = buf[pairs[c, 0], x0:x0 + width]
        hi_line = buf[pairs[c, 1], x0:x0 + width]
        for t in range(width):
            a = lo_line[t]
            b = hi_line[t]
            lo_line[t] = min(a, b)
            hi_line[t] = max(a, b)


@jit
def _run_median(buf, x, start, count):
    """Median of the sorted run buf[start:start+count, x] (count >= 1)."""
    start = np.int64(start)
    count = np.int64(count)
    half = count // 2
    if count % 2 == 1:
        return np.float64(buf[start + half, x])
    return 0.5 * (np.float64(buf[start + half, x]) + np.float64(buf[start + half - 1, x]))


@jit
def _run_mad(buf, x, start, count, median, scratch):
    """Median absolute deviation from `median` of the sorted run buf[start:start+count, x]."""
    start = np.int64(start)
    count = np.int64(count)
    for i in range(count):
        scratch[i] = abs(np.float64(buf[start + i, x]) - median)
    values = scratch[:count]
    values.sort()
    half = count // 2
    if count % 2 == 1:
        return values[half]
    return 0.5 * (values[half] + values[half - 1])


@jit
def _sums_inside(buf, x0, width, ref, low, high, total, count, below, with_below):
    """Per pixel, over the values inside [low, high]: the sum of value - ref, the count, and
    (with_below) how many values lie under low."""
    n = buf.shape[0]
    k = 0
    while k + 4 <= n:  # four frames per pass over the accumulators
        line0 = buf[k, x0:x0 + width]
        line1 = buf[k + 1, x0:x0 + width]
        line2 = buf[k + 2, x0:x0 + width]
        line3 = buf[k + 3, x0:x0 + width]
        for t in range(width):
            lo = low[t]
            hi = high[t]
            r = ref[t]
            v0 = np.float64(line0[t])
            v1 = np.float64(line1[t])
            v2 = np.float64(line2[t])
            v3 = np.float64(line3[t])
            in0 = (v0 >= lo) & (v0 <= hi)
            in1 = (v1 >= lo) & (v1 <= hi)
            in2 = (v2 >= lo) & (v2 <= hi)
            in3 = (v3 >= lo) & (v3 <= hi)
            total[t] += (((v0 - r) if in0 else 0.0) + ((v1 - r) if in1 else 0.0)) + (
                ((v2 - r) if in2 else 0.0) + ((v3 - r) if in3 else 0.0))
            count[t] += ((1.0 if in0 else 0.0) + (1.0 if in1 else 0.0)) + (
                (1.0 if in2 else 0.0) + (1.0 if in3 else 0.0))
        k += 4
    while k < n:
        line = buf[k, x0:x0 + width]
        for t in range(width):
            v = np.float64(line[t])
            inside = (v >= low[t]) & (v <= high[t])
            total[t] += v - ref[t] if inside else 0.0
            count[t] += 1.0 if inside else 0.0
        k += 1
    if with_below:
        for k in range(n):
            line = buf[k, x0:x0 + width]
            for t in range(width):
                below[t] += 1.0 if np.float64(line[t]) < low[t] else 0.0


@jit
def _sums_next(buf, x0, width, ref, low, high, kept_low, kept_high, count_all, total, squares,
               count, below, with_below):
    """One pass against new bounds [low, high]: count_all, how many values they hold; and over
    the values also inside [kept_low, kept_high] (the next kept set): the sums of d and d**2
    (d = value - ref), the count and (with_below) how many values lie under the set."""
    for k in range(buf.shape[0]):
        line = buf[k, x0:x0 + width]
        for t in range(width):
            v = np.float64(line[t])
            inside = (v >= low[t]) & (v <= high[t])
            kept = inside & (v >= kept_low[t]) & (v <= kept_high[t])
            d = v - ref[t] if kept else 0.0
            count_all[t] += 1.0 if inside else 0.0
            total[t] += d
            squares[t] += d * d
            count[t] += 1.0 if kept else 0.0
        if with_below:
            for t in range(width):
                v = np.float64(line[t])
                below[t] += 1.0 if (v < low[t]) | (v < kept_low[t]) else 0.0


@jit
def _start_tile(x0, width, row_ref, valid, row_total, row_squares, state, out_row):
    """Load the per-pixel state of a tile from its row's sums; NaN out pixels with no finite
    value. Returns how many pixels are active (have values to clip)."""
    (ref, kept_low, kept_high, total, squares, count, below, low, high, _, _, _, _, _, active,
     result_count, _) = state
    n_active = 0.0
    for t in range(width):
        ref[t] = row_ref[x0 + t]
        total[t] = row_total[x0 + t]
        squares[t] = row_squares[x0 + t]
    for t in range(width):
        count[t] = valid[x0 + t]
        kept_low[t] = -np.inf
        kept_high[t] = _LARGEST
    for t in range(width):
        below[t] = 0.0
        low[t] = np.nan
        high[t] = np.nan
    for t in range(width):
        on = 1.0 if count[t] > 0 else 0.0
        active[t] = on
        n_active += on
        result_count[t] = 0.0
    for t in range(width):
        out_row[x0 + t] = out_row[x0 + t] if count[t] > 0 else np.nan
    return n_active


@jit
def _tile_bounds(buf, x0, width, use_median, use_mad_std, sigma_lower, sigma_upper, state,
                 scratch):
    """[low, high] of every active pixel from its kept set (computed for all, kept for the
    active, so the mean / std loop vectorises; medians and MADs are per pixel)."""
    (ref, _, _, total, squares, count, below, low, high, _, _, _, _, _, active, _, _) = state
    for t in range(width):
        c = count[t]
        mean_d = total[t] / c
        std = np.sqrt(max(squares[t] / c - mean_d * mean_d, 0.0))
        cen = ref[t] + mean_d
        on = active[t] != 0.0
        low[t] = cen - sigma_lower * std if on else low[t]
        high[t] = cen + sigma_upper * std if on else high[t]
    if use_median or use_mad_std:
        for t in range(width):
            if active[t] == 0.0:
                continue
            c = count[t]
            mean_d = total[t] / c
            std = np.sqrt(max(squares[t] / c - mean_d * mean_d, 0.0))
            median = _run_median(buf, x0 + t, below[t], c)
            if use_mad_std:
                std = _run_mad(buf, x0 + t, below[t], c, median, scratch) * MAD_SCALE
            cen = median if use_median else ref[t] + mean_d
            low[t] = cen - sigma_lower * std
            high[t] = cen + sigma_upper * std


@jit
def _tile_pass(buf, x0, width, last, sorted_values, state):
    """Sum the values against the new bounds: the next kept set (or, on the last iteration,
    everything inside the bounds) into the *_next state, and count_all, all values inside."""
    (ref, kept_low, kept_high, _, _, _, _, low, high, count_all, total_next, squares_next,
     count_next, below_next, _, _, _) = state
    for t in range(width):
        count_all[t] = 0.0
        total_next[t] = 0.0
        squares_next[t] = 0.0
        count_next[t] = 0.0
        below_next[t] = 0.0
    if last:
        # Sums over every value inside the bounds: the result of every pixel still active.
        _sums_inside(buf, x0, width, ref, low, high, total_next, count_next, below_next,
                     sorted_values)
        for t in range(width):
            count_all[t] = count_next[t]
    else:
        _sums_next(buf, x0, width, ref, low, high, kept_low, kept_high, count_all,
                   total_next, squares_next, count_next, below_next, sorted_values)


@jit
def _advance_tile(width, last, state):
    """Mark the pixels that stop here (kept set unchanged or empty, or the last iteration);
    the others take the next kept set. Returns (pixels still active, stopped pixels whose last
    bounds hold values clipped earlier)."""
    (_, kept_low, kept_high, total, squares, count, below, low, high, count_all, total_next,
     squares_next, count_next, below_next, active, _, finished) = state
    always = 1.0 if last else 0.0
    n_active = 0.0
    n_redo = 0.0
    for t in range(width):
        on = active[t]
        same = 1.0 if (count_next[t] == count[t]) | (count_next[t] == 0.0) else 0.0
        finished[t] = on * max(always, same)
    for t in range(width):
        go = active[t] - finished[t]
        n_redo += finished[t] * (1.0 if count_all[t] != count_next[t] else 0.0)
        n_active += go
        active[t] = go
    for t in range(width):
        keep = active[t] != 0.0
        kept_low[t] = max(kept_low[t], low[t]) if keep else kept_low[t]
        kept_high[t] = min(kept_high[t], high[t]) if keep else kept_high[t]
    for t in range(width):
        keep = active[t] != 0.0
        total[t] = total_next[t] if keep else total[t]
        squares[t] = squares_next[t] if keep else squares[t]
    for t in range(width):
        keep = active[t] != 0.0
        count[t] = count_next[t] if keep else count[t]
        below[t] = below_next[t] if keep else below[t]
    return n_active, n_redo


@jit
def _finish_pixels(buf, x0, width, n_redo, sorted_values, median_output, state, out_row):
    """Write the results of the pixels that stopped: the mean (or median) of the values inside
    their last bounds, re-summed first where values clipped earlier fell back inside."""
    (ref, _, _, _, _, _, _, low, high, count_all, total_next, _, count_next, below_next, _,
     result_count, finished) = state
    if n_redo > 0.0:
        for t in range(width):
            redo = (finished[t] != 0.0) & (count_all[t] != count_next[t])
            total_next[t] = 0.0 if redo else total_next[t]
            count_next[t] = 0.0 if redo else count_next[t]
            below_next[t] = 0.0 if redo else below_next[t]
            low[t] = low[t] if redo else np.nan  # nothing is inside NaN bounds
        _sums_inside(buf, x0, width, ref, low, high, total_next, count_next, below_next,
                     sorted_values)
    for t in range(width):
        done = finished[t] != 0.0
        c = count_next[t]
        mean = ref[t] + total_next[t] / c if c > 0 else np.nan
        out_row[x0 + t] = mean if done else out_row[x0 + t]
        result_count[t] = c if done else result_count[t]
    if median_output:
        for t in range(width):
            if finished[t] != 0.0 and count_next[t] > 0:
                out_row[x0 + t] = _run_median(buf, x0 + t, below_next[t], count_next[t])


@jit
def _combine_tile(buf, x0, width, row_ref, valid, row_total, row_squares, sorted_values,
                  use_median, use_mad_std, maxiters, sigma_lower, sigma_upper, median_output,
                  state, scratch, out_row, counts_row, want_counts):
    """Clip and combine the pixels x0..x0+width of the loaded (and, if needed, sorted) row.

    state: _STATE float64 arrays of _TILE, the per-pixel state (separate allocations: views of
    one array would keep the compiler from vectorising the loops over them). Writes out_row
    (and counts_row).
    A pixel's kept set is its values inside [kept_low, kept_high]; when sorted it is the run of
    `count` values from index `below`. Its mean and standard deviation come from the sums of
    d = value - ref and d**2 (ref: the pixel's frame-0 value, so the sums do not cancel). Each
    iteration is one pass: against the new bounds it sums the next kept set and counts all the
    values inside. When the kept set stops changing, the result is the values inside the last
    bounds, which is the kept set unless a value clipped earlier falls back inside (then one more
    pass sums them); when maxiters is reached, that last pass is the only one.
    Flags and counts are float64 (1.0 / 0.0) and reductions are sums, so that every loop over
    the tile vectorises; only medians, MADs and re-sums are per pixel.
    """
    n_active = _start_tile(x0, width, row_ref, valid, row_total, row_squares, state, out_row)
    iteration = 0
    while n_active > 0.0:
        iteration += 1
        _tile_bounds(buf, x0, width, use_median, use_mad_std, sigma_lower, sigma_upper, state,
                     scratch)
        last = iteration >= maxiters
        _tile_pass(buf, x0, width, last, sorted_values, state)
        n_active, n_redo = _advance_tile(width, last, state)
        _finish_pixels(buf, x0, width, n_redo, sorted_values, median_output, state, out_row)
    if want_counts:
        result_count = state[15]
        for t in range(width):
            counts_row[x0 + t] = np.int32(result_count[t])


@jit
def _combine_row_once(buf, ref, valid, total, squares, sigma_lower, sigma_upper, low, high,
                      kept_total, kept_count, out_row, counts_row, want_counts):
    """One clipping iteration about the mean over a whole loaded row (no sorting needed): the
    bounds from every finite value, then the mean of the values inside them. The same numbers
    as `_combine_tile` with maxiters 1 and cenfunc 'mean', with less bookkeeping."""
    nx = buf.shape[1]
    for x in range(nx):
        c = valid[x]
        mean_d = total[x] / c
        std = np.sqrt(max(squares[x] / c - mean_d * mean_d, 0.0))
        low[x] = ref[x] + mean_d - sigma_lower * std
    for x in range(nx):
        c = valid[x]
        mean_d = total[x] / c
        std = np.sqrt(max(squares[x] / c - mean_d * mean_d, 0.0))
        high[x] = ref[x] + mean_d + sigma_upper * std
        kept_total[x] = 0.0
        kept_count[x] = 0.0
    _sums_inside(buf, 0, nx, ref, low, high, kept_total, kept_count, kept_count, False)
    for x in range(nx):
        c = kept_count[x]
        out_row[x] = ref[x] + kept_total[x] / c if c > 0 else np.nan
    if want_counts:
        for x in range(nx):
            counts_row[x] = np.int32(kept_count[x])


@jit(parallel=True)
def _combine_rows(stack, all_finite, buf_proto, pairs, sorted_values, use_median, use_mad_std,
                  maxiters, sigma_lower, sigma_upper, median_output, out, counts, want_counts,
                  nblocks):
    """Sigma-clipped combine of stack (n, ny, nx) into out (ny, nx), row by row in blocks.

    Inputs: stack C-contiguous, any STACK_DTYPES (all_finite: an integer type, nothing to
    check); buf_proto an empty array of the sort dtype; pairs the sorting network for n (used
    when sorted_values). maxiters >= 1.
    Outputs (allocated by the caller): out (ny, nx) float32/float64; counts (ny, nx) int32 when
    want_counts (else a (1, nx) placeholder, never written).
    """
    n, ny, nx = stack.shape
    per_block = (ny + nblocks - 1) // nblocks
    for block in prange(nblocks):
        buf = np.empty((n, nx), buf_proto.dtype)
        ref = np.empty(nx)
        valid = np.empty(nx)
        total = np.empty(nx)
        squares = np.empty(nx)
        state = (np.empty(_TILE), np.empty(_TILE), np.empty(_TILE), np.empty(_TILE),
                 np.empty(_TILE), np.empty(_TILE), np.empty(_TILE), np.empty(_TILE),
                 np.empty(_TILE), np.empty(_TILE), np.empty(_TILE), np.empty(_TILE),
                 np.empty(_TILE), np.empty(_TILE), np.empty(_TILE), np.empty(_TILE),
                 np.empty(_TILE))
        scratch = np.empty(n)
        once = not sorted_values and maxiters == 1
        low = np.empty(nx if once else 0)
        high = np.empty(nx if once else 0)
        kept_total = np.empty(nx if once else 0)
        kept_count = np.empty(nx if once else 0)
        for y in range(block * per_block, min(ny, (block + 1) * per_block)):
            _load_row(stack, y, all_finite, buf, ref, valid, total, squares)
            if once:
                _combine_row_once(buf, ref, valid, total, squares, sigma_lower, sigma_upper,
                                  low, high, kept_total, kept_count, out[y],
                                  counts[y if want_counts else 0], want_counts)
                continue
            for x0 in range(0, nx, _TILE):
                width = min(_TILE, nx - x0)
                if sorted_values:
                    _sort_tile(buf, pairs, x0, width)
                _combine_tile(buf, x0, width, ref, valid, total, squares, sorted_values,
                              use_median, use_mad_std, maxiters, sigma_lower, sigma_upper,
                              median_output, state, scratch, out[y],
                              counts[y if want_counts else 0], want_counts)


# ---------------------------------------------------------------------------------------------
# The array driver.
# ---------------------------------------------------------------------------------------------


def sigma_clip_combine(stack, *, method: str = "mean", sigma: float = 3.0,
                       sigma_lower: float | None = None, sigma_upper: float | None = None,
                       maxiters: int | None = 5, cenfunc: str = "median", stdfunc: str = "std",
                       exact: bool = False, out=None, counts=False, dtype=None,
                       threads: int | None = None) -> Combined:
    """Sigma-clip a stack along axis 0 and combine what is kept (see the module docstring).

    stack: (n, ny, nx) or (n, m) array of uint8/uint16/int16/int32/uint32/float32/float64, n >= 1;
        NaN and inf are left out. Never modified; a non-contiguous stack is copied first.
    method: 'mean' or 'median' of the kept values.
    sigma, sigma_lower, sigma_upper, maxiters, cenfunc ('median' | 'mean'), stdfunc ('std' |
        'mad_std'): as astropy.stats.sigma_clip, with its defaults. maxiters None: until stable.
    exact: run the port of astropy's C code (bit-identical bounds) instead of the fast path.
    out: float32/float64 output of shape stack.shape[1:] (default: new, of `dtype`, which defaults
        to float64 for a float64 stack and float32 otherwise).
    counts: True for an int32 array of how many values each pixel kept, or such an array.
    threads: the most threads to use (default: every core Numba has); a stack of fewer than 8M
        values is combined on one.

    Returns Combined(data, counts). Raises EngineValueError on bad arguments (validation:
    engine.kernels.combine_args).
    """
    job = prepare(stack, method=method, sigma=sigma, sigma_lower=sigma_lower,
                  sigma_upper=sigma_upper, maxiters=maxiters, cenfunc=cenfunc, stdfunc=stdfunc,
                  out=out, counts=counts, dtype=dtype)
    stack3, iterations, out2, counts2 = job.stack, job.iterations, job.out, job.counts
    sigma_lower, sigma_upper, kept = job.sigma_lower, job.sigma_upper, job.kept
    n, ny, nx = stack3.shape
    # Small calls run on one thread: waking a second costs more than it saves.
    threads = set_threads(threads if stack3.size >= 2 * _VALUES_PER_THREAD else 1)
    use_median = job.cenfunc == "median"
    use_mad_std = job.stdfunc == "mad_std"
    median_output = job.method == "median"
    if exact:
        combine_exact(stack3, use_median, use_mad_std, iterations, sigma_lower, sigma_upper,
                       median_output, out2, counts2, kept is not None)
    else:
        sorted_values = use_median or use_mad_std or median_output
        pairs = sorting_network(n) if sorted_values else np.zeros((0, 2), np.int64)
        proto = np.empty(0, np.float64 if stack3.dtype == np.float64 else np.float32)
        # Each pass of the iteration removes at least one value, so n + 1 bounds suffice.
        limit = n + 1 if iterations == -1 else min(iterations, n + 1)
        nblocks = max(1, min(ny, 8 * threads))
        _combine_rows(stack3, stack3.dtype.kind != "f", proto, pairs, sorted_values, use_median,
                      use_mad_std, limit, sigma_lower, sigma_upper, median_output, out2, counts2,
                      kept is not None, nblocks)
    return Combined(job.result, kept)

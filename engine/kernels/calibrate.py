"""Calibration apply: raw frames to calibrated frames in one fused pass over memory.

What it promises. For each frame f of a raw cube and each pixel (y, x) of the output (the trim
section of the raw frame, whose corner is (ty, tx) in raw coordinates), in the output's precision:

    v    = raw[f, ty + y, tx + x] - level[f, ty + y]   level: mean or median of the finite raw
                                                       values in the row's overscan columns
                                                       (0 without overscan)
    v    = v - bias[y, x]                              (skipped without a bias)
    v    = c0 + c1 v + c2 v**2 + ...                   (the non-linearity polynomial, if given)
    var  = max(v, 0) / gain + (read_noise / gain)**2   (if an uncertainty is asked for; ADU**2)
    v    = v - dark[y, x] * dark_scale[f]              (skipped without a dark)
    out  = v / flat[y, x]                              (NaN where the flat is not > 0)
    err  = sqrt(var) / flat[y, x]
    mask = bad[y, x] | SATURATED if raw >= saturation | NONFINITE if out is not finite

`dark_scale` is the exposure time when `dark` is a dark-current rate (ADU/s) and 1 when it is an
exposure-matched dark. The non-linearity polynomial acts on the bias-subtracted counts, so dark
and flat masters must be made with the same polynomial (engine.calibration does). The variance counts
the Poisson noise of everything the pixel collected (sky, stars and dark current) and the read
noise; the masters are taken as noiseless. Results equal `tests/reference.py::calibrate_frames`
(the same formulas in float64 NumPy) to rounding: ~1e-12 relative in float64, ~1e-6 in float32.

Memory. One pass: each raw pixel is read once and each output, mask and uncertainty pixel written
once. Each block of rows first folds its masters into two cached rows per row (bias + dark times
the call's first dark scale, and 1 / flat) and lists its bad pixels; the frames then stream past
them, two at a time in the common case (no overscan, one dark scale, no polynomial or
uncertainty) so that the cached rows are read once for both. Calibrating many frames per call
thus costs little more than the raw read and the output writes (bench: `calibrate-floor`).
Work is split over blocks of rows (`prange`); the thread count is an argument. The products
are the same as the formulas above up to float rounding (multiplying by 1 / flat, folding bias
and dark first).

Thread safety: the kernel keeps no state; concurrent calls on separate outputs are safe. The
array driver `calibrate_frames` validates and coerces everything (engine.kernels.calibrate_args);
`_calibrate_cube` trusts it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from engine.flags import PixelFlag
from engine.kernels._jit import jit, set_threads
from engine.kernels.calibrate_args import RAW_DTYPES, prepare

__all__ = ["Calibrated", "RAW_DTYPES", "calibrate_frames"]

_SATURATED = int(PixelFlag.SATURATED)
_NONFINITE = int(PixelFlag.NONFINITE)

# A block's folded masters (bias + dark * scale, and 1 / flat) stay in cache (L2 / L3) while
# every frame of the call streams past them; 2 MB (128 rows of 2048 float32 pixels) measured
# fastest here: longer contiguous runs per frame outweigh the larger working set.
_BLOCK_BYTES = 2 * 1024 * 1024
_PIXELS_PER_THREAD = 1 << 20  # calls smaller than two of these run on one thread


class Calibrated(NamedTuple):
    """What `calibrate_frames` returns: the calibrated data (float32 or float64), the pixel-flag
    mask (uint8 or uint16, `engine.flags.PixelFlag` bits; None when not asked for) and the
    per-pixel 1-sigma uncertainty in the data's units (None when not asked for)."""

    data: np.ndarray
    mask: np.ndarray | None
    uncertainty: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# Compiled cores. Inputs are trusted: shapes agree, arrays are C-contiguous, sections are inside
# the raw frame. Each stage is a plain loop over one output row so that it vectorises; the row
# stays in L1 between stages, so the stages cost no memory traffic.
# ---------------------------------------------------------------------------------------------


@jit
def _overscan_level(raw_row, x0, x1, use_median, scratch):
    """Mean or median of the finite values raw_row[x0:x1] (NaN if none); scratch holds x1 - x0."""
    n = 0
    total = 0.0
    for x in range(x0, x1):
        value = np.float64(raw_row[x])
        if np.isfinite(value):
            scratch[n] = value
            total += value
            n += 1
    if n == 0:
        return np.nan
    if not use_median:
        return total / n
    values = scratch[:n]
    values.sort()
    half = n // 2
    if n % 2 == 1:
        return values[half]
    return 0.5 * (values[half - 1] + values[half])


@jit
def _calibrate_row_fused(source, level, offset_row, dark_row, dark_step, inverse_flat_row,
                         saturation, check_saturation, out_row, mask_row, want_mask):
    """The common case in one loop: out = (source - level - offset - dark * dark_step) *
    inverse_flat, with offset = bias + dark * (the call's first dark scale), and the flags of
    saturation and non-finite results (bad pixels are added by the caller). Without overscan
    and with one dark scale for the call, the loop reads only the raw row and two cached rows."""
    nx = out_row.shape[0]
    kind = out_row.dtype.type
    base = kind(level)
    step = kind(dark_step)
    plain = level == 0.0 and dark_step == 0.0
    if plain and want_mask:
        for x in range(nx):
            raw = source[x]
            v = (kind(raw) - offset_row[x]) * inverse_flat_row[x]
            out_row[x] = v
            flags = _SATURATED if check_saturation and raw >= saturation else 0
            flags |= 0 if np.isfinite(v) else _NONFINITE
            mask_row[x] = flags
    elif plain:
        for x in range(nx):
            out_row[x] = (kind(source[x]) - offset_row[x]) * inverse_flat_row[x]
    elif want_mask:
        for x in range(nx):
            raw = source[x]
            v = (kind(raw) - base - offset_row[x] - dark_row[x] * step) * inverse_flat_row[x]
            out_row[x] = v
            flags = _SATURATED if check_saturation and raw >= saturation else 0
            flags |= 0 if np.isfinite(v) else _NONFINITE
            mask_row[x] = flags
    else:
        for x in range(nx):
            out_row[x] = (kind(source[x]) - base - offset_row[x] - dark_row[x] * step
                          ) * inverse_flat_row[x]


@jit
def _calibrate_row_pair(source0, source1, offset_row, inverse_flat_row, saturation,
                        check_saturation, out0, out1, mask0, mask1, want_mask):
    """The plain case (no overscan, one dark scale) for the same row of two frames at once, so
    that the cached master rows are read once for both: out = (source - offset) * inverse_flat,
    and the flags of saturation and non-finite results (bad pixels are added by the caller)."""
    nx = out0.shape[0]
    kind = out0.dtype.type
    if want_mask:
        for x in range(nx):
            a = offset_row[x]
            g = inverse_flat_row[x]
            raw0 = source0[x]
            raw1 = source1[x]
            v0 = (kind(raw0) - a) * g
            v1 = (kind(raw1) - a) * g
            out0[x] = v0
            out1[x] = v1
            flags0 = _SATURATED if check_saturation and raw0 >= saturation else 0
            flags1 = _SATURATED if check_saturation and raw1 >= saturation else 0
            mask0[x] = flags0 | (0 if np.isfinite(v0) else _NONFINITE)
            mask1[x] = flags1 | (0 if np.isfinite(v1) else _NONFINITE)
    else:
        for x in range(nx):
            a = offset_row[x]
            g = inverse_flat_row[x]
            out0[x] = (kind(source0[x]) - a) * g
            out1[x] = (kind(source1[x]) - a) * g


@jit
def _calibrate_row_staged(source, level, bias_row, poly, dark_row, scale, inverse_flat_row,
                          saturation, check_saturation, gain, read_noise, out_row, mask_row,
                          want_mask, err_row, want_error, work):
    """The general case, stage by stage over the row (the row stays in L1 between stages): the
    non-linearity polynomial and the uncertainty. work: a scratch row of out_row's dtype."""
    nx = out_row.shape[0]
    kind = out_row.dtype.type
    base = kind(level)
    for x in range(nx):
        out_row[x] = kind(source[x]) - base - bias_row[x]
    degree = poly.shape[0] - 1
    if degree >= 0:
        # Horner's rule, one coefficient at a time over the whole row (vectorises over x).
        top = kind(poly[degree])
        for x in range(nx):
            work[x] = top
        for k in range(degree - 1, -1, -1):
            c = kind(poly[k])
            for x in range(nx):
                work[x] = work[x] * out_row[x] + c
        for x in range(nx):
            out_row[x] = work[x]
    if want_error:
        inv_gain = kind(1.0 / gain)
        read_var = kind((read_noise / gain) ** 2)
        for x in range(nx):
            err_row[x] = np.sqrt(max(out_row[x], kind(0.0)) * inv_gain + read_var
                                 ) * inverse_flat_row[x]
    s = kind(scale)
    for x in range(nx):
        out_row[x] = (out_row[x] - dark_row[x] * s) * inverse_flat_row[x]
    if want_mask:
        for x in range(nx):
            flags = _SATURATED if check_saturation and source[x] >= saturation else 0
            flags |= 0 if np.isfinite(out_row[x]) else _NONFINITE
            mask_row[x] = flags


@jit
def _fold_masters(bias, dark, flat, y_start, rows, first_scale, space, stride, second):
    """Fold a block's rows of the masters into `space`: at r * stride, bias + dark * first_scale;
    at second + r * stride, 1 / flat (NaN where the flat is not > 0). A master of one row stands
    for every row (the neutral masters of an absent one)."""
    nx = flat.shape[1]
    kind = space.dtype.type
    nan = kind(np.nan)
    one = kind(1.0)
    for r in range(rows):
        y = y_start + r
        bias_row = bias[y if bias.shape[0] > 1 else 0]
        dark_row = dark[y if dark.shape[0] > 1 else 0]
        flat_row = flat[y if flat.shape[0] > 1 else 0]
        offset_row = space[r * stride:r * stride + nx]
        inverse_row = space[second + r * stride:second + r * stride + nx]
        for x in range(nx):
            offset_row[x] = bias_row[x] + dark_row[x] * first_scale
        for x in range(nx):
            value = flat_row[x]
            inverse_row[x] = one / value if value > 0 else nan


@jit
def _bad_pixel_list(bad, y_start, rows, wanted):
    """A block's bad pixels, row by row (CSR): (start (rows + 1,), columns, flags); rows r's
    pixels are start[r]..start[r + 1]. Empty unless `wanted`."""
    nx = bad.shape[1]
    n_bad = 0
    if wanted:
        for r in range(rows):
            bad_row = bad[y_start + r]
            for x in range(nx):
                n_bad += 1 if bad_row[x] != 0 else 0
    bad_start = np.zeros(rows + 1, np.int64)
    bad_column = np.empty(n_bad, np.int64)
    bad_flags = np.empty(n_bad, bad.dtype)
    if n_bad > 0:
        i = 0
        for r in range(rows):
            bad_row = bad[y_start + r]
            for x in range(nx):
                if bad_row[x] != 0:
                    bad_column[i] = x
                    bad_flags[i] = bad_row[x]
                    i += 1
            bad_start[r + 1] = i
    return bad_start, bad_column, bad_flags


@jit
def _flag_bad(mask_row, start, stop, bad_column, bad_flags):
    """OR the listed bad pixels start..stop into a row of the mask."""
    for i in range(start, stop):
        mask_row[bad_column[i]] |= bad_flags[i]


@jit(parallel=True)
def _calibrate_cube(raw, ty, tx, overscan_x0, overscan_x1, overscan_median,
                    bias, dark, dark_scale, flat, bad, poly, saturation,
                    check_saturation, gain, read_noise, out, mask, want_mask, error, want_error,
                    block_rows):
    """Calibrate raw[:, ty:ty+ny, tx:tx+nx] into out (nframes, ny, nx), over blocks of rows.

    Inputs: raw (nframes, NY, NX), any of RAW_DTYPES; bias, dark, flat (ny, nx) of out's dtype,
    or (1, nx) neutral rows when absent (zeros, zeros, ones); bad (ny, nx) of mask's dtype, or a
    (1, nx) row of zeros; dark_scale (nframes,) float64 (zeros without a dark); poly (degree + 1,)
    float64, empty for none. overscan_x1 == overscan_x0 means no overscan.
    Outputs (allocated and owned by the caller): out; mask and error when wanted, else (1, 1, nx)
    placeholders that are never written.

    Each block first folds its rows of the masters into two small buffers that stay in cache for
    every frame: bias + dark * dark_scale[0], and 1 / flat (NaN where the flat is not > 0); and
    lists its bad pixels. The frames then stream through, each raw pixel read once.
    """
    nframes, ny, nx = out.shape
    n_overscan = overscan_x1 - overscan_x0
    staged = poly.shape[0] > 0 or want_error
    by_row_bias = bias.shape[0] > 1
    by_row_dark = dark.shape[0] > 1
    by_row_bad = bad.shape[0] > 1
    first_scale = dark_scale[0]
    uniform = np.all(dark_scale == first_scale)  # one dark scale: folded into the offset rows
    nblocks = (ny + block_rows - 1) // block_rows
    for block in prange(nblocks):
        y_start = block * block_rows
        rows = min(ny, y_start + block_rows) - y_start
        # Rows padded by 24 elements and the two buffers shifted by 40: row starts that differ
        # by multiples of 4 KB from the output rows stall loads behind unrelated stores (4K
        # aliasing); the padding keeps the streams apart.
        stride = nx + 24
        second = rows * stride + 40
        space = np.empty(second + rows * stride, out.dtype)
        _fold_masters(bias, dark, flat, y_start, rows, out.dtype.type(first_scale), space,
                      stride, second)
        bad_start, bad_column, bad_flags = _bad_pixel_list(bad, y_start, rows,
                                                           by_row_bad and want_mask)
        work = np.empty(nx, out.dtype)
        zeros = np.zeros(nx, out.dtype)
        scratch = np.empty(max(n_overscan, 1), np.float64)
        # Without overscan, non-linearity or uncertainty and with one dark scale, frames go
        # two at a time: the cached master rows are then read once for both.
        paired = uniform and n_overscan == 0 and not staged
        f = 0
        while f < nframes:
            pair = paired and f + 1 < nframes
            step = 0.0 if uniform else dark_scale[f] - first_scale
            fm = f if want_mask else 0
            fe = f if want_error else 0
            for r in range(rows):
                y = y_start + r
                raw_row = raw[f, ty + y]
                source = raw_row[tx:tx + nx]
                offset_row = space[r * stride:r * stride + nx]
                inverse_row = space[second + r * stride:second + r * stride + nx]
                mask_row = mask[fm, y if want_mask else 0]
                if pair:
                    mask_next = mask[fm + 1 if want_mask else 0, y if want_mask else 0]
                    _calibrate_row_pair(source, raw[f + 1, ty + y][tx:tx + nx], offset_row,
                                        inverse_row, saturation, check_saturation, out[f, y],
                                        out[f + 1, y], mask_row, mask_next, want_mask)
                    if want_mask:
                        _flag_bad(mask_row, bad_start[r], bad_start[r + 1], bad_column, bad_flags)
                        _flag_bad(mask_next, bad_start[r], bad_start[r + 1], bad_column,
                                  bad_flags)
                    continue
                level = 0.0
                if n_overscan > 0:
                    level = _overscan_level(raw_row, overscan_x0, overscan_x1, overscan_median,
                                            scratch)
                dark_row = dark[y if by_row_dark else 0]
                if staged:
                    _calibrate_row_staged(source, level, bias[y if by_row_bias else 0], poly,
                                          dark_row, dark_scale[f], inverse_row, saturation,
                                          check_saturation, gain, read_noise, out[f, y],
                                          mask_row, want_mask, error[fe, y if want_error else 0],
                                          want_error, work)
                else:
                    _calibrate_row_fused(source, level, offset_row,
                                         zeros if uniform else dark_row, step, inverse_row,
                                         saturation, check_saturation, out[f, y], mask_row,
                                         want_mask)
                if want_mask:
                    _flag_bad(mask_row, bad_start[r], bad_start[r + 1], bad_column, bad_flags)
            f += 2 if pair else 1


# ---------------------------------------------------------------------------------------------
# The array driver: validation and coercion, then one compiled call.
# ---------------------------------------------------------------------------------------------


def calibrate_frames(raw, *, bias=None, dark=None, dark_scale=None, flat=None, bad_pixels=None,
                     saturation=None, overscan=None, overscan_method: str = "median", trim=None,
                     nonlinearity=None, gain=None, read_noise=None, out=None, mask=True,
                     uncertainty=False, dtype=np.float32, threads: int | None = None) -> Calibrated:
    """Calibrate raw frames in one fused pass: (raw - overscan - bias - dark * scale) / flat.

    raw: one frame (ny, nx) or a cube (nframes, ny, nx) of uint8/uint16/int16/int32/uint32/float32/
        float64 pixels, never modified. A non-contiguous array is copied first.
    trim: (y0, y1, x0, x1), 0-based half-open, the part of the raw frame that is kept (default:
        all).
        The masters and outputs have the trimmed shape.
    overscan: (x0, x1), 0-based half-open raw columns: each raw row has the mean or median
        (`overscan_method`) of its finite overscan values subtracted. They must lie outside the
        trimmed columns.
    bias, dark, flat: masters of the trimmed shape (any of them None to skip it). `dark` is
        subtracted times `dark_scale` (a number or one per frame): the exposure time for a
        dark-current rate, 1 for an exposure-matched dark. Flat pixels that are not > 0 give NaN.
    bad_pixels: PixelFlag bits (uint8/uint16, or bool meaning BAD) of the trimmed shape, copied
        into the mask.
    saturation: raw level at or above which a pixel is flagged SATURATED (default: the integer
        type's largest value; no check for float raw data unless given).
    nonlinearity: polynomial coefficients (c0, c1, c2, ...) applied to the bias-subtracted counts.
    gain (e-/ADU) and read_noise (e-): needed when `uncertainty` is asked for.
    out: float32 or float64 output of the trimmed shape (default: new, of `dtype`).
    mask: True (default) for a new uint8 PixelFlag mask, False for none, or a uint8/uint16 array.
    uncertainty: False (default), True for a new array of the output's dtype, or an array.
    threads: the most threads to use (default: every core Numba has); a call of fewer than 2M
        output pixels runs on one.

    Returns Calibrated(data, mask, uncertainty); 2-D in, 2-D out. Raises EngineValueError for
    anything inconsistent (shapes, sections, dtypes, missing gain) before any pixel is touched.
    """
    job = prepare(raw, bias=bias, dark=dark, dark_scale=dark_scale, flat=flat,
                  bad_pixels=bad_pixels, saturation=saturation, overscan=overscan,
                  overscan_method=overscan_method, trim=trim, nonlinearity=nonlinearity,
                  gain=gain, read_noise=read_noise, out=out, mask=mask,
                  uncertainty=uncertainty, dtype=dtype)
    # Small calls run on one thread: waking a second costs more than it saves.
    threads = set_threads(threads if job.out.size >= 2 * _PIXELS_PER_THREAD else 1)
    ny, nx = job.out.shape[1:]
    row_bytes = nx * job.out.dtype.itemsize * 2
    block_rows = max(1, min(_BLOCK_BYTES // row_bytes, -(-ny // (4 * threads))))
    _calibrate_cube(job.raw, job.trim[0], job.trim[2], job.overscan[0], job.overscan[1],
                    job.overscan_median, job.neutral(job.bias, 0), job.neutral(job.dark, 0),
                    job.dark_scale, job.neutral(job.flat, 1),
                    job.neutral(job.bad, 0, job.mask_dtype),
                    job.poly, job.saturation, job.check_saturation, job.gain, job.read_noise,
                    job.out, job.placeholder(job.mask, job.mask_dtype), job.mask is not None,
                    job.placeholder(job.uncertainty, job.out.dtype), job.uncertainty is not None,
                    block_rows)
    return Calibrated(*job.outputs())

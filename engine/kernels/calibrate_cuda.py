"""Calibration apply on an NVIDIA GPU (numba.cuda): the same numbers as engine.kernels.calibrate.

What it promises: `calibrate_frames_cuda` takes the arguments of `calibrate_frames` (it runs the
same validation) and returns the same Calibrated(data, mask, uncertainty), computed by the same
formulas (the calibrate module's docstring) in float64 on the device and stored in the output's
dtype: equal to the CPU kernel and the reference to rounding (~1e-12 in float64). One GPU thread
per output pixel; the overscan levels first, one thread per frame row. Inputs are copied to the
device and results back into host arrays (the caller's `out`, `mask`, `uncertainty` when given).

Raw frames go up in chunks on two streams from pinned host memory, so that one chunk's copy
overlaps the previous chunk's calibration. For a run calibrated block by block on the device
(engine.calibration.recipe.DeviceCalibratedFrames) the steps are apart: `upload_masters` puts a
prepared job's masters on the device once per run, `calibrate_streamed` calibrates a block into
device arrays, which stay there for the photometry kernel, and `set_pixel_flags` writes the few
flags the host adds.

Limits: a median overscan strip holds at most 128 columns per row (a mean has no limit).

Import this module only where a GPU is wanted: importing numba.cuda is slow and the CPU path never
does. Tested under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba.cuda is first
imported) on small frames. Kernels keep no state; concurrent calls on separate outputs are safe.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from engine.errors import EngineValueError
from engine.flags import PixelFlag
from engine.kernels.calibrate import Calibrated
from engine.kernels.calibrate_args import prepare

__all__ = ["calibrate_frames_cuda", "calibrate_on_device", "calibrate_streamed", "set_pixel_flags",
           "upload_masters"]

_MAX_MEDIAN_OVERSCAN = 128
_THREADS_PER_BLOCK = 256
_FRAMES_PER_TRANSFER = 4
_SATURATED = int(PixelFlag.SATURATED)
_NONFINITE = int(PixelFlag.NONFINITE)


@cuda.jit
def _overscan_levels(raw, x0, x1, use_median, levels):
    """levels[f, y] = mean or median of the finite raw[f, y, x0:x1] (NaN if none); one thread
    per (frame, row). A median needs x1 - x0 <= _MAX_MEDIAN_OVERSCAN (checked by the driver)."""
    i = cuda.grid(1)
    nframes, ny = levels.shape
    if i >= nframes * ny:
        return
    f = i // ny
    y = i - f * ny
    values = cuda.local.array(_MAX_MEDIAN_OVERSCAN, float64)
    n = 0
    total = 0.0
    for x in range(x0, x1):
        v = float64(raw[f, y, x])
        if math.isfinite(v):
            total += v
            if use_median:
                # Insertion into the sorted prefix values[:n].
                j = n
                while j > 0 and values[j - 1] > v:
                    values[j] = values[j - 1]
                    j -= 1
                values[j] = v
            n += 1
    if x1 <= x0:
        levels[f, y] = 0.0  # no overscan strip: nothing to subtract
    elif n == 0:
        levels[f, y] = math.nan
    elif not use_median:
        levels[f, y] = total / n
    elif n % 2 == 1:
        levels[f, y] = values[n // 2]
    else:
        levels[f, y] = 0.5 * (values[n // 2 - 1] + values[n // 2])


@cuda.jit
def _calibrate_pixels(raw, ty, tx, levels, bias, dark, dark_scale, flat, bad, poly, saturation,
                      check_saturation, gain, read_noise, out, mask, want_mask, error,
                      want_error):
    """One thread per output pixel (f, y, x) of out (nframes, ny, nx). Absent masters are
    (1, nx) neutral rows; absent outputs (1, 1, nx) placeholders that are never written."""
    i = cuda.grid(1)
    nframes, ny, nx = out.shape
    if i >= nframes * ny * nx:
        return
    f = i // (ny * nx)
    rest = i - f * ny * nx
    y = rest // nx
    x = rest - y * nx
    yb = y if bias.shape[0] > 1 else 0
    yd = y if dark.shape[0] > 1 else 0
    yf = y if flat.shape[0] > 1 else 0
    raw_value = raw[f, ty + y, tx + x]
    v = float64(raw_value) - levels[f, ty + y] - float64(bias[yb, x])
    degree = poly.shape[0] - 1
    if degree >= 0:
        acc = poly[degree]
        for k in range(degree - 1, -1, -1):
            acc = acc * v + poly[k]
        v = acc
    variance = 0.0
    if want_error:
        variance = max(v, 0.0) / gain + (read_noise / gain) ** 2
    v = v - float64(dark[yd, x]) * dark_scale[f]
    flat_value = float64(flat[yf, x])
    if flat_value > 0:
        v = v / flat_value
        sigma = math.sqrt(variance) / flat_value
    else:
        v = math.nan
        sigma = math.nan
    out[f, y, x] = v
    if want_error:
        error[f, y, x] = sigma
    if want_mask:
        flags = bad[y if bad.shape[0] > 1 else 0, x]
        if check_saturation and float64(raw_value) >= saturation:
            flags |= _SATURATED
        if not math.isfinite(out[f, y, x]):
            flags |= _NONFINITE
        mask[f, y, x] = flags


@cuda.jit
def _set_flags(mask, index, values):
    """mask.flat[index[k]] = values[k]; one thread per listed pixel."""
    k = cuda.grid(1)
    if k < index.shape[0]:
        pixel = index[k]
        plane = mask.shape[1] * mask.shape[2]
        f = pixel // plane
        rest = pixel - f * plane
        mask[f, rest // mask.shape[2], rest % mask.shape[2]] = values[k]


def _blocks(count: int) -> int:
    return -(-count // _THREADS_PER_BLOCK)


def upload_masters(job, known: dict | None = None, stream=0) -> dict:
    """The masters of a prepared job (engine.kernels.calibrate_args.prepare) on the device, absent
    ones as neutral rows: {'bias', 'dark', 'flat', 'bad', 'poly'}. `known`: the masters of an
    earlier job of the same calibration, whose bias, flat, bad pixels and polynomial are reused
    (only the dark is uploaded)."""
    dark = cuda.to_device(job.neutral(job.dark, 0), stream=stream)
    if known is not None:
        return dict(known, dark=dark)
    return {"bias": cuda.to_device(job.neutral(job.bias, 0), stream=stream), "dark": dark,
            "flat": cuda.to_device(job.neutral(job.flat, 1), stream=stream),
            "bad": cuda.to_device(job.neutral(job.bad, 0, job.mask_dtype), stream=stream),
            "poly": cuda.to_device(job.poly, stream=stream)}


def calibrate_on_device(job, raw, masters: dict, out, mask, error=None, stream=0) -> None:
    """Calibrate the raw frames `raw` (a device array of job.raw's shape) with the job's settings
    and the device `masters` (upload_masters) into the device arrays `out` and `mask` (and
    `error` when given), all on `stream`; nothing comes back to the host. The job was prepared
    for these frames (its raw cube is their host copy); without a mask in it, `mask` is a
    placeholder never written."""
    x0, x1 = job.overscan
    if job.overscan_median and x1 - x0 > _MAX_MEDIAN_OVERSCAN:
        raise EngineValueError(f"a median overscan on the GPU takes at most "
                               f"{_MAX_MEDIAN_OVERSCAN} columns, got {x1 - x0}; use 'mean'")
    nframes, raw_ny, _ = job.raw.shape
    levels = cuda.device_array((nframes, raw_ny), np.float64, stream=stream)
    _overscan_levels[_blocks(nframes * raw_ny), _THREADS_PER_BLOCK, stream](
        raw, x0, x1, job.overscan_median, levels)
    want_error = error is not None
    if error is None:
        error = cuda.device_array((1, 1, 1), out.dtype, stream=stream)
    _calibrate_pixels[_blocks(out.size), _THREADS_PER_BLOCK, stream](
        raw, job.trim[0], job.trim[2], levels, masters["bias"], masters["dark"],
        cuda.to_device(job.dark_scale, stream=stream), masters["flat"], masters["bad"],
        masters["poly"], job.saturation, job.check_saturation, job.gain, job.read_noise,
        out, mask, job.mask is not None, error, want_error)


@functools.lru_cache(maxsize=2)
def _raw_lanes(shape: tuple, dtype: str):
    """Two streams, each with a pinned host buffer and a device buffer of one transfer's raw
    frames: allocating pinned memory is slow, so a run's blocks reuse them."""
    return [(cuda.stream(), cuda.pinned_array(shape, dtype), cuda.device_array(shape, dtype))
            for _ in range(2)]


def calibrate_streamed(job, masters: dict, out, mask, error=None) -> None:
    """`calibrate_on_device` for a job whose raw frames are on the host: they go to the device a
    few frames at a time on two streams from pinned memory, each chunk calibrated on its stream
    as soon as it is there. Returns when the device arrays out, mask (and error) are filled."""
    nframes = job.raw.shape[0]
    chunk = min(_FRAMES_PER_TRANSFER, nframes)
    lanes = _raw_lanes((chunk,) + job.raw.shape[1:], job.raw.dtype.str)
    for number, start in enumerate(range(0, nframes, chunk)):
        stop = min(nframes, start + chunk)
        stream, host, device = lanes[number % 2]
        stream.synchronize()  # this lane's previous copy has left its pinned buffer
        host[:stop - start] = job.raw[start:stop]
        device[:stop - start].copy_to_device(host[:stop - start], stream=stream)
        part = job._replace(raw=job.raw[start:stop], dark_scale=job.dark_scale[start:stop])
        calibrate_on_device(part, device[:stop - start], masters, out[start:stop],
                            mask if job.mask is None else mask[start:stop],
                            None if error is None else error[start:stop], stream)
    cuda.synchronize()


def set_pixel_flags(mask, index: np.ndarray, values: np.ndarray, stream=0) -> None:
    """Set the device mask's pixels at flat indices `index` (int64) to `values` (the mask's
    dtype): the flags the host adds to a block calibrated on the device, sent as a list because
    they are few (cosmic-ray hits, the frames' own bad pixels)."""
    if index.size:
        _set_flags[_blocks(index.size), _THREADS_PER_BLOCK, stream](
            mask, cuda.to_device(np.ascontiguousarray(index, dtype=np.int64), stream=stream),
            cuda.to_device(np.ascontiguousarray(values, dtype=mask.dtype), stream=stream))


def calibrate_frames_cuda(raw, *, bias=None, dark=None, dark_scale=None, flat=None,
                          bad_pixels=None, saturation=None, overscan=None,
                          overscan_method: str = "median", trim=None, nonlinearity=None,
                          gain=None, read_noise=None, out=None, mask=True, uncertainty=False,
                          dtype=np.float32) -> Calibrated:
    """`engine.kernels.calibrate.calibrate_frames` on the GPU: same arguments (no thread count),
    same result. Raises EngineValueError as the CPU driver does, and for a median overscan strip
    wider than 128 columns."""
    job = prepare(raw, bias=bias, dark=dark, dark_scale=dark_scale, flat=flat,
                  bad_pixels=bad_pixels, saturation=saturation, overscan=overscan,
                  overscan_method=overscan_method, trim=trim, nonlinearity=nonlinearity,
                  gain=gain, read_noise=read_noise, out=out, mask=mask,
                  uncertainty=uncertainty, dtype=dtype)
    d_out = cuda.device_array(job.out.shape, job.out.dtype)
    d_mask = cuda.device_array(job.placeholder(job.mask, job.mask_dtype).shape, job.mask_dtype)
    d_error = (None if job.uncertainty is None
               else cuda.device_array(job.uncertainty.shape, job.out.dtype))
    calibrate_streamed(job, upload_masters(job), d_out, d_mask, d_error)
    d_out.copy_to_host(job.out)
    if job.mask is not None:
        d_mask.copy_to_host(job.mask)
    if job.uncertainty is not None:
        d_error.copy_to_host(job.uncertainty)
    return Calibrated(*job.outputs())

"""Exact aperture photometry on an NVIDIA GPU (numba.cuda): the numbers of engine.cext.aperture_sums.

What it promises: `aperture_sums_cuda` takes the arguments of `engine.cext.aperture_sums` (it runs
the same validation) and returns the same dict of arrays, computed by the same rules as the C++
kernel (engine/cext/src/aperture.cpp):
- each pixel's weight in an aperture is the exact area of the pixel inside the circle (the
  geometry of engine/cext/src/overlap.cpp's disk_rectangle_area, as device functions); pixels
  wholly inside weigh exactly 1;
- usable pixels are finite and not flagged BAD, NONFINITE or COSMIC_RAY; unusable ones inside an
  aperture set BAD_PIXEL, usable SATURATED ones set SATURATED;
- the annulus holds the usable, unsaturated pixels whose centre lies at inner <= d < outer and
  not closer than mask_radius to another star; its background is astropy's sigma_clipped_stats
  (median, std) with the same stopping rule; OFF_FRAME, NEAR_EDGE, BLENDED and
  BACKGROUND_FAILED follow the C++ tests.
Pixels travel as they are (float32 in the pipeline) and every sum is float64 on the device, as on
the CPU: results equal the CPU kernel to rounding (summation order differs): rtol 1e-9 on sums,
areas and backgrounds, flags and annulus pixel counts exactly (tests/test_photometry_cuda.py).

Layout: one thread block per (frame, star). The block's threads walk the star's pixel box row by
row (neighbouring threads read neighbouring pixels: coalesced), sum each radius and gather the
annulus into shared memory, where one thread clips it with the CPU's clipping core
(engine.kernels.sigma_clip.clipped_median_std, compiled for the device), so that nothing goes back
to the host until the block's table is done. Frames go to the device in chunks on two streams from
pinned host memory, so that one chunk's copy overlaps the previous chunk's measurement; only the
photometry arrays come back. Frames (and flags) already on the device (a block calibrated there,
engine.kernels.calibrate_cuda) are measured where they are: nothing but the centres goes up.

Limits: at most 8 radii; an annulus of at most 4096 pixels (outer radius up to ~35 px).

Import this module only where a GPU is wanted: the CPU path never imports numba.cuda. Tested under
the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba.cuda is first imported) on small
frames.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float64, int32, uint32

from engine.cext import aperture_job
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.kernels.sigma_clip import clipped_median_std

__all__ = ["MAX_ANNULUS_PIXELS", "MAX_RADII", "aperture_sums_cuda"]

#: The most aperture radii one call measures.
MAX_RADII = 8
#: The most annulus pixels one star may have (shared memory of one block).
MAX_ANNULUS_PIXELS = 4096
_MAX_NEIGHBOURS = 512
_MAX_THREADS = 128
# The simulator runs every GPU thread as a Python thread: small blocks keep tests fast. The
# result does not depend on the block size beyond the order of float64 sums.
_THREADS_PER_BLOCK = 8 if numba_config.ENABLE_CUDASIM else _MAX_THREADS
_FRAMES_PER_TRANSFER = 4
_UNUSABLE = int(PixelFlag.BAD | PixelFlag.NONFINITE | PixelFlag.COSMIC_RAY)
_PIXEL_SATURATED = int(PixelFlag.SATURATED)
_SATURATED = int(MeasurementFlag.SATURATED)
_BAD_PIXEL = int(MeasurementFlag.BAD_PIXEL)
_NEAR_EDGE = int(MeasurementFlag.NEAR_EDGE)
_OFF_FRAME = int(MeasurementFlag.OFF_FRAME)
_BLENDED = int(MeasurementFlag.BLENDED)
_BACKGROUND_FAILED = int(MeasurementFlag.BACKGROUND_FAILED)


# --- Exact disk-rectangle geometry (engine/cext/src/overlap.cpp, disk centred at the origin) ---

@cuda.jit(device=True)
def _half_chord(x, r):
    d = (r - x) * (r + x)
    return math.sqrt(d) if d > 0.0 else 0.0


@cuda.jit(device=True)
def _chord_integral(a, b, r):
    """Integral of sqrt(r^2 - x^2) over [a, b]; the asin difference as one atan2 (no precision
    lost near the rim)."""
    if b <= a:
        return 0.0
    sa = _half_chord(a, r)
    sb = _half_chord(b, r)
    angle = math.atan2(b * sa - a * sb, sa * sb + a * b)
    return 0.5 * ((b * sb - a * sa) + r * r * angle)


@cuda.jit(device=True)
def _rim_piece(a, b, lo, hi, h, r):
    u = max(a, lo)
    v = min(b, hi)
    if v <= u:
        return 0.0
    return _chord_integral(u, v, r) - h * (v - u)


@cuda.jit(device=True)
def _band_area(x0, x1, h0, h1, r):
    """Area of the disk inside [x0, x1] x [h0, h1], 0 <= h0 <= h1."""
    if h0 >= r or h1 <= h0:
        return 0.0
    c0 = _half_chord(h0, r)
    if h1 >= r:
        return _rim_piece(x0, x1, -c0, c0, h0, r)
    c1 = _half_chord(h1, r)
    flat = max(0.0, min(x1, c1) - max(x0, -c1)) * (h1 - h0)
    return flat + _rim_piece(x0, x1, -c0, -c1, h0, r) + _rim_piece(x0, x1, c1, c0, h0, r)


@cuda.jit(device=True)
def _pixel_weight(dx, dy, r):
    """Area of the unit pixel centred at (dx, dy) from the circle's centre inside the circle."""
    ax = abs(dx)
    ay = abs(dy)
    if ax - 0.5 >= r or ay - 0.5 >= r:
        return 0.0
    if (ax + 0.5) * (ax + 0.5) + (ay + 0.5) * (ay + 0.5) <= r * r:
        return 1.0  # every corner inside: wholly inside, as the CPU counts it
    x0 = dx - 0.5
    x1 = dx + 0.5
    y0 = dy - 0.5
    y1 = dy + 0.5
    if y0 >= 0.0:
        area = _band_area(x0, x1, y0, y1, r)
    elif y1 <= 0.0:
        area = _band_area(x0, x1, -y1, -y0, r)
    else:
        area = _band_area(x0, x1, 0.0, y1, r) + _band_area(x0, x1, 0.0, -y0, r)
    return min(1.0, area)


# --- Block-wide helpers: every thread of the block calls them (they synchronise) ---

@cuda.jit(device=True)
def _block_sum(buffer, value):
    """The sum of `value` over the block's threads, returned to every thread (power-of-two
    block)."""
    tid = cuda.threadIdx.x
    buffer[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buffer[tid] += buffer[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buffer[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _masked(px, py, neighbour_x, neighbour_y, count, x, y, frame, star, mask2):
    """A pixel closer than the mask radius to another star. Beyond the shared list's capacity
    every star of the frame is tested (slower, same answer)."""
    if count <= _MAX_NEIGHBOURS:
        for m in range(count):
            dx = px - neighbour_x[m]
            dy = py - neighbour_y[m]
            if dx * dx + dy * dy < mask2:
                return True
        return False
    for s in range(x.shape[1]):
        dx = px - x[frame, s]
        dy = py - y[frame, s]
        if s != star and dx * dx + dy * dy < mask2:
            return True
    return False


@cuda.jit(device=True)
def _find_neighbours(x, y, frame, star, xc, yc, reach2, blend2, neighbour_x, neighbour_y,
                     shared_ints):
    """Lists the other stars within the masking reach (shared_ints[0] counts them, beyond the
    capacity too) and sets shared_ints[1] when one lies within the blend radius."""
    tid = cuda.threadIdx.x
    if tid == 0:
        shared_ints[0] = 0
        shared_ints[1] = 0
        shared_ints[2] = 0
    cuda.syncthreads()
    for s in range(tid, x.shape[1], cuda.blockDim.x):
        if s == star:
            continue
        dx = x[frame, s] - xc
        dy = y[frame, s] - yc
        d2 = dx * dx + dy * dy
        if d2 < blend2:
            shared_ints[1] = 1
        if d2 < reach2:
            m = cuda.atomic.add(shared_ints, 0, 1)
            if m < _MAX_NEIGHBOURS:
                neighbour_x[m] = x[frame, s]
                neighbour_y[m] = y[frame, s]
    cuda.syncthreads()


@cuda.jit(device=True)
def _reach(radii, inner, outer):
    """The largest radius any pixel of a star's measurement lies within."""
    reach = outer if outer > inner else 0.0
    for k in range(radii.shape[0]):
        reach = max(reach, radii[k])
    return reach


@cuda.jit(device=True)
def _write_off_frame(frame, star, n_radii, out_sum, out_area, out_flags, background,
                     background_std, background_pixels):
    for k in range(n_radii):
        out_sum[frame, star, k] = math.nan
        out_area[frame, star, k] = 0.0
        out_flags[frame, star, k] = _OFF_FRAME
    background[frame, star] = math.nan
    background_std[frame, star] = math.nan
    background_pixels[frame, star] = 0


@cuda.jit(device=True)
def _add_to_apertures(value, usable, pixel, dx, dy, radii, sums, areas, flags):
    """One pixel's exact share of each aperture (this thread's partial sums)."""
    for k in range(radii.shape[0]):
        w = _pixel_weight(dx, dy, radii[k])
        if w > 0.0:
            if usable:
                sums[k] += w * value
                areas[k] += w
                if pixel & _PIXEL_SATURATED:
                    flags[k] |= _SATURATED
            else:
                flags[k] |= _BAD_PIXEL


@cuda.jit(device=True)
def _measure_pixels(frames, pixel_flags, has_flags, frame, star, x, y, radii, inner, outer,
                    mask_radius, reach, neighbour_x, neighbour_y, n_neighbours, sums, areas,
                    flags, annulus, shared_ints):
    """This thread's pixels of the star's box (neighbouring threads take neighbouring pixels):
    partial aperture sums into sums, areas, flags; annulus pixels appended to `annulus`
    (shared_ints[2] counts them)."""
    ny = frames.shape[1]
    nx = frames.shape[2]
    xc = x[frame, star]
    yc = y[frame, star]
    ia = max(0, int(math.floor(xc - reach - 0.5)))
    ib = min(nx - 1, int(math.ceil(xc + reach + 0.5)))
    ja = max(0, int(math.floor(yc - reach - 0.5)))
    jb = min(ny - 1, int(math.ceil(yc + reach + 0.5)))
    width = ib - ia + 1
    has_annulus = outer > inner
    inner2 = inner * inner
    outer2 = outer * outer
    mask2 = mask_radius * mask_radius
    for p in range(cuda.threadIdx.x, width * max(0, jb - ja + 1), cuda.blockDim.x):
        j = ja + p // width
        i = ia + p - (p // width) * width
        value = float64(frames[frame, j, i])
        pixel = pixel_flags[frame, j, i] if has_flags else 0
        usable = math.isfinite(value) and (pixel & _UNUSABLE) == 0
        dx = i - xc
        dy = j - yc
        _add_to_apertures(value, usable, pixel, dx, dy, radii, sums, areas, flags)
        d2 = dx * dx + dy * dy
        if (has_annulus and d2 < outer2 and not d2 < inner2 and usable
                and (pixel & _PIXEL_SATURATED) == 0
                and not _masked(float64(i), float64(j), neighbour_x, neighbour_y, n_neighbours,
                                x, y, frame, star, mask2)):
            slot = cuda.atomic.add(shared_ints, 2, 1)
            if slot < MAX_ANNULUS_PIXELS:  # the driver sizes outer so that it always is
                annulus[slot] = value


@cuda.jit(device=True)
def _star_flag(xc, yc, r, nx, ny, blended, background_failed, area):
    """The flags of one aperture that do not come from its pixels."""
    flag = 0
    if not (xc >= -0.5 and xc < nx - 0.5 and yc >= -0.5 and yc < ny - 0.5):
        flag |= _OFF_FRAME
    if xc - r < -0.5 or xc + r > nx - 0.5 or yc - r < -0.5 or yc + r > ny - 0.5:
        flag |= _NEAR_EDGE
    if blended:
        flag |= _BLENDED
    if background_failed:
        flag |= _BACKGROUND_FAILED
    if area <= 0.0:
        flag |= _OFF_FRAME
    return flag


@cuda.jit
def _measure_stars(frames, pixel_flags, has_flags, x, y, radii, inner, outer, clip_sigma,
                   clip_iterations, mask_radius, blend_radius, min_background_pixels,
                   out_sum, out_area, out_flags, background, background_std, background_pixels):
    """One block per (frame, star) of x (frames, stars); see the module docstring."""
    n_stars = x.shape[1]
    frame = cuda.blockIdx.x // n_stars
    star = cuda.blockIdx.x - frame * n_stars
    tid = cuda.threadIdx.x
    n_radii = radii.shape[0]
    ny = frames.shape[1]
    nx = frames.shape[2]
    xc = x[frame, star]
    yc = y[frame, star]
    reach = _reach(radii, inner, outer)
    if not (xc > -reach - 1.0 and xc < nx + reach and yc > -reach - 1.0 and yc < ny + reach):
        if tid == 0:  # the whole block leaves here together
            _write_off_frame(frame, star, n_radii, out_sum, out_area, out_flags, background,
                             background_std, background_pixels)
        return

    buffer = cuda.shared.array(_MAX_THREADS, float64)
    annulus = cuda.shared.array(MAX_ANNULUS_PIXELS, float64)
    neighbour_x = cuda.shared.array(_MAX_NEIGHBOURS, float64)
    neighbour_y = cuda.shared.array(_MAX_NEIGHBOURS, float64)
    shared_ints = cuda.shared.array(3, int32)  # neighbours, blended, annulus pixels
    shared_flags = cuda.shared.array(MAX_RADII, uint32)
    if tid < n_radii:
        shared_flags[tid] = 0
    mask_reach = outer + mask_radius if outer > inner and mask_radius > 0.0 else 0.0
    _find_neighbours(x, y, frame, star, xc, yc, mask_reach * mask_reach,
                     blend_radius * blend_radius, neighbour_x, neighbour_y, shared_ints)
    sums = cuda.local.array(MAX_RADII, float64)
    areas = cuda.local.array(MAX_RADII, float64)
    flags = cuda.local.array(MAX_RADII, uint32)
    for k in range(n_radii):
        sums[k] = 0.0
        areas[k] = 0.0
        flags[k] = 0
    _measure_pixels(frames, pixel_flags, has_flags, frame, star, x, y, radii, inner, outer,
                    mask_radius, reach, neighbour_x, neighbour_y, shared_ints[0], sums, areas,
                    flags, annulus, shared_ints)
    for k in range(n_radii):
        if flags[k]:
            cuda.atomic.or_(shared_flags, k, flags[k])
    cuda.syncthreads()
    for k in range(n_radii):
        sums[k] = _block_sum(buffer, sums[k])
        areas[k] = _block_sum(buffer, areas[k])
    if tid != 0:
        return
    # The annulus background: the engine's one clipping core, compiled for the device.
    median, spread, kept = clipped_median_std(annulus, min(shared_ints[2], MAX_ANNULUS_PIXELS),
                                              clip_sigma, clip_iterations)
    background_failed = outer > inner and kept < min_background_pixels
    for k in range(n_radii):
        out_sum[frame, star, k] = sums[k] if areas[k] > 0.0 else math.nan
        out_area[frame, star, k] = areas[k]
        out_flags[frame, star, k] = shared_flags[k] | _star_flag(
            xc, yc, radii[k], float64(nx), float64(ny), shared_ints[1], background_failed,
            areas[k])
    background[frame, star] = median
    background_std[frame, star] = spread
    background_pixels[frame, star] = kept


@functools.lru_cache(maxsize=2)
def _staging(shape: tuple, dtype: str, with_flags: bool):
    """Two streams, each with a pinned host buffer and a device buffer of one transfer's frames
    (and flags): allocating pinned memory is slow, so a run's blocks reuse them."""
    lanes = []
    for _ in range(2):
        lanes.append((cuda.stream(), cuda.pinned_array(shape, dtype),
                      cuda.device_array(shape, dtype),
                      cuda.pinned_array(shape if with_flags else (1, 1, 1), np.uint8),
                      cuda.device_array(shape if with_flags else (1, 1, 1), np.uint8)))
    return lanes


def _device_inputs(frames, pixel_flags):
    """(frames, pixel flags or None) already on the device, checked as aperture_job checks host
    arrays; None when `frames` is a host array."""
    if not cuda.devicearray.is_cuda_ndarray(frames):
        return None
    if frames.ndim != 3 or frames.dtype not in (np.float32, np.float64):
        raise EngineValueError(f"frames on the device must be 3-d (frame, y, x) float32 or "
                               f"float64, got shape {frames.shape} of {frames.dtype}")
    if pixel_flags is not None and not (cuda.devicearray.is_cuda_ndarray(pixel_flags)
                                        and pixel_flags.shape == frames.shape
                                        and pixel_flags.dtype == np.uint8):
        raise EngineValueError(f"with frames on the device, pixel_flags must be a uint8 device "
                               f"array of their shape {frames.shape}")
    return frames, pixel_flags


def _launch(job, frames, pixel_flags, start, stop, device_out, stream):
    """Measure frames start..stop of the job (`frames` and `pixel_flags` hold just those, on the
    device; pixel_flags may be a placeholder) into device_out's rows start..stop."""
    part = {name: array[start:stop] for name, array in device_out.items()}
    n_stars = job.x.shape[1]
    _measure_stars[(stop - start) * n_stars, _THREADS_PER_BLOCK, stream](
        frames, pixel_flags, job.pixel_flags is not None,
        cuda.to_device(job.x[start:stop], stream=stream),
        cuda.to_device(job.y[start:stop], stream=stream),
        cuda.to_device(job.radii, stream=stream), job.inner, job.outer, job.clip_sigma,
        job.clip_iterations, job.mask_radius, job.blend_radius, job.min_background_pixels,
        part["sum"], part["area"], part["flags"], part["background"],
        part["background_std"], part["background_pixels"])


def _stream_from_host(job, device_out):
    """The host frames to the device chunk by chunk on two streams (pinned staging), each chunk
    measured on its stream as soon as it is there."""
    n_frames, ny, nx = job.frames.shape
    chunk = min(_FRAMES_PER_TRANSFER, n_frames)
    has_flags = job.pixel_flags is not None
    lanes = _staging((chunk, ny, nx), job.frames.dtype.str, has_flags)
    for number, start in enumerate(range(0, n_frames, chunk)):
        stop = min(n_frames, start + chunk)
        stream, host, device, host_flags, device_flags = lanes[number % 2]
        stream.synchronize()  # this lane's previous copy has left its pinned buffer
        host[:stop - start] = job.frames[start:stop]
        device[:stop - start].copy_to_device(host[:stop - start], stream=stream)
        if has_flags:
            host_flags[:stop - start] = job.pixel_flags[start:stop]
            device_flags[:stop - start].copy_to_device(host_flags[:stop - start], stream=stream)
        _launch(job, device[:stop - start], device_flags, start, stop, device_out, stream)


def aperture_sums_cuda(frames, x, y, radii, *, annulus=None, pixel_flags=None,
                       clip_sigma: float = 3.0, clip_iterations: int = 5,
                       mask_radius: float = 0.0, blend_radius: float = 0.0,
                       min_background_pixels: int = 5, threads=None) -> dict[str, np.ndarray]:
    """`engine.cext.aperture_sums` on the GPU: same arguments (`threads` is ignored), same
    result to rounding. `frames` and `pixel_flags` may be device arrays (numba.cuda), measured
    in place. Raises EngineValueError as the CPU does, and beyond MAX_RADII radii or an
    annulus that may hold more than MAX_ANNULUS_PIXELS pixels."""
    on_device = _device_inputs(frames, pixel_flags)
    if on_device is not None:
        # aperture_job checks everything but the pixels, here a (frames, 1, 1) stand-in.
        frames = np.empty((on_device[0].shape[0], 1, 1), on_device[0].dtype)
        pixel_flags = None if on_device[1] is None else np.empty(frames.shape, np.uint8)
    job = aperture_job(frames, x, y, radii, annulus=annulus, pixel_flags=pixel_flags,
                       clip_sigma=clip_sigma, clip_iterations=clip_iterations,
                       mask_radius=mask_radius, blend_radius=blend_radius,
                       min_background_pixels=min_background_pixels)
    if job.radii.size > MAX_RADII:
        raise EngineValueError(f"the GPU measures at most {MAX_RADII} radii, got {job.radii.size}")
    # Pixel centres within `outer` lie in a disk of radius outer + sqrt(2) / 2 of unit squares.
    if math.pi * (job.outer + 0.7072) ** 2 > MAX_ANNULUS_PIXELS:
        raise EngineValueError(f"the GPU annulus holds at most {MAX_ANNULUS_PIXELS} pixels: an "
                               f"outer radius of {job.outer:.1f} px is too large (at most 35)")
    n_frames = job.frames.shape[0]
    out = job.out
    if n_frames == 0 or job.x.shape[1] == 0:
        return out
    device_out = {name: cuda.device_array(array.shape, array.dtype) for name, array in out.items()}
    if on_device is None:
        _stream_from_host(job, device_out)
    else:
        flags = on_device[1] if on_device[1] is not None else cuda.device_array((1, 1, 1),
                                                                                np.uint8)
        _launch(job, on_device[0], flags, 0, n_frames, device_out, 0)
    cuda.synchronize()
    for name, array in device_out.items():
        array.copy_to_host(out[name])
    return out

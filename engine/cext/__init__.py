"""Validated entry points to the compiled C++ core.

The extension module `engine.cext._core` trusts its inputs; the functions here check and coerce
them first (finite values, positive radii, C-contiguous float64 outputs of the right shape), so
that nothing reaching C++ can read or write out of bounds. Call the core only through here.

Promise: the same numbers as the slow references in tests/reference.py, to rounding
(absolute error of a few ulps of max(1, r**2)); every function releases the GIL while it computes
and is safe to call from several threads on different outputs.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np

from engine.errors import EngineValueError

from . import _core

__all__ = ["aperture_job", "aperture_sums", "circle_overlap_grid", "disk_rectangle_area", "sigma_clipped_median"]


def _finite(name: str, value, *, low: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float (>= low, or > low when strict), else EngineValueError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise EngineValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise EngineValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise EngineValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


def circle_overlap_grid(x: float, y: float, r: float, shape: tuple[int, int],
                        out: np.ndarray | None = None) -> np.ndarray:
    """Exact area of a circle inside each pixel of a grid.

    Pixel ``(j, i)`` of the grid is the square ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``:
    pixel centres sit on integer coordinates, ``x`` is the column and ``y`` the row coordinate.

    Parameters
    ----------
    x, y : float
        Centre of the circle in the grid's pixel coordinates (may lie off the grid).
    r : float
        Radius in pixels, > 0.
    shape : (ny, nx)
        Grid shape.
    out : ndarray, optional
        C-contiguous writable float64 array of ``shape`` to fill.

    Returns
    -------
    ndarray of float64, shape ``(ny, nx)``: overlap areas in pixels, each in [0, 1].
    """
    x = _finite("x", x)
    y = _finite("y", y)
    r = _finite("r", r)
    if r <= 0.0:
        raise EngineValueError(f"radius must be > 0, got {r!r}")
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise EngineValueError(f"shape must be a pair of integers, got {shape!r}") from None
    if ny < 0 or nx < 0:
        raise EngineValueError(f"shape must be non-negative, got {(ny, nx)}")
    if out is None:
        out = np.empty((ny, nx), dtype=np.float64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (ny, nx)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise EngineValueError(
            f"out must be a writable C-contiguous float64 array of shape {(ny, nx)}")
    _core.circle_overlap_grid(x, y, r, out)
    return out


def disk_rectangle_area(x0: float, x1: float, y0: float, y1: float, r: float) -> float:
    """Area of the disk of radius ``r`` centred at the origin inside ``[x0, x1] x [y0, y1]``.

    An empty or inverted rectangle has zero area.
    """
    values = [_finite(name, v) for name, v in (("x0", x0), ("x1", x1), ("y0", y0), ("y1", y1))]
    r = _finite("r", r)
    if r <= 0.0:
        raise EngineValueError(f"radius must be > 0, got {r!r}")
    return _core.disk_rectangle_area(*values, r)


def sigma_clipped_median(values, sigma: float = 3.0, iterations: int = 5) -> tuple[float, float, int]:
    """(median, std, kept) after astropy-style sigma clipping about the median.

    Equals ``astropy.stats.sigma_clipped_stats(values, sigma=sigma, maxiters=iterations)``'s
    median and std (cenfunc='median', stdfunc='std'); NaN values must be removed by the caller.
    """
    values = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise EngineValueError("values must be finite")
    sigma = _finite("sigma", sigma)
    if sigma <= 0 or int(iterations) < 0:
        raise EngineValueError("sigma must be > 0 and iterations >= 0")
    return _core.sigma_clipped_median(values, sigma, int(iterations))


def default_threads(threads: int | None, name: str = "threads") -> int:
    """The thread count for a compiled call: `threads`, or every core this process may use."""
    if threads is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # no affinity on this platform
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise EngineValueError(f"{name} must be a positive integer, got {threads!r}")
    return int(threads)


def aperture_sums(frames: np.ndarray, x: np.ndarray, y: np.ndarray, radii, *,
                  annulus: tuple[float, float] | None = None, pixel_flags: np.ndarray | None = None,
                  clip_sigma: float = 3.0, clip_iterations: int = 5, mask_radius: float = 0.0,
                  blend_radius: float = 0.0, min_background_pixels: int = 5,
                  threads: int | None = None) -> dict[str, np.ndarray]:
    """Exact multi-radius aperture sums for every star on every frame of a block.

    frames: (n_frames, ny, nx) float32 or float64 (other dtypes are converted to float64);
    x, y: (n_frames, n_stars) centres (0-based, pixel centres on integers; NaN allowed, giving
    OFF_FRAME results); radii: aperture radii > 0; annulus: (inner, outer) background annulus;
    pixel_flags: uint8 `engine.flags.PixelFlag` bits of frames' shape.

    Returns a dict of arrays: sum, area, flags (n_frames, n_stars, n_radii) and background,
    background_std, background_pixels (n_frames, n_stars). Sums are raw (no background removed),
    in the frames' units; unusable pixels are left out of sum and area and flagged.
    """
    job = aperture_job(frames, x, y, radii, annulus=annulus, pixel_flags=pixel_flags,
                       clip_sigma=clip_sigma, clip_iterations=clip_iterations,
                       mask_radius=mask_radius, blend_radius=blend_radius,
                       min_background_pixels=min_background_pixels)
    _core.aperture_photometry(
        job.frames, job.pixel_flags, job.x, job.y, job.radii, job.inner, job.outer,
        job.clip_sigma, job.clip_iterations, job.mask_radius, job.blend_radius,
        job.min_background_pixels, default_threads(threads), **job.out)
    return job.out


def aperture_job(frames, x, y, radii, *, annulus=None, pixel_flags=None, clip_sigma=3.0,
                 clip_iterations=5, mask_radius=0.0, blend_radius=0.0,
                 min_background_pixels=5) -> SimpleNamespace:
    """`aperture_sums`' arguments checked and coerced, and its outputs allocated: what a
    kernel (the C++ core or the GPU's, engine.kernels.photometry_cuda) may trust."""
    frames = _frames(frames)
    x, y = _centres(x, y, frames.shape[0])
    radii = np.ascontiguousarray(np.atleast_1d(radii), dtype=np.float64)
    if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise EngineValueError(f"radii must be finite and > 0, got {radii!r}")
    inner, outer = _annulus(annulus)
    for name, value in (("mask_radius", mask_radius), ("blend_radius", blend_radius)):
        if _finite(name, value) < 0:
            raise EngineValueError(f"{name} must be >= 0, got {value!r}")
    if _finite("clip_sigma", clip_sigma) <= 0 or int(clip_iterations) < 0:
        raise EngineValueError("clip_sigma must be > 0 and clip_iterations >= 0")
    pixel_flags = _pixel_flags(pixel_flags, frames.shape)
    return SimpleNamespace(
        frames=frames, pixel_flags=pixel_flags, x=x, y=y, radii=radii, inner=inner, outer=outer,
        clip_sigma=float(clip_sigma), clip_iterations=int(clip_iterations),
        mask_radius=float(mask_radius), blend_radius=float(blend_radius),
        min_background_pixels=int(min_background_pixels),
        out=_aperture_outputs(frames.shape[0], x.shape[1], radii.size))


def _frames(frames) -> np.ndarray:
    """A (frame, y, x) block as C-contiguous float32 or float64 (other dtypes become float64)."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise EngineValueError(f"frames must be 3-d (frame, y, x), got shape {frames.shape}")
    if frames.dtype not in (np.float32, np.float64):
        frames = frames.astype(np.float64)
    return np.ascontiguousarray(frames)


def _centres(x, y, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Star centres as C-contiguous float64 (n_frames, n_stars) arrays."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n_frames or y.shape != x.shape:
        raise EngineValueError(
            f"x and y must both have shape (n_frames, n_stars) = ({n_frames}, n), "
            f"got {x.shape} and {y.shape}")
    return x, y


def _pixel_flags(pixel_flags, shape: tuple) -> np.ndarray | None:
    """PixelFlag bits as a C-contiguous uint8 array of the frames' shape, or None."""
    if pixel_flags is None:
        return None
    pixel_flags = np.asarray(pixel_flags)
    if pixel_flags.shape != shape:
        raise EngineValueError(
            f"pixel_flags must have the frames' shape {shape}, got {pixel_flags.shape}")
    return np.ascontiguousarray(pixel_flags, dtype=np.uint8)


def _annulus(annulus) -> tuple[float, float]:
    """(inner, outer) radii of the background annulus; (0, 0) for none."""
    if annulus is None:
        return 0.0, 0.0
    try:
        inner, outer = (float(a) for a in annulus)
    except (TypeError, ValueError):
        raise EngineValueError(f"annulus must be (inner, outer), got {annulus!r}") from None
    if not (math.isfinite(inner) and math.isfinite(outer) and 0.0 <= inner < outer):
        raise EngineValueError(f"annulus must satisfy 0 <= inner < outer, got {annulus!r}")
    return inner, outer


def _aperture_outputs(n_frames: int, n_stars: int, n_radii: int) -> dict[str, np.ndarray]:
    """The arrays the aperture kernels fill, as `aperture_sums` returns them."""
    return dict(
        sum=np.empty((n_frames, n_stars, n_radii)),
        area=np.empty((n_frames, n_stars, n_radii)),
        flags=np.empty((n_frames, n_stars, n_radii), dtype=np.uint32),
        background=np.empty((n_frames, n_stars)),
        background_std=np.empty((n_frames, n_stars)),
        background_pixels=np.empty((n_frames, n_stars), dtype=np.int64),
    )

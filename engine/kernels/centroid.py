"""Windowed centroids: SExtractor's XWIN/YWIN iteration around given starting positions, bounded.

What this module promises
-------------------------
- `windowed_centroid` returns, for each star, the fixed point of the Gaussian-windowed centroid
  iteration of SExtractor (and sep.winpos):

      x <- x + 2 * sum(w_i (I_i - B) (x_i - x)) / sum(w_i (I_i - B)),  w_i = exp(-r_i^2 / (2 s^2))

  over the pixels whose centres lie within ``WINDOW_NSIGMA * s`` of the current position (the
  factor 2 makes one step exact for a Gaussian star whose sigma equals the window's). It stops
  when a step is shorter than `tolerance`, after `max_iter` steps, when the weighted flux is not
  positive, or when the position wanders more than `max_shift` from its start.
- Coordinates are 0-based with pixel centres on integers: x is the column, y the row.
- Non-finite pixels (NaN for masked ones) are left out of the sums.
- The same numbers as `tests/reference.py::windowed_centroid` (a plain NumPy loop) to ~1e-12 px
  for float64 images and ~1e-5 px for float32 ones.
- Every kernel is a pure function of its arguments: safe to call from several threads on different
  outputs; the thread count is an argument of the one parallel driver.

Status codes (bits of the uint8 `status` output; 0 = converged inside the image):

- ``OFF_IMAGE``: the start is off the image or its window holds no finite pixel.
- ``TRUNCATED``: the final window reaches past the image edge (the position is still returned).
- ``NO_FLUX``: the windowed, background-subtracted flux is not positive.
- ``TOO_FAR``: the iteration moved further than `max_shift` from the start.
- ``NOT_CONVERGED``: `max_iter` steps without a step shorter than `tolerance`.

On OFF_IMAGE, NO_FLUX, TOO_FAR and NOT_CONVERGED (the `FAILED` bits) the returned position is the
starting position, so that a caller can still measure there (forced photometry).

Kernel layout: `_centroid_one` is the scalar core, `_centroid_array` the parallel array driver.
Both trust their inputs: call them only through `windowed_centroid`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from engine.errors import EngineValueError
from engine.kernels._jit import jit, set_threads

__all__ = ["FAILED", "NO_FLUX", "NOT_CONVERGED", "OFF_IMAGE", "TOO_FAR", "TRUNCATED",
           "WINDOW_NSIGMA", "windowed_centroid"]

OFF_IMAGE = 1
TRUNCATED = 2
NO_FLUX = 4
TOO_FAR = 8
NOT_CONVERGED = 16
FAILED = OFF_IMAGE | NO_FLUX | TOO_FAR | NOT_CONVERGED

#: The window's radius in units of its Gaussian sigma (SExtractor's WINPOS_NSIG); the weight at
#: the rim is exp(-8) = 3e-4, so the hard edge costs nothing measurable.
WINDOW_NSIGMA = 4.0


# --------------------------------------------------------------------------------------------
# Scalar core.
# --------------------------------------------------------------------------------------------

@jit
def _window_sums(image, x, y, sigma, background):
    """Weighted sums over the window at (x, y): (sum w, sum w dx, sum w dy, pixels, truncated)."""
    ny, nx = image.shape
    radius = WINDOW_NSIGMA * sigma
    r2max = radius * radius
    inv_two_s2 = 0.5 / (sigma * sigma)
    i0 = int(math.ceil(x - radius))
    i1 = int(math.floor(x + radius))
    j0 = int(math.ceil(y - radius))
    j1 = int(math.floor(y + radius))
    truncated = i0 < 0 or j0 < 0 or i1 > nx - 1 or j1 > ny - 1
    i0 = max(i0, 0)
    j0 = max(j0, 0)
    i1 = min(i1, nx - 1)
    j1 = min(j1, ny - 1)
    sw = 0.0
    swx = 0.0
    swy = 0.0
    count = 0
    for j in range(j0, j1 + 1):
        dy = j - y
        for i in range(i0, i1 + 1):
            dx = i - x
            r2 = dx * dx + dy * dy
            if r2 <= r2max:
                v = image[j, i]
                if math.isfinite(v):
                    w = math.exp(-r2 * inv_two_s2) * (v - background)
                    sw += w
                    swx += w * dx
                    swy += w * dy
                    count += 1
    return sw, swx, swy, count, truncated


@jit
def _centroid_one(image, x0, y0, sigma, background, max_shift, max_iter, tolerance):
    """Windowed centroid of one star from (x0, y0); returns (x, y, status)."""
    ny, nx = image.shape
    if not (-0.5 <= x0 < nx - 0.5 and -0.5 <= y0 < ny - 0.5):
        return x0, y0, OFF_IMAGE
    x = x0
    y = y0
    max_shift2 = max_shift * max_shift
    tolerance2 = tolerance * tolerance
    for _ in range(max_iter):
        sw, swx, swy, count, truncated = _window_sums(image, x, y, sigma, background)
        if count == 0:
            return x0, y0, OFF_IMAGE
        if not sw > 0.0:
            return x0, y0, NO_FLUX
        step_x = 2.0 * swx / sw
        step_y = 2.0 * swy / sw
        x += step_x
        y += step_y
        if (x - x0) * (x - x0) + (y - y0) * (y - y0) > max_shift2:
            return x0, y0, TOO_FAR
        if step_x * step_x + step_y * step_y < tolerance2:
            ri = WINDOW_NSIGMA * sigma
            edge = x - ri < 0.0 or y - ri < 0.0 or x + ri > nx - 1 or y + ri > ny - 1
            return x, y, TRUNCATED if edge else 0
    return x0, y0, NOT_CONVERGED


# --------------------------------------------------------------------------------------------
# Array driver (inputs already validated: image 2-D C-contiguous float32/float64, the rest
# contiguous 1-D float64 of one length, outputs of that length).
# --------------------------------------------------------------------------------------------

@jit(parallel=True)
def _centroid_array(image, x0, y0, sigma, background, max_shift, max_iter, tolerance,
                    out_x, out_y, out_status):
    for k in prange(x0.shape[0]):
        x, y, status = _centroid_one(image, x0[k], y0[k], sigma[k], background[k], max_shift,
                                     max_iter, tolerance)
        out_x[k] = x
        out_y[k] = y
        out_status[k] = status


# --------------------------------------------------------------------------------------------
# The validating entry point.
# --------------------------------------------------------------------------------------------

def _per_star(name: str, value, n: int, *, positive: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    elif arr.shape != (n,):
        raise EngineValueError(f"{name} must be a scalar or have one value per star ({n}), "
                               f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise EngineValueError(f"{name} must be finite")
    if positive and not (arr > 0.0).all():
        raise EngineValueError(f"{name} must be > 0")
    return np.ascontiguousarray(arr)


def windowed_centroid(image, x, y, sigma, *, background=0.0, max_shift: float = math.inf,
                      max_iter: int = 100, tolerance: float = 1e-4, threads: int | None = None,
                      out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
    """Windowed centroids of stars starting from (x, y): see the module docstring.

    Parameters
    ----------
    image : 2-D array
        Pixel values (any real dtype; float32 stays float32, others become float64). Non-finite
        pixels are ignored.
    x, y : 1-D arrays of one length
        Starting positions (0-based, pixel centres on integers). Must be finite.
    sigma : float or 1-D array
        Gaussian window sigma in pixels, > 0 (a star's FWHM / 2.3548 is the natural choice).
    background : float or 1-D array
        Level subtracted from every pixel of a star's window.
    max_shift : float
        Largest allowed distance from the start, > 0 (inf: unbounded).
    max_iter : int
        Most iterations, >= 1.
    tolerance : float
        Stop when a step is shorter than this (pixels), > 0.
    threads : int, optional
        Threads for the parallel driver (default: all Numba has).
    out : (x, y, status), optional
        Preallocated C-contiguous float64, float64 and uint8 arrays of the stars' length.

    Returns
    -------
    (x, y, status): float64, float64, uint8 arrays; status bits as in the module docstring.
    """
    image = _image(image)
    x, y = _start_positions(x, y)
    n = x.shape[0]
    sigma = _per_star("sigma", sigma, n, positive=True)
    background = _per_star("background", background, n)
    max_shift, max_iter, tolerance = _stopping_rule(max_shift, max_iter, tolerance)
    out = _outputs(out, n)
    set_threads(threads)
    _centroid_array(image, x, y, sigma, background, max_shift, max_iter, tolerance, *out)
    return out


def _image(image) -> np.ndarray:
    """A 2-D real image as the kernel takes it: native-order C-contiguous float32 or float64."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise EngineValueError(f"image must be 2-D, got {image.ndim}-D")
    if image.dtype.kind not in "uif":
        raise EngineValueError(f"image must hold real numbers, got dtype {image.dtype}")
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    return np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder("="))


def _start_positions(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise EngineValueError(f"x and y must be 1-D arrays of one length, got shapes "
                               f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise EngineValueError("x and y must be finite")
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _stopping_rule(max_shift, max_iter, tolerance) -> tuple[float, int, float]:
    """When the iteration stops: (max_shift, max_iter, tolerance), checked."""
    max_shift = float(max_shift)
    if not max_shift > 0.0:  # also refuses NaN
        raise EngineValueError(f"max_shift must be > 0, got {max_shift!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise EngineValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    tolerance = float(tolerance)
    if not (tolerance > 0.0 and math.isfinite(tolerance)):
        raise EngineValueError(f"tolerance must be finite and > 0, got {tolerance!r}")
    return max_shift, int(max_iter), tolerance


def _outputs(out, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, status) output arrays for n stars: `out` checked, or new ones."""
    if out is None:
        return np.empty(n), np.empty(n), np.empty(n, dtype=np.uint8)
    kinds = (np.float64, np.float64, np.uint8)
    if (not isinstance(out, tuple) or len(out) != 3
            or any(not isinstance(a, np.ndarray) or a.dtype != k or a.shape != (n,)
                   or not a.flags.c_contiguous or not a.flags.writeable
                   for a, k in zip(out, kinds))):
        raise EngineValueError(
            f"out must be a tuple of writable C-contiguous float64, float64, uint8 arrays "
            f"of length {n}")
    return out

"""Re-centring: each star's windowed centroid measured around its predicted position.

`recentre` bounds the move by `max_shift` (the kernel is `engine.kernels.centroid`), so a star
predicted by a transform cannot wander onto a neighbour.
"""

from __future__ import annotations

import math

import numpy as np

from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.kernels import centroid as _centroid

__all__ = ["recentre"]

_GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


_OFF_FRAME = np.uint32(MeasurementFlag.OFF_FRAME)
_NEAR_EDGE = np.uint32(MeasurementFlag.NEAR_EDGE)
_CENTROID_FAILED = np.uint32(MeasurementFlag.CENTROID_FAILED)


def _local_background(image: np.ndarray, x: np.ndarray, y: np.ndarray, inner: float,
                      outer: float) -> np.ndarray:
    """Median of the pixels whose centres lie in the annulus [inner, outer] around each star
    (rounded centre); NaN where none is finite."""
    r = int(math.ceil(outer))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    rr = np.hypot(dx, dy)
    ring = (rr >= inner) & (rr <= outer)
    dx, dy = dx[ring], dy[ring]
    ny, nx = image.shape
    ix = np.rint(x).astype(np.intp)[:, None] + dx[None, :]
    iy = np.rint(y).astype(np.intp)[:, None] + dy[None, :]
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    values = image[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)].astype(np.float64)
    values[~inside] = np.nan
    out = np.full(len(x), np.nan)
    usable = np.isfinite(values).any(axis=1)
    if usable.any():
        out[usable] = np.nanmedian(values[usable], axis=1)
    return out


def recentre(image, x, y, fwhm, *, max_shift: float = 2.0, background=None,
             threads: int | None = None):
    """Re-centre stars near their predicted positions: windowed centroids, bounded.

    Parameters
    ----------
    image : 2-D array
        The frame (calibrated or bias-subtracted). Non-finite pixels are ignored.
    x, y : 1-D arrays
        Predicted positions (e.g. ``transform.apply(reference_xy)``), 0-based.
    fwhm : float or 1-D array
        Star FWHM in pixels (> 0); the Gaussian window has sigma = fwhm / 2.3548.
    max_shift : float
        A star whose centroid moves further than this from its prediction keeps the prediction
        and is flagged CENTROID_FAILED.
    background : None, float, 1-D array (per star) or 2-D array (a map like the image)
        Level under each star. None: the median of the pixels between 2.5 fwhm + 2 and
        2.5 fwhm + 6 px from each prediction (the largest fwhm when it varies).
    threads : int, optional
        Threads for the centroid kernel.

    Returns
    -------
    (x, y, flags): the re-centred positions (the predictions where re-centring failed) and
    uint32 `engine.flags.MeasurementFlag` bits: OFF_FRAME (prediction off the image),
    NEAR_EDGE (window cut by the edge), CENTROID_FAILED (no flux, moved beyond max_shift, or
    did not converge).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind not in "uif":
        raise EngineValueError(f"image must be a 2-D real array, got shape {image.shape} "
                               f"and dtype {image.dtype}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise EngineValueError(f"x and y must be 1-D arrays of one length, got shapes "
                               f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise EngineValueError("predicted positions must be finite")
    fwhm_arr = np.asarray(fwhm, dtype=np.float64)
    if fwhm_arr.ndim > 1 or (fwhm_arr.ndim == 1 and fwhm_arr.shape != x.shape):
        raise EngineValueError("fwhm must be a scalar or one value per star")
    if not (np.isfinite(fwhm_arr).all() and (fwhm_arr > 0).all()):
        raise EngineValueError("fwhm must be finite and > 0")
    n = len(x)
    if background is None:
        width = float(fwhm_arr.max()) if n else 1.0
        inner = 2.5 * width + 2.0
        level = _local_background(image, x, y, inner, inner + 4.0)
        level = np.where(np.isfinite(level), level, 0.0)
    else:
        level = np.asarray(background, dtype=np.float64)
        if level.ndim == 2:
            if level.shape != image.shape:
                raise EngineValueError(f"background map shape {level.shape} differs from the "
                                       f"image's {image.shape}")
            ny, nx = image.shape
            level = level[np.clip(np.rint(y).astype(np.intp), 0, ny - 1),
                          np.clip(np.rint(x).astype(np.intp), 0, nx - 1)]
    xs, ys, status = _centroid.windowed_centroid(
        image, x, y, fwhm_arr / _GAUSSIAN_FWHM_PER_SIGMA, background=level,
        max_shift=max_shift, threads=threads)
    flags = np.zeros(n, dtype=np.uint32)
    flags[(status & _centroid.OFF_IMAGE) != 0] |= _OFF_FRAME
    flags[(status & _centroid.TRUNCATED) != 0] |= _NEAR_EDGE
    failed = (status & (_centroid.NO_FLUX | _centroid.TOO_FAR | _centroid.NOT_CONVERGED)) != 0
    flags[failed] |= _CENTROID_FAILED
    return xs, ys, flags



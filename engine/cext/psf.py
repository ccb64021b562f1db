"""Validated entry points to the compiled PSF core (engine/cext/include/engine/psf.hpp).

The extension functions `engine.cext._core.psf_*` trust their inputs beyond memory safety; the
functions here check and coerce them first (shapes, dtypes, C order, finite settings, valid
profile shapes) and allocate every output, so nothing reaching C++ can read or write out of
bounds. Call the PSF core only through here (or through engine.psf, which calls these).

What the core promises
----------------------
- Profiles: a unit-flux elliptical Moffat or Gaussian with quadratic form
  q = a dx^2 + 2 b dx dy + c dy^2, normalised exactly over the plane, integrated over each pixel
  (Gauss-Legendre nodes chosen per pixel, ~1e-11 of the pixel's value; an axis-aligned Gaussian
  exactly with erf). Derivatives are analytic.
- Fits: the same minimum as the slow scipy.optimize.least_squares reference in
  tests/reference.py (same pixels, weights and model): to ~1e-6 relative or better with
  tolerance=1e-12, and within ~1e-3 of each parameter's error at the default tolerance (1e-6);
  the covariance is (J^T W J)^-1 at the solution.
- Every call releases the GIL while it computes; results do not depend on the thread count, and
  calls on different outputs are safe from several Python threads.
"""

from __future__ import annotations


import numpy as np

from engine.errors import EngineValueError

from . import _core, _finite, default_threads

__all__ = [
    "BACKGROUNDS",
    "COEFFICIENTS",
    "PROFILES",
    "psf_fit",
    "psf_fit_shape",
    "psf_pixel_grid",
]

#: Profile names and the core's codes.
PROFILES = {"gaussian": 0, "moffat": 1}
#: Local background models and the core's codes.
BACKGROUNDS = {"none": 0, "constant": 1, "plane": 2}
#: Names of the shape coefficients psf_fit_shape returns, in order.
COEFFICIENTS = ("a0", "ax", "ay", "b0", "bx", "by", "c0", "cx", "cy", "beta")

_MAX_BOX = 1000


def _profile(profile: str) -> int:
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise EngineValueError(
            f"model must be one of {sorted(PROFILES)}, got {profile!r}") from None


def _integer(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EngineValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise EngineValueError(f"{name} must be {bound}, got {value}")
    return value


def valid_shapes(shapes: np.ndarray, profile: int) -> np.ndarray:
    """Boolean mask of the rows (a, b, c, beta) of `shapes` that are valid profiles."""
    a, b, c, beta = (shapes[..., k] for k in range(4))
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(shapes).all(axis=-1) & (a > 0) & (c > 0) & (a * c - b * b > 0)
        if profile == PROFILES["moffat"]:
            ok &= beta > 1.0
    return ok


def _frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise EngineValueError(f"frames must be 3-d (frame, y, x), got shape {frames.shape}")
    if frames.dtype not in (np.float32, np.float64):
        frames = frames.astype(np.float64)
    return np.ascontiguousarray(frames)


def _positions(frames: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != frames.shape[0] or y.shape != x.shape:
        raise EngineValueError(
            f"x and y must both have shape (n_frames, n_stars) = ({frames.shape[0]}, n), "
            f"got {x.shape} and {y.shape}")
    return x, y


def _pixel_flags(frames: np.ndarray, pixel_flags) -> np.ndarray | None:
    if pixel_flags is None:
        return None
    pixel_flags = np.asarray(pixel_flags)
    if pixel_flags.shape != frames.shape:
        raise EngineValueError(
            f"pixel_flags must have the frames' shape {frames.shape}, got {pixel_flags.shape}")
    if pixel_flags.dtype != np.uint8:
        if not np.issubdtype(pixel_flags.dtype, np.integer) and pixel_flags.dtype != np.bool_:
            raise EngineValueError(f"pixel_flags must be integer bit flags, got {pixel_flags.dtype}")
        if pixel_flags.size and (pixel_flags.min() < 0 or pixel_flags.max() > 255):
            raise EngineValueError("pixel_flags must fit in uint8")
    return np.ascontiguousarray(pixel_flags, dtype=np.uint8)


def psf_pixel_grid(model: str, shape, x0: float, y0: float, grid: tuple[int, int], *,
                   jacobian: bool = False, allow_separable: bool = True):
    """A unit-flux profile integrated over every pixel of a (ny, nx) grid.

    model: 'moffat' or 'gaussian'; shape: (a, b, c, beta) (beta ignored for the Gaussian);
    (x0, y0): the centre in the grid's pixel coordinates (pixel centres on integers).
    Returns values (ny, nx), and with jacobian=True also the (6, ny, nx) derivatives with respect
    to x0, y0, a, b, c, beta. allow_separable=False forces the quadrature for an axis-aligned
    Gaussian (which is otherwise integrated exactly with erf).
    """
    profile = _profile(model)
    shape = np.asarray(shape, dtype=np.float64).reshape(-1)
    if shape.shape != (4,) or not valid_shapes(shape, profile):
        raise EngineValueError(f"shape must be (a, b, c, beta) with a, c > 0, ac > b^2 "
                               f"(and beta > 1 for Moffat), got {shape!r}")
    x0 = _finite("x0", x0)
    y0 = _finite("y0", y0)
    try:
        ny, nx = (int(n) for n in grid)
    except (TypeError, ValueError):
        raise EngineValueError(f"grid must be (ny, nx), got {grid!r}") from None
    if ny < 0 or nx < 0:
        raise EngineValueError(f"grid must be non-negative, got {(ny, nx)}")
    values = np.empty((ny, nx))
    jac = np.empty((6, ny, nx)) if jacobian else None
    _core.psf_pixel_grid(profile, *map(float, shape), x0, y0, values, jac, bool(allow_separable))
    return (values, jac) if jacobian else values


def psf_fit(frames, x, y, shapes, *, model: str = "moffat", box: int = 4,
            background: str = "constant", fit_positions: bool = False, max_shift: float = 2.0,
            position_snr: float = 3.0, gain: float = 1.0, read_noise: float = 0.0, model_variance: bool = False,
            pixel_flags=None, max_iterations: int = 50, tolerance: float = 1e-6,
            max_group: int = 50, threads: int | None = None) -> dict[str, np.ndarray]:
    """PSF fits of every star on every frame of a block: the compiled core, validated.

    frames: (n_frames, ny, nx) float32 or float64 (other dtypes become float64); x, y:
    (n_frames, n_stars) input positions (non-finite or off the frame: OFF_FRAME, not fitted);
    shapes: (n_frames, n_stars, 4) or (n_stars, 4) or (4,) profile shapes (a, b, c, beta);
    box: fitting box half-width; background: 'none', 'constant' or 'plane'; with fit_positions,
    stars whose flux at the input positions is below position_snr x its error keep their input
    positions (x_err, y_err NaN);
    pixel_flags: uint8 `engine.flags.PixelFlag` bits of the frames' shape; tolerance: the fit
    has converged when a step would lower chi^2 by less than this (1e-6: parameters within ~1e-3
    of their errors of the minimum).

    Returns a dict of (n_frames, n_stars) arrays: flux, flux_err (electrons), x, y, x_err, y_err,
    background (e- per pixel at the star), chi2_reduced, iterations (int32), pixels,
    group_pixels, group (int64) and flags (uint32).
    """
    frames = _frames(frames)
    x, y = _positions(frames, x, y)
    profile = _profile(model)
    n_frames, n_stars = x.shape
    shapes = np.asarray(shapes, dtype=np.float64)
    try:
        shapes = np.ascontiguousarray(np.broadcast_to(shapes, (n_frames, n_stars, 4)))
    except ValueError:
        raise EngineValueError(
            f"shapes must broadcast to (n_frames, n_stars, 4) = {(n_frames, n_stars, 4)}, "
            f"got {shapes.shape}") from None
    if not valid_shapes(shapes, profile).all():
        raise EngineValueError("every shape must have a, c > 0 and ac > b^2 (and beta > 1 for "
                               "Moffat); evaluate a field-varying PSF only where it is valid")
    box = _integer("box", box, 1, _MAX_BOX)
    if background not in BACKGROUNDS:
        raise EngineValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {background!r}")
    max_shift = _finite("max_shift", max_shift, low=0.0, strict=True)
    position_snr = _finite("position_snr", position_snr, low=0.0)
    gain = _finite("gain", gain, low=0.0, strict=True)
    read_noise = _finite("read_noise", read_noise, low=0.0)
    max_iterations = _integer("max_iterations", max_iterations, 1, 100000)
    tolerance = _finite("tolerance", tolerance, low=0.0, strict=True)
    max_group = _integer("max_group", max_group, 1)
    pixel_flags = _pixel_flags(frames, pixel_flags)
    shape = (n_frames, n_stars)
    out = dict(
        flux=np.empty(shape), flux_err=np.empty(shape), x_fit=np.empty(shape),
        y_fit=np.empty(shape), x_err=np.empty(shape), y_err=np.empty(shape),
        background_out=np.empty(shape), chi2_reduced=np.empty(shape),
        iterations=np.empty(shape, dtype=np.int32), pixels=np.empty(shape, dtype=np.int64),
        group_pixels=np.empty(shape, dtype=np.int64), group=np.empty(shape, dtype=np.int64),
        flags=np.empty(shape, dtype=np.uint32),
    )
    _core.psf_photometry(
        frames, pixel_flags, x, y, shapes, profile, box, BACKGROUNDS[background],
        bool(fit_positions), max_shift, position_snr, gain, read_noise, bool(model_variance), max_iterations,
        tolerance, max_group, default_threads(threads), **out)
    out["x"] = out.pop("x_fit")
    out["y"] = out.pop("y_fit")
    out["background"] = out.pop("background_out")
    return out


def psf_fit_shape(frames, x, y, initial, *, model: str = "moffat", box: int = 8,
                  varying: bool = False, fit_beta: bool = True, field=None, gain: float = 1.0,
                  read_noise: float = 0.0, pixel_flags=None, max_iterations: int = 100,
                  tolerance: float = 1e-6, reject: float = 4.0, min_stars: int = 3,
                  threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-frame joint fit of the PSF shape of the given stars: the compiled core, validated.

    frames: (n_frames, ny, nx); x, y: (n_frames, n_stars) PSF stars (NaN: none; stars whose box
    leaves the frame are skipped); initial: (n_frames, 4) or (4,) starting (a, b, c, beta);
    field: (x_centre, y_centre, x_scale, y_scale) of the normalised coordinates the varying
    terms use (default: the frame's centre and half-sizes).

    Returns a dict: coefficients, coefficient_err (n_frames, 10) in `COEFFICIENTS` order,
    chi2_reduced (n_frames,), iterations, stars_used, flags, and used (bool), flux
    (n_frames, n_stars).
    """
    frames = _frames(frames)
    x, y = _positions(frames, x, y)
    profile = _profile(model)
    n_frames, n_stars = x.shape
    initial = np.asarray(initial, dtype=np.float64)
    try:
        initial = np.ascontiguousarray(np.broadcast_to(initial, (n_frames, 4)))
    except ValueError:
        raise EngineValueError(f"initial must broadcast to {(n_frames, 4)}, got {initial.shape}") from None
    if not valid_shapes(initial, profile).all():
        raise EngineValueError("initial shapes must have a, c > 0 and ac > b^2 (and beta > 1)")
    box = _integer("box", box, 1, _MAX_BOX)
    ny, nx = frames.shape[1:]
    if field is None:
        field = ((nx - 1) / 2.0, (ny - 1) / 2.0, max((nx - 1) / 2.0, 1.0), max((ny - 1) / 2.0, 1.0))
    try:
        x_centre, y_centre, x_scale, y_scale = (float(v) for v in field)
    except (TypeError, ValueError):
        raise EngineValueError(f"field must be (x_centre, y_centre, x_scale, y_scale), got {field!r}") from None
    _finite("x_centre", x_centre)
    _finite("y_centre", y_centre)
    _finite("x_scale", x_scale, low=0.0, strict=True)
    _finite("y_scale", y_scale, low=0.0, strict=True)
    gain = _finite("gain", gain, low=0.0, strict=True)
    read_noise = _finite("read_noise", read_noise, low=0.0)
    max_iterations = _integer("max_iterations", max_iterations, 1, 100000)
    tolerance = _finite("tolerance", tolerance, low=0.0, strict=True)
    reject = _finite("reject", reject, low=0.0)
    min_stars = _integer("min_stars", min_stars, 1)
    pixel_flags = _pixel_flags(frames, pixel_flags)
    out = dict(
        coefficients=np.empty((n_frames, 10)), coefficient_err=np.empty((n_frames, 10)),
        chi2_reduced=np.empty(n_frames), iterations=np.empty(n_frames, dtype=np.int32),
        stars_used=np.empty(n_frames, dtype=np.int64), flags=np.empty(n_frames, dtype=np.uint32),
        used=np.empty((n_frames, n_stars), dtype=np.uint8), flux=np.empty((n_frames, n_stars)),
    )
    _core.psf_fit_shape(
        frames, pixel_flags, x, y, initial, profile, box, bool(varying), bool(fit_beta),
        x_centre, y_centre, x_scale, y_scale, gain, read_noise, max_iterations, tolerance,
        reject, min_stars, default_threads(threads), **out)
    out["used"] = out["used"].astype(bool)
    out["field"] = np.array([x_centre, y_centre, x_scale, y_scale])
    return out

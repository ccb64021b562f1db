"""PSF photometry: a per-frame PSF model from bright isolated stars, then a fit of every star.

`fit_psf_model` fits the shape of a frame's point-spread function (elliptical Moffat or Gaussian,
integrated over pixels, optionally varying linearly across the field) jointly to bright, isolated,
unflagged stars. `psf_photometry` fits that PSF to every star of an image: fluxes with positions
held at the inputs (a linear fit), or positions and fluxes; stars whose fitting boxes overlap are
fitted jointly with a local background per group (none, a constant or a plane).
`choose_psf_model` lets a frame's stars choose the profile (Gaussian, Moffat or an empirical
grid, `engine.psf_empirical.EmpiricalPSF`) and whether it varies across the field, with the
fit's quality (`psf_residual_fraction`);
`psf_residual_image` subtracts the fitted stars, showing the ones a star list missed.
`psf_photometry_frames` fits the model and the stars for a block of frames (the cube-level
stage feeds it chunk by chunk) and returns the same table as `engine.aperture_photometry_frames`,
plus `method`, `chi2_reduced` and `iterations`. The fits run in the compiled core (engine/cext/psf.py), in
parallel over groups of stars with the GIL released.

Fits: Levenberg-Marquardt in the compiled core, one small dense system per group of stars whose
fitting boxes overlap; with positions fixed the fit is linear (one solve). With fit_positions,
stars fainter than `position_snr` errors at their input positions (or whose flux turns negative)
keep their input positions, and positions stay within `max_shift` of the inputs (CENTROID_FAILED
where one reaches that bound). A fit stops when a step would lower chi^2 by less than 1e-6.

Units: fluxes and backgrounds are in electrons (image x gain). Weights come from the noise model
    var = read_noise^2 + max(signal, 0)   (at least 1 e-^2 per pixel)
with the signal the pixel's value (default) or, with model_variance=True, the fitted model's (the
fit is then repeated once with those weights, which removes the small low bias of data-weighted
fits of faint stars). flux_err is the 1-sigma error from the covariance (J^T W J)^-1 at the
solution, so it includes the star's and the sky's Poisson noise, the read noise and the
covariance with the background and with blended neighbours.

Table columns (one row per star): star, radius (the fitting box half-width in pixels: the star is
fitted on the (2 radius + 1)^2 pixels centred on its nearest pixel), x, y (fitted, or the
inputs), flux, flux_err, background (the group's fitted background at the star, e- per pixel),
background_std (the noise model's per-pixel sigma at that background), background_pixels (usable
pixels in the group's fit), area (usable pixels in the star's own box), flags
(`engine.flags.MeasurementFlag`), method ('psf'), chi2_reduced (the group's chi^2 per degree of
freedom), iterations (Levenberg-Marquardt steps; 1 for a linear fit).

Flags: OFF_FRAME (no box centre on the image: not fitted), NEAR_EDGE (the box is cut by the
edge), BAD_PIXEL / SATURATED (such pixels in the box were left out of the fit), BLENDED (a group
too large for one fit was cut, so a neighbour's light may be missing from the model), FIT_FAILED
(no solution: too few usable pixels, coincident stars, no PSF for the frame; flux NaN),
FIT_NOT_CONVERGED (stopped at the iteration limit; values kept), CENTROID_FAILED (a fitted
position reached max_shift).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from dataclasses import field as _dataclass_field

import numpy as np
import pyarrow as pa

from engine import checks, psf_empirical
from engine.cext import psf as _psf
from engine.errors import EngineValueError, EngineWarning
from engine.flags import MeasurementFlag, PixelFlag

__all__ = [
    "PSFModel",
    "choose_psf_model",
    "fit_psf_model",
    "fit_psf_models",
    "psf_photometry",
    "psf_photometry_frames",
    "psf_residual_fraction",
    "psf_residual_image",
    "select_psf_stars",
]

#: PSF models: the compiled core's analytic profiles and the empirical grid (engine.psf_empirical).
MODELS = (*_psf.PROFILES, "empirical")
#: PSF stars an empirical grid is built from (at most): each grid node needs several samples.
_EMPIRICAL_STARS = 60
_GAUSSIAN_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_UNUSABLE = int(PixelFlag.BAD | PixelFlag.NONFINITE | PixelFlag.COSMIC_RAY | PixelFlag.SATURATED)


def _width_to_fwhm(model: str, width, beta):
    if model == "moffat":
        return 2.0 * width * np.sqrt(np.power(2.0, 1.0 / beta) - 1.0)
    return _GAUSSIAN_FWHM * width


def _fwhm_to_width(model: str, fwhm, beta):
    if model == "moffat":
        return fwhm / (2.0 * np.sqrt(np.power(2.0, 1.0 / beta) - 1.0))
    return fwhm / _GAUSSIAN_FWHM


def shape_from_parameters(model: str, fwhm, beta=2.5, ellipticity=0.0, angle=0.0) -> np.ndarray:
    """(a, b, c, beta) of a profile given as the renderer (engine.kernels.psf) gives it: `fwhm` the
    geometric mean of the axes' FWHMs, ellipticity 1 - minor/major, angle of the major axis in
    radians from +x towards +y."""
    width = _fwhm_to_width(model, float(fwhm), float(beta))
    ratio = 1.0 - float(ellipticity)
    major, minor = width / math.sqrt(ratio), width * math.sqrt(ratio)
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * c / major ** 2 + s * s / minor ** 2,
                     c * s * (1.0 / major ** 2 - 1.0 / minor ** 2),
                     s * s / major ** 2 + c * c / minor ** 2, float(beta)])


def parameters_from_shape(model: str, shape) -> dict[str, float]:
    """fwhm, ellipticity, angle (radians, in (-pi/2, pi/2]) and beta of a shape (a, b, c, beta)."""
    a, b, c, beta = (float(v) for v in shape)
    mean, spread = 0.5 * (a + c), math.hypot(0.5 * (a - c), b)
    major, minor = 1.0 / math.sqrt(mean - spread), 1.0 / math.sqrt(mean + spread)
    angle = 0.5 * math.atan2(-2.0 * b, c - a) if spread > 0 else 0.0
    if angle <= -math.pi / 2:
        angle += math.pi
    width = math.sqrt(major * minor)
    return {"fwhm": float(_width_to_fwhm(model, width, beta)), "ellipticity": 1.0 - minor / major,
            "angle": angle, "beta": beta if model == "moffat" else math.nan}


@dataclass(frozen=True, eq=False)
class PSFModel:
    """A frame's PSF: profile, shape coefficients (`engine.cext.psf.COEFFICIENTS` order) and fit
    diagnostics.

    The shape at (x, y) is a = a0 + ax u + ay v (b, c alike) with u = (x - x_centre) / x_scale,
    v = (y - y_centre) / y_scale from `field`; a constant PSF has the x and y terms 0. Build one by
    hand with `PSFModel.from_parameters`, or fit it with `fit_psf_model`.
    """

    model: str
    coefficients: np.ndarray
    field: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    coefficient_err: np.ndarray | None = None
    chi2_reduced: float = math.nan
    stars_used: int = 0
    iterations: int = 0
    flags: int = 0
    stars: np.ndarray = _dataclass_field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self):
        if self.model not in _psf.PROFILES:
            raise EngineValueError(f"model must be one of {sorted(_psf.PROFILES)}, got {self.model!r}")
        coefficients = np.array(self.coefficients, dtype=np.float64).reshape(-1)
        if coefficients.shape != (10,):
            raise EngineValueError(f"coefficients must have 10 values, got {coefficients.shape}")
        object.__setattr__(self, "coefficients", coefficients)
        if not self.failed and not _psf.valid_shapes(coefficients[[0, 3, 6, 9]],
                                                     _psf.PROFILES[self.model]):
            raise EngineValueError(f"the PSF's constant terms are not a valid shape: {coefficients!r}")

    @classmethod
    def from_parameters(cls, model: str = "moffat", fwhm: float = 3.0, beta: float = 2.5,
                        ellipticity: float = 0.0, angle: float = 0.0) -> "PSFModel":
        """A constant PSF from its FWHM (pixels, geometric mean of the axes), Moffat beta,
        ellipticity (1 - minor/major) and angle (radians, major axis from +x towards +y)."""
        if model not in _psf.PROFILES:
            raise EngineValueError(f"model must be one of {sorted(_psf.PROFILES)}, got {model!r}")
        if not (math.isfinite(fwhm) and fwhm > 0):
            raise EngineValueError(f"fwhm must be finite and > 0, got {fwhm!r}")
        if model == "moffat" and not (math.isfinite(beta) and beta > 1):
            raise EngineValueError(f"beta must be > 1, got {beta!r}")
        if not (0.0 <= ellipticity < 1.0):
            raise EngineValueError(f"ellipticity must be in [0, 1), got {ellipticity!r}")
        a, b, c, beta = shape_from_parameters(model, fwhm, beta, ellipticity, angle)
        return cls(model, np.array([a, 0, 0, b, 0, 0, c, 0, 0, beta]))

    @property
    def failed(self) -> bool:
        return bool(self.flags & MeasurementFlag.FIT_FAILED)

    @property
    def varying(self) -> bool:
        return bool(np.any(self.coefficients[[1, 2, 4, 5, 7, 8]] != 0))

    def parameters(self, x: float | None = None, y: float | None = None) -> dict[str, float]:
        """fwhm, ellipticity, angle and beta at (x, y) (default: the field centre)."""
        if x is None or y is None:
            return parameters_from_shape(self.model, self.coefficients[[0, 3, 6, 9]])
        return parameters_from_shape(self.model, self.shape_at([x], [y])[0])

    @property
    def fwhm(self) -> float:
        return self.parameters()["fwhm"]

    def noise_area(self, box: int, x: float | None = None, y: float | None = None) -> float:
        """The fit's noise-equivalent area in pixels, 1 / sum(p^2) over the (2 box + 1)^2 box of
        a star centred on a pixel at (x, y) (default: the field centre): a sky-limited flux
        fitted with this PSF has variance noise_area x the per-pixel variance."""
        shape = (self.coefficients[[0, 3, 6, 9]] if x is None or y is None
                 else self.shape_at([x], [y])[0])
        side = 2 * int(box) + 1
        p = _psf.psf_pixel_grid(self.model, shape, float(box), float(box), (side, side))
        return float(1.0 / np.sum(p * p))

    def shape_at(self, x, y) -> np.ndarray:
        """(n, 4) shapes (a, b, c, beta) at positions x, y. Where a field-varying model is not a
        valid profile (extrapolated far outside the stars it was fitted to), its constant terms."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x_centre, y_centre, x_scale, y_scale = self.field
        with np.errstate(invalid="ignore"):
            u = np.nan_to_num((x - x_centre) / x_scale)
            v = np.nan_to_num((y - y_centre) / y_scale)
        k = self.coefficients
        shapes = np.stack([k[0] + k[1] * u + k[2] * v, k[3] + k[4] * u + k[5] * v,
                           k[6] + k[7] * u + k[8] * v, np.full(u.shape, k[9])], axis=-1)
        bad = ~_psf.valid_shapes(shapes, _psf.PROFILES[self.model])
        if bad.any():
            shapes[bad] = k[[0, 3, 6, 9]]
        return shapes


#: What `psf_photometry_frames` and the residual functions take as a PSF.
_MODEL_TYPES = (PSFModel, psf_empirical.EmpiricalPSF)


# ------------------------------------------------------------------------------------------------
# Choosing and sizing: PSF stars, a first FWHM, default boxes
# ------------------------------------------------------------------------------------------------

def _box_centres(x, y):
    with np.errstate(invalid="ignore"):
        return np.ceil(x - 0.5), np.ceil(y - 0.5)


def select_psf_stars(image, x, y, *, box: int, pixel_flags=None, isolation: float | None = None,
                     max_stars: int = 30) -> np.ndarray:
    """Indices of the stars fit to define a PSF: bright, isolated, unflagged, wholly on the image.

    A candidate's fitting box ((2 box + 1)^2 pixels) must lie on the image and hold no flagged
    (BAD, SATURATED, NONFINITE, COSMIC_RAY) or non-finite pixel; no other star may lie within
    `isolation` pixels (default 2 box; relaxed to box, then 0, when fewer than 3 stars qualify).
    Of those, the `max_stars` with the highest peak above the median of their box's border.
    """
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    ny, nx = image.shape
    cx, cy = _box_centres(x, y)
    inside = (np.isfinite(x) & np.isfinite(y) & (cx - box >= 0) & (cy - box >= 0)
              & (cx + box <= nx - 1) & (cy + box <= ny - 1))
    index = np.flatnonzero(inside)
    if index.size == 0:
        return index
    # Candidates' boxes as stamps (chunks of (n, 2 box + 1, 2 box + 1)): only these pixels are read.
    offsets = np.arange(-box, box + 1)
    flags = None if pixel_flags is None else np.asarray(pixel_flags)
    clean = np.zeros(index.size, dtype=bool)
    peak = np.zeros(index.size)
    chunk = max(1, 4_000_000 // offsets.size ** 2)
    for start in range(0, index.size, chunk):
        part = index[start:start + chunk]
        rows = cy[part].astype(np.int64)[:, None, None] + offsets[None, :, None]
        columns = cx[part].astype(np.int64)[:, None, None] + offsets[None, None, :]
        stamps = image[rows, columns].astype(np.float64)
        bad = ~np.isfinite(stamps)
        if flags is not None:
            bad |= (flags[rows, columns].astype(np.int64) & _UNUSABLE) != 0
        clean[start:start + chunk] = ~bad.any(axis=(1, 2))
        border = np.concatenate([stamps[:, 0, :], stamps[:, -1, :], stamps[:, 1:-1, 0],
                                 stamps[:, 1:-1, -1]], axis=1)
        with np.errstate(invalid="ignore"):
            peak[start:start + chunk] = stamps[:, box, box] - np.median(border, axis=1)
    index, peak = index[clean], peak[clean]
    if index.size == 0:
        return index
    finite_all = np.isfinite(x) & np.isfinite(y)
    if finite_all.sum() > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.c_[x[finite_all], y[finite_all]])
        nearest = tree.query(np.c_[x[index], y[index]], k=2)[0][:, 1]
    else:
        nearest = np.full(index.size, np.inf)
    limits = [2.0 * box, float(box), 0.0] if isolation is None else [float(isolation)]
    for limit in limits:
        chosen = (nearest > limit) & (peak > 0)
        if chosen.sum() >= 3 or limit == limits[-1]:
            break
    index, peak = index[chosen], peak[chosen]
    order = np.argsort(-peak, kind="stable")[:max_stars]
    return np.sort(index[order])


def estimate_fwhm(image, x, y, *, max_stars: int = 20) -> float:
    """A first FWHM (pixels) from adaptive Gaussian-weighted second moments of the brightest stars.

    Each star's weight width is iterated to match its profile (the weighted moment of a Gaussian
    of sigma s with weight sigma w is s^2 w^2 / (s^2 + w^2)); the median over stars is returned.
    Meant as a starting point for `fit_psf_model`, good to ~10-20%.
    """
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    radius = 10
    index = select_psf_stars(image, x, y, box=radius, isolation=radius, max_stars=max_stars)
    if index.size == 0:
        index = select_psf_stars(image, x, y, box=5, isolation=0.0, max_stars=max_stars)
        radius = 5
    if index.size == 0:
        raise EngineValueError("no star lies far enough inside the image to estimate its FWHM")
    estimates = []
    offsets = np.arange(-radius, radius + 1)
    for s in index:
        cx, cy = int(math.ceil(x[s] - 0.5)), int(math.ceil(y[s] - 0.5))
        stamp = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1].astype(np.float64)
        border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
        data = stamp - np.median(border)
        dx = (cx + offsets - x[s])[None, :]
        dy = (cy + offsets - y[s])[:, None]
        r2 = dx * dx + dy * dy
        sigma = 1.5
        for _ in range(20):
            weight = np.exp(-0.5 * r2 / sigma ** 2) * data
            total = weight.sum()
            if not total > 0:
                break
            moment = (weight * r2).sum() / (2.0 * total)
            if not 0 < moment < sigma ** 2:
                break
            new = math.sqrt(moment * sigma ** 2 / (sigma ** 2 - moment))
            new = min(max(new, 0.3), radius / 2.0)
            if abs(new - sigma) < 1e-4:
                sigma = new
                break
            sigma = new
        estimates.append(_GAUSSIAN_FWHM * sigma)
    return float(np.median(estimates))


def _typical_largest(fwhms: np.ndarray) -> float:
    """The largest of a block's FWHMs that is not more than twice their median (one frame's
    runaway estimate must not size every frame's boxes)."""
    median = float(np.median(fwhms))
    return float(np.max(fwhms[fwhms <= 2.0 * median]))


def default_box(fwhm: float, factor: float = 1.5) -> int:
    """A fitting box half-width (pixels) for a PSF of this FWHM: ceil(factor x fwhm), at least 2."""
    return int(max(2, math.ceil(factor * fwhm)))


# ------------------------------------------------------------------------------------------------
# The PSF model
# ------------------------------------------------------------------------------------------------

def fit_psf_models(frames, x, y, *, model: str = "moffat", fwhm: float | None = None,
                   beta: float = 2.5, varying: bool = False, fit_beta: bool = True,
                   gain: float = 1.0, read_noise: float = 0.0, pixel_flags=None,
                   box: int | None = None, max_stars: int = 30, isolation: float | None = None,
                   reject: float = 4.0, threads: int | None = None) -> list[PSFModel]:
    """`fit_psf_model` for each frame of a block (frame, y, x) with per-frame positions
    (n_frames, n_stars); one compiled call, in parallel over frames. A frame whose fit fails gets
    a PSFModel with FIT_FAILED in its flags (and NaN coefficients) rather than an exception."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise EngineValueError(f"frames must be 3-d (frame, y, x), got shape {frames.shape}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != frames.shape[0] or y.shape != x.shape:
        raise EngineValueError(f"x and y must have shape (n_frames, n_stars), got {x.shape}, {y.shape}")
    if model not in MODELS:
        raise EngineValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if pixel_flags is not None:
        pixel_flags = np.asarray(pixel_flags)
        if pixel_flags.shape != frames.shape:
            raise EngineValueError(
                f"pixel_flags must have the frames' shape {frames.shape}, got {pixel_flags.shape}")
    if isinstance(max_stars, bool) or not isinstance(max_stars, (int, np.integer)) or max_stars < 1:
        raise EngineValueError(f"max_stars must be a positive integer, got {max_stars!r}")
    n_frames = frames.shape[0]
    guesses = []
    for f in range(n_frames):
        if fwhm is not None:
            guesses.append(float(fwhm))
            continue
        try:
            guesses.append(estimate_fwhm(frames[f], x[f], y[f]))
        except EngineValueError:
            guesses.append(math.nan)
    guesses = np.array(guesses)
    if not np.all(np.isfinite(guesses) & (guesses > 0)):
        if fwhm is not None or not np.any(np.isfinite(guesses)):
            raise EngineValueError(f"fwhm must be finite and > 0 (no star to estimate it from), "
                                   f"got {fwhm!r}")
        guesses = np.where(np.isfinite(guesses), guesses, np.nanmedian(guesses))
    if model == "empirical":
        return [_empirical_model(frames[f], x[f], y[f], guesses[f], gain=gain,
                                 read_noise=read_noise, isolation=isolation,
                                 pixel_flags=None if pixel_flags is None else pixel_flags[f])
                for f in range(n_frames)]
    if box is None:
        box = default_box(_typical_largest(guesses), 2.5)
    min_stars = 10 if varying else 3
    psf_x = np.full((n_frames, max_stars), np.nan)
    psf_y = np.full((n_frames, max_stars), np.nan)
    chosen = []
    for f in range(n_frames):
        index = select_psf_stars(frames[f], x[f], y[f], box=box,
                                 pixel_flags=None if pixel_flags is None else pixel_flags[f],
                                 isolation=isolation, max_stars=max_stars)
        chosen.append(index)
        psf_x[f, :index.size] = x[f, index]
        psf_y[f, :index.size] = y[f, index]
    initial = np.array([shape_from_parameters(model, g, beta) for g in guesses])
    fitted = _psf.psf_fit_shape(frames, psf_x, psf_y, initial, model=model, box=box,
                                varying=varying, fit_beta=fit_beta, gain=gain,
                                read_noise=read_noise, pixel_flags=pixel_flags, reject=reject,
                                min_stars=min(min_stars, max_stars), threads=threads)
    models = []
    field = tuple(float(v) for v in fitted["field"])
    for f in range(n_frames):
        used = chosen[f][fitted["used"][f, :chosen[f].size]]
        models.append(PSFModel(
            model, fitted["coefficients"][f], field, fitted["coefficient_err"][f],
            float(fitted["chi2_reduced"][f]), int(fitted["stars_used"][f]),
            int(fitted["iterations"][f]), int(fitted["flags"][f]), used))
    return models


def _empirical_model(image, x, y, fwhm, *, gain, read_noise, isolation, pixel_flags):
    """One frame's `EmpiricalPSF` from up to _EMPIRICAL_STARS PSF stars whose cut-outs reach
    the grid's edge (failed, FIT_FAILED, with fewer than 5)."""
    radius = math.ceil(2.5 * fwhm)
    # Neighbours are fitted with each PSF star: only those closer than the grid's reach are
    # too close.
    stars = select_psf_stars(image, x, y, box=radius + 4, pixel_flags=pixel_flags,
                             isolation=float(radius) if isolation is None else isolation,
                             max_stars=_EMPIRICAL_STARS)
    return psf_empirical.build_empirical_psf(
        np.asarray(image, dtype=np.float64) * gain, x, y, stars, fwhm=fwhm,
        read_noise=read_noise, pixel_flags=pixel_flags)


def fit_psf_model(image, x, y=None, *, model: str = "moffat", fwhm: float | None = None,
                  beta: float = 2.5, varying: bool = False, fit_beta: bool = True,
                  gain=1.0, read_noise: float = 0.0, pixel_flags=None,
                  box: int | None = None, max_stars: int = 30, isolation: float | None = None,
                  reject: float = 4.0, threads: int | None = None) -> PSFModel:
    """Fit a frame's PSF to its bright, isolated, unsaturated stars.

    Parameters
    ----------
    image : 2-d array (y, x), calibrated, background included or not (each PSF star gets its own
        constant background); or a masked array, NDData / CCDData or Quantity, as
        `psf_photometry` takes.
    x, y : 1-d arrays of star positions, 0-based (x = column), or x alone as an (N, 2) array;
        all the frame's known stars (the isolation test needs the neighbours too);
        `select_psf_stars` picks the PSF stars.
    model : 'moffat' or 'gaussian' (elliptical; pixel-integrated), or 'empirical' (an
        `engine.psf_empirical.EmpiricalPSF` grid built from up to 60 PSF stars, neighbours
        within the grid's reach fitted with them; needs 5; fwhm sizes its grid, ceil(2.5 fwhm)
        pixels either side; box, varying, beta, fit_beta and reject do not apply).
    fwhm : a first FWHM guess in pixels (default: `estimate_fwhm`); beta: Moffat's first beta.
    varying : also fit linear x and y terms of the shape across the field (needs >= 10 stars).
    fit_beta : fit Moffat's beta (else hold it at `beta`).
    gain, read_noise : e-/ADU and e-; pixel_flags : optional uint8 PixelFlag mask.
    box : each PSF star is fitted on its (2 box + 1)^2 box (default ceil(2.5 fwhm)).
    max_stars, isolation : see `select_psf_stars`; reject : stars whose reduced chi^2 exceeds
        reject x max(median, 1) are dropped and the fit repeated once (0: never).

    Returns
    -------
    PSFModel. Raises EngineValueError if no PSF can be fitted (too few usable stars, a singular
    fit).
    """
    given = checks.image_input(image, gain=gain, pixel_flags=pixel_flags)
    image, gain = given.data, given.gain
    x, y = checks.positions(x, y)
    flags = None if given.pixel_flags is None else given.pixel_flags[None]
    result = fit_psf_models(image[None], x[None], y[None], model=model, fwhm=fwhm, beta=beta,
                            varying=varying, fit_beta=fit_beta, gain=gain, read_noise=read_noise,
                            pixel_flags=flags, box=box, max_stars=max_stars, isolation=isolation,
                            reject=reject, threads=threads)[0]
    if result.failed:
        need = 5 if model == "empirical" else 10 if varying else 3
        raise EngineValueError(
            f"no {model} PSF could be fitted: {result.stars_used} usable star(s) of {x.size} "
            f"(need {need} bright, isolated stars whose boxes hold no flagged "
            "pixel and lie on the image)")
    return result


#: A model with more freedom (Moffat over Gaussian, a field-varying shape over a constant one)
#: is taken only when it lowers the PSF stars' reduced chi^2 by more than this fraction.
_BETTER = 0.02


def choose_psf_model(image, x, y, *, profiles=("gaussian", "moffat", "empirical"),
                     gain: float = 1.0,
                     read_noise: float = 0.0, pixel_flags=None,
                     threads: int | None = None) -> tuple[PSFModel, dict]:
    """The PSF model a frame's bright isolated stars support, and how it was chosen.

    Each of `profiles` is fitted: a Gaussian (exact for Gaussian seeing, and the beta -> infinity
    limit of a Moffat) and a Moffat, kept only when its reduced chi^2 is lower by more than 2%.
    With 20 or more PSF stars the chosen profile is refitted with a linear x, y shape, kept on
    the same rule. Last an empirical grid (`engine.psf_empirical`), kept on the same rule with
    its reduced chi^2 on stars it was not built from (`held_out_chi2`; on the stars it was
    built from it would fit their noise too). Returns (model, report) with report holding
    `model`, `varying`, the candidates' reduced chi^2, `residual_fraction` (see
    `psf_residual_fraction`), `fwhm`, `beta` (Moffat only) and `stars_used`. Raises
    EngineValueError when no candidate can be fitted.
    """
    kwargs = {"gain": gain, "read_noise": read_noise, "pixel_flags": pixel_flags,
              "threads": threads}
    fitted = {}
    for name in profiles:
        try:
            fitted[name] = fit_psf_model(image, x, y, model=name, **kwargs)
        except EngineValueError as exc:
            why = str(exc)
    if not fitted:
        raise EngineValueError(f"no PSF model could be fitted: {why}")
    chi2 = {name: m.chi2_reduced for name, m in fitted.items()}
    chosen = fitted.get("gaussian") or fitted.get("moffat") or fitted["empirical"]
    if "moffat" in fitted and fitted["moffat"].chi2_reduced < (1 - _BETTER) * chosen.chi2_reduced:
        chosen = fitted["moffat"]
    if chosen.model != "empirical" and chosen.stars_used >= 20:
        try:
            varying = fit_psf_model(image, x, y, model=chosen.model, varying=True, **kwargs)
        except EngineValueError:
            varying = None
        if varying is not None:
            chi2[f"{chosen.model} varying"] = varying.chi2_reduced
            if varying.chi2_reduced < (1 - _BETTER) * chosen.chi2_reduced:
                chosen = varying
    empirical = fitted.get("empirical")
    if empirical is not None:
        chi2["empirical"] = psf_empirical.held_out_chi2(
            np.asarray(image, dtype=np.float64) * gain, x, y, empirical.stars, fwhm=empirical.fwhm,
            read_noise=read_noise, pixel_flags=pixel_flags)
        if chosen is empirical or chi2["empirical"] < (1 - _BETTER) * chosen.chi2_reduced:
            chosen = empirical
    parameters = chosen.parameters()
    report = {"model": chosen.model, "varying": chosen.varying,
              "chi2_reduced": {k: float(v) for k, v in chi2.items()},
              "residual_fraction": psf_residual_fraction(image, x, y, chosen, gain=gain,
                                                         read_noise=read_noise, threads=threads),
              "fwhm": parameters["fwhm"],
              "beta": parameters["beta"] if chosen.model == "moffat" else None,
              "stars_used": chosen.stars_used}
    return chosen, report


def _stamp(psf, x, y, x0, y0, side) -> np.ndarray:
    """A unit star at image position (x, y) (where a varying PSF is evaluated), rendered at
    (x0, y0) on a side x side grid of pixels."""
    if isinstance(psf, psf_empirical.EmpiricalPSF):
        return psf.stamp(x0, y0, (side, side))
    return _psf.psf_pixel_grid(psf.model, psf.shape_at([x], [y])[0], x0, y0, (side, side))


def psf_residual_fraction(image, x, y, psf, *, gain: float = 1.0,
                          read_noise: float = 0.0, threads: int | None = None) -> float:
    """Median over the model's PSF stars of sum |data - model| / flux in each star's fitting box
    (positions, flux and a constant background fitted): ~0 for a model that fits noiseless
    stars exactly; noise adds ~sqrt(box pixels x pixel variance) / flux."""
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    stars = psf.stars
    if stars.size == 0:
        return math.nan
    box = default_box(psf.fwhm)
    table = psf_photometry(image, x[stars], y[stars], psf=psf, fit_positions=True, gain=gain,
                           read_noise=read_noise, box=box, threads=threads).to_pydict()
    side = 2 * box + 1
    fractions = []
    for k in range(stars.size):
        flux, sx, sy = table["flux"][k], table["x"][k], table["y"][k]
        cx, cy = math.ceil(x[stars[k]] - 0.5), math.ceil(y[stars[k]] - 0.5)
        if not (flux > 0) or table["flags"][k]:
            continue
        data = image[cy - box:cy + box + 1, cx - box:cx + box + 1].astype(np.float64) * gain
        model = flux * _stamp(psf, sx, sy, sx - cx + box, sy - cy + box, side)
        fractions.append(np.abs(data - table["background"][k] - model).sum() / flux)
    return float(np.median(fractions)) if fractions else math.nan


def psf_residual_image(image, x, y, psf, *, gain: float = 1.0, read_noise: float = 0.0,
                       threads: int | None = None) -> np.ndarray:
    """The image (its own units, float64) less every star at (x, y), fitted with `psf` (positions
    and fluxes, neighbours together), each rendered over its fitting box: what is left shows
    the stars the list missed, such as a neighbour that detection merged with a brighter star."""
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    box = default_box(psf.fwhm)
    table = psf_photometry(image, x, y, psf=psf, fit_positions=True, gain=gain,
                           read_noise=read_noise, box=box, threads=threads).to_pydict()
    residual = np.array(image, dtype=np.float64)
    ny, nx = residual.shape
    side = 2 * box + 1
    for flux, sx, sy in zip(table["flux"], table["x"], table["y"]):
        if not (np.isfinite(flux) and np.isfinite(sx) and np.isfinite(sy)):
            continue
        cx, cy = math.ceil(sx - 0.5), math.ceil(sy - 0.5)
        x0, y0 = max(cx - box, 0), max(cy - box, 0)
        x1, y1 = min(cx + box + 1, nx), min(cy + box + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        stamp = _stamp(psf, sx, sy, sx - cx + box, sy - cy + box, side)
        residual[y0:y1, x0:x1] -= (flux / gain) * stamp[y0 - cy + box:y1 - cy + box,
                                                         x0 - cx + box:x1 - cx + box]
    return residual


# ------------------------------------------------------------------------------------------------
# Photometry
# ------------------------------------------------------------------------------------------------

def psf_photometry(image, x, y=None, *, model: str = "moffat", fit_positions: bool = False,
                   psf: PSFModel | None = None, gain=1.0, read_noise: float = 0.0,
                   pixel_flags=None, box: int | None = None, background: str = "constant",
                   model_variance: bool = False, max_shift: float | None = None,
                   position_snr: float = 3.0, max_group: int = 50,
                   threads: int | None = None) -> pa.Table:
    """PSF photometry of the stars at (x, y) on one image.

    Parameters
    ----------
    image : 2-d array (y, x), calibrated (float32 or float64 kept as is); or a NumPy masked
        array, NDData / CCDData or Quantity (masked pixels left out like bad pixels; unit
        electron or adu as in `engine.aperture_photometry`). An NDData's uncertainty is not
        used: the fit's weights come from gain and read_noise (an EngineWarning says so).
    x, y : 1-d arrays of star positions, 0-based, pixel centres on integers (x = column); or x
        alone as one (N, 2) array of (x, y).
    model : 'moffat', 'gaussian' or 'empirical'; used when `psf` is None.
    fit_positions : fit positions and fluxes (else fluxes only, positions held at x, y).
    psf : a PSFModel (`fit_psf_model`, `PSFModel.from_parameters`) or an
        `engine.psf_empirical.EmpiricalPSF` (`fit_psf_model(model='empirical')`); default:
        fitted to this image's bright isolated stars among x, y.
    gain, read_noise : e-/ADU (a number or a Quantity in electron / adu) and e- (fluxes come out
        in electrons).
    pixel_flags : optional uint8 `engine.flags.PixelFlag` mask of the image's shape; flagged
        pixels are left out of the fits.
    box : fitting box half-width in pixels (default ceil(1.5 FWHM), at least 2).
    background : 'constant' (default), 'plane' or 'none' (the image is background-subtracted).
    model_variance : weights from the model instead of the data (the fit is repeated once).
    max_shift : fitted positions stay within this many pixels of the inputs (default: the FWHM,
        at least 1); a position that reaches the bound flags CENTROID_FAILED.
    position_snr : with fit_positions, stars whose flux at the input position is below this many
        errors keep their input positions (as do stars whose flux turns negative); 0 fits all.
    max_group : larger groups of overlapping stars are fitted in chunks (flagged BLENDED).
    threads : threads for the compiled fit (default: all cores of this process).

    Returns
    -------
    pyarrow.Table, one row per star, with the columns of `engine.aperture_photometry` plus method,
    chi2_reduced and iterations (see the module docstring). When no PSF can be fitted to the
    image (too few usable stars), every row is flagged FIT_FAILED with NaN fluxes and an
    EngineWarning says why.
    """
    given = checks.image_input(image, gain=gain, pixel_flags=pixel_flags)
    x, y = checks.positions(x, y)
    flags_block = None if given.pixel_flags is None else given.pixel_flags[None]
    if given.sigma is not None:
        warnings.warn("the image's uncertainty is not used by PSF fits: their weights come from "
                      "gain and read_noise", EngineWarning, stacklevel=2)
    if psf is None:
        psf = fit_psf_models(given.data[None], x[None], y[None], model=model, gain=given.gain,
                             read_noise=read_noise, pixel_flags=flags_block, threads=threads)[0]
        if psf.failed:
            warnings.warn(_psf_failure(psf, x.size), EngineWarning, stacklevel=2)
    table = psf_photometry_frames(
        given.data[None], x[None], y[None], model=model, fit_positions=fit_positions,
        psf=[psf], gain=given.gain, read_noise=read_noise,
        pixel_flags=flags_block, box=box, background=background, model_variance=model_variance,
        max_shift=max_shift, position_snr=position_snr, max_group=max_group, threads=threads)
    return table.drop_columns(["frame"])


def _psf_failure(model: PSFModel, n_stars: int) -> str:
    """Why no PSF could be fitted to an image, in words for the warning."""
    if model.stars_used < 3:
        why = (f"{model.stars_used} of the {n_stars} star(s) could serve as PSF stars (bright, "
               f"isolated, unflagged, wholly on the image) and at least 3 are needed")
    else:
        why = f"the fit to {model.stars_used} PSF stars gave no valid shape"
    return (f"no PSF could be fitted to the image: {why}; every star is flagged FIT_FAILED. "
            f"Give psf= (PSFModel.from_parameters, or fit_psf_model on a frame with more stars)")


def psf_photometry_frames(frames, x, y, *, model: str = "moffat", fit_positions: bool = False,
                          psf=None, gain: float = 1.0, read_noise: float = 0.0, pixel_flags=None,
                          box: int | None = None, background: str = "constant",
                          model_variance: bool = False, max_shift: float | None = None,
                          position_snr: float = 3.0, max_group: int = 50,
                          threads: int | None = None) -> pa.Table:
    """`psf_photometry` for a block of frames (frame, y, x) with per-frame positions.

    x, y have shape (n_frames, n_stars); psf is None (fitted per frame, `fit_psf_models`), one
    PSFModel for every frame, or a sequence of one PSFModel per frame. A frame whose PSF could not
    be fitted gives FIT_FAILED rows. The table gains a `frame` column (index into the block) and
    has one row per (frame, star), frame slowest.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise EngineValueError(f"frames must be 3-d (frame, y, x), got shape {frames.shape}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != frames.shape[0] or y.shape != x.shape:
        raise EngineValueError(f"x and y must have shape (n_frames, n_stars), got {x.shape}, {y.shape}")
    gain = checks.gain_value("gain", gain)
    read_noise = float(read_noise)
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise EngineValueError(f"read_noise must be finite and >= 0, got {read_noise!r}")
    if background not in _psf.BACKGROUNDS:
        raise EngineValueError(
            f"background must be one of {sorted(_psf.BACKGROUNDS)}, got {background!r}")
    n_frames, n_stars = x.shape
    if psf is None:
        models = fit_psf_models(frames, x, y, model=model, gain=gain, read_noise=read_noise,
                                pixel_flags=pixel_flags, threads=threads)
    elif isinstance(psf, _MODEL_TYPES):
        models = [psf] * n_frames
    else:
        models = list(psf)
        if len(models) != n_frames or not all(isinstance(m, _MODEL_TYPES) for m in models):
            raise EngineValueError(f"psf must be a PSFModel or EmpiricalPSF, or a sequence of "
                                   f"{n_frames} of them")
    kinds = {m.model for m in models}
    if len(kinds) != 1:
        raise EngineValueError(f"every frame's PSF must have the same profile, got {sorted(kinds)}")
    kind = kinds.pop()
    failed = np.array([m.failed for m in models])
    good = [m for m in models if not m.failed]
    fwhm = _typical_largest(np.array([m.fwhm for m in good])) if good else 3.0
    if box is None:
        box = default_box(fwhm)
    if max_shift is None:
        max_shift = max(1.0, fwhm)
    fit_x, fit_y = x, y
    if failed.any():  # nothing to fit on frames without a PSF
        fit_x = np.where(failed[:, None], np.nan, x)
        fit_y = np.where(failed[:, None], np.nan, y)
    settings = {"box": box, "background": background, "fit_positions": fit_positions,
                "max_shift": max_shift, "position_snr": position_snr, "gain": gain,
                "read_noise": read_noise, "model_variance": model_variance,
                "pixel_flags": pixel_flags, "max_group": max_group}
    if kind == "empirical":
        result = psf_empirical.fit_frames(frames, fit_x, fit_y, models, **settings)
    else:
        shapes = np.empty((n_frames, n_stars, 4))
        fallback = good[0] if good else PSFModel.from_parameters(kind)
        for f, m in enumerate(models):
            shapes[f] = (fallback if m.failed else m).shape_at(x[f], y[f])
        result = _psf.psf_fit(frames, fit_x, fit_y, shapes, model=kind, threads=threads,
                              **settings)
    flags = result["flags"]
    if failed.any():
        flags[failed] = int(MeasurementFlag.FIT_FAILED)
        result["x"][failed] = x[failed]
        result["y"][failed] = y[failed]
    bkg = result["background"]
    with np.errstate(invalid="ignore"):
        background_std = np.sqrt(read_noise ** 2 + np.maximum(bkg, 0.0))
    shape = (n_frames, n_stars)
    frame_index = np.broadcast_to(np.arange(n_frames)[:, None], shape).ravel()
    star_index = np.broadcast_to(np.arange(n_stars)[None, :], shape).ravel()
    n = n_frames * n_stars
    return pa.table({
        "frame": pa.array(frame_index, pa.int64()),
        "star": pa.array(star_index, pa.int64()),
        "radius": pa.array(np.full(n, float(box)), pa.float64()),
        "x": pa.array(result["x"].ravel(), pa.float64()),
        "y": pa.array(result["y"].ravel(), pa.float64()),
        "flux": pa.array(result["flux"].ravel(), pa.float64()),
        "flux_err": pa.array(result["flux_err"].ravel(), pa.float64()),
        "background": pa.array(bkg.ravel(), pa.float64()),
        "background_std": pa.array(background_std.ravel(), pa.float64()),
        "background_pixels": pa.array(result["group_pixels"].ravel(), pa.int64()),
        "area": pa.array(result["pixels"].ravel().astype(np.float64), pa.float64()),
        "flags": pa.array(flags.ravel(), pa.uint32()),
        "method": pa.array(["psf"] * n, pa.string()),
        "chi2_reduced": pa.array(result["chi2_reduced"].ravel(), pa.float64()),
        "iterations": pa.array(result["iterations"].ravel(), pa.int32()),
    })

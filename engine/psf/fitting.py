"""Fitting a frame's PSF to its bright isolated stars: an analytic profile (Moffat or Gaussian,
constant or varying across the field, fitted in the compiled core) or an empirical grid
(`engine.psf.empirical`)."""

from __future__ import annotations

import math

import numpy as np

from engine import checks
from engine.cext import psf as _psf
from engine.errors import EngineValueError
from engine.psf import empirical
from engine.psf.model import PSFModel, shape_from_parameters
from engine.psf.stars import (
    default_box,
    estimate_fwhm,
    select_psf_stars,
    typical_largest,
)

__all__ = ["MODELS", "fit_psf_model", "fit_psf_models"]

#: PSF models: the compiled core's analytic profiles and the empirical grid (engine.psf.empirical).
MODELS = (*_psf.PROFILES, "empirical")
#: PSF stars an empirical grid is built from (at most): each grid node needs several samples.
_EMPIRICAL_STARS = 60


def block_positions(frames, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block of frames (frame, y, x) and its per-frame star positions (n_frames, n_stars),
    checked and as float64 positions."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise EngineValueError(f"frames must be 3-d (frame, y, x), got shape {frames.shape}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != frames.shape[0] or y.shape != x.shape:
        raise EngineValueError(f"x and y must have shape (n_frames, n_stars), got {x.shape}, {y.shape}")
    return frames, x, y


def fit_psf_models(frames, x, y, *, model: str = "moffat", fwhm: float | None = None,
                   beta: float = 2.5, varying: bool = False, fit_beta: bool = True,
                   gain: float = 1.0, read_noise: float = 0.0, pixel_flags=None,
                   box: int | None = None, max_stars: int = 30, isolation: float | None = None,
                   reject: float = 4.0, threads: int | None = None) -> list[PSFModel]:
    """`fit_psf_model` for each frame of a block (frame, y, x) with per-frame positions
    (n_frames, n_stars); one compiled call, in parallel over frames. A frame whose fit fails gets
    a PSFModel with FIT_FAILED in its flags (and NaN coefficients) rather than an exception."""
    frames, x, y = block_positions(frames, x, y)
    if model not in MODELS:
        raise EngineValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if pixel_flags is not None:
        pixel_flags = np.asarray(pixel_flags)
        if pixel_flags.shape != frames.shape:
            raise EngineValueError(
                f"pixel_flags must have the frames' shape {frames.shape}, got {pixel_flags.shape}")
    if isinstance(max_stars, bool) or not isinstance(max_stars, (int, np.integer)) or max_stars < 1:
        raise EngineValueError(f"max_stars must be a positive integer, got {max_stars!r}")
    guesses = _first_fwhms(frames, x, y, fwhm)
    if model == "empirical":
        return [_empirical_model(frames[f], x[f], y[f], guesses[f], gain=gain,
                                 read_noise=read_noise, isolation=isolation,
                                 pixel_flags=_frame_flags(pixel_flags, f))
                for f in range(frames.shape[0])]
    if box is None:
        box = default_box(typical_largest(guesses), 2.5)
    chosen, psf_x, psf_y = _psf_stars(frames, x, y, box=box, pixel_flags=pixel_flags,
                                      isolation=isolation, max_stars=max_stars)
    initial = np.array([shape_from_parameters(model, g, beta) for g in guesses])
    fitted = _psf.psf_fit_shape(frames, psf_x, psf_y, initial, model=model, box=box,
                                varying=varying, fit_beta=fit_beta, gain=gain,
                                read_noise=read_noise, pixel_flags=pixel_flags, reject=reject,
                                min_stars=min(10 if varying else 3, max_stars), threads=threads)
    field = tuple(float(v) for v in fitted["field"])
    return [PSFModel(model, fitted["coefficients"][f], field, fitted["coefficient_err"][f],
                     float(fitted["chi2_reduced"][f]), int(fitted["stars_used"][f]),
                     int(fitted["iterations"][f]), int(fitted["flags"][f]),
                     chosen[f][fitted["used"][f, :chosen[f].size]])
            for f in range(frames.shape[0])]


def _frame_flags(pixel_flags, f):
    return None if pixel_flags is None else pixel_flags[f]


def _first_fwhms(frames, x, y, fwhm: float | None) -> np.ndarray:
    """Each frame's first FWHM: the one given, or `estimate_fwhm`'s (the block's median where a
    frame has no star to estimate it from)."""
    if fwhm is not None:
        guesses = np.full(frames.shape[0], float(fwhm))
    else:
        guesses = np.array([_estimate_or_nan(frames[f], x[f], y[f]) for f in range(frames.shape[0])])
    if not np.all(np.isfinite(guesses) & (guesses > 0)):
        if fwhm is not None or not np.any(np.isfinite(guesses)):
            raise EngineValueError(f"fwhm must be finite and > 0 (no star to estimate it from), "
                                   f"got {fwhm!r}")
        guesses = np.where(np.isfinite(guesses), guesses, np.nanmedian(guesses))
    return guesses


def _estimate_or_nan(image, x, y) -> float:
    try:
        return estimate_fwhm(image, x, y)
    except EngineValueError:
        return math.nan


def _psf_stars(frames, x, y, *, box, pixel_flags, isolation, max_stars):
    """Each frame's PSF stars (`select_psf_stars`) and their positions as (n_frames, max_stars)
    arrays padded with NaN, as the compiled shape fit takes them."""
    n_frames = frames.shape[0]
    psf_x = np.full((n_frames, max_stars), np.nan)
    psf_y = np.full((n_frames, max_stars), np.nan)
    chosen = []
    for f in range(n_frames):
        index = select_psf_stars(frames[f], x[f], y[f], box=box,
                                 pixel_flags=_frame_flags(pixel_flags, f),
                                 isolation=isolation, max_stars=max_stars)
        chosen.append(index)
        psf_x[f, :index.size] = x[f, index]
        psf_y[f, :index.size] = y[f, index]
    return chosen, psf_x, psf_y


def _empirical_model(image, x, y, fwhm, *, gain, read_noise, isolation, pixel_flags):
    """One frame's `EmpiricalPSF` from up to _EMPIRICAL_STARS PSF stars whose cut-outs reach
    the grid's edge (failed, FIT_FAILED, with fewer than 5)."""
    radius = math.ceil(2.5 * fwhm)
    # Neighbours are fitted with each PSF star: only those closer than the grid's reach are
    # too close.
    stars = select_psf_stars(image, x, y, box=radius + 4, pixel_flags=pixel_flags,
                             isolation=float(radius) if isolation is None else isolation,
                             max_stars=_EMPIRICAL_STARS)
    return empirical.build_empirical_psf(
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
        `engine.psf.empirical.EmpiricalPSF` grid built from up to 60 PSF stars, neighbours
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


"""PSF photometry of a frame's stars with its fitted PSF (the analytic profiles in the compiled
core, the empirical grid in engine.psf.empirical).

The package as a whole (engine.psf): a per-frame PSF model from bright isolated stars, then a
fit of every star.

`fit_psf_model` fits the shape of a frame's point-spread function (elliptical Moffat or Gaussian,
integrated over pixels, optionally varying linearly across the field) jointly to bright, isolated,
unflagged stars. `psf_photometry` fits that PSF to every star of an image: fluxes with positions
held at the inputs (a linear fit), or positions and fluxes; stars whose fitting boxes overlap are
fitted jointly with a local background per group (none, a constant or a plane).
`choose_psf_model` lets a frame's stars choose the profile (Gaussian, Moffat or an empirical
grid, `engine.psf.empirical.EmpiricalPSF`) and whether it varies across the field, with the
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

import numpy as np
import pyarrow as pa

from engine import checks
from engine.cext import psf as _psf
from engine.errors import EngineValueError, EngineWarning
from engine.flags import MeasurementFlag
from engine.psf import empirical
from engine.psf.fitting import block_positions, fit_psf_models
from engine.psf.model import PSFModel
from engine.psf.stars import default_box, typical_largest

__all__ = ["psf_photometry", "psf_photometry_frames", "psf_residual_fraction",
           "psf_residual_image"]

#: What `psf_photometry_frames` and the residual functions take as a PSF.
_MODEL_TYPES = (PSFModel, empirical.EmpiricalPSF)


def _stamp(psf, x, y, x0, y0, side) -> np.ndarray:
    """A unit star at image position (x, y) (where a varying PSF is evaluated), rendered at
    (x0, y0) on a side x side grid of pixels."""
    if isinstance(psf, empirical.EmpiricalPSF):
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
        `engine.empirical.EmpiricalPSF` (`fit_psf_model(model='empirical')`); default:
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
    frames, x, y = block_positions(frames, x, y)
    gain = checks.gain_value("gain", gain)
    read_noise = float(read_noise)
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise EngineValueError(f"read_noise must be finite and >= 0, got {read_noise!r}")
    if background not in _psf.BACKGROUNDS:
        raise EngineValueError(
            f"background must be one of {sorted(_psf.BACKGROUNDS)}, got {background!r}")
    if psf is None:
        psf = fit_psf_models(frames, x, y, model=model, gain=gain, read_noise=read_noise,
                             pixel_flags=pixel_flags, threads=threads)
    models = _frame_models(psf, x.shape[0])
    good = [m for m in models if not m.failed]
    fwhm = typical_largest(np.array([m.fwhm for m in good])) if good else 3.0
    settings = {"box": default_box(fwhm) if box is None else box, "background": background,
                "fit_positions": fit_positions,
                "max_shift": max(1.0, fwhm) if max_shift is None else max_shift,
                "position_snr": position_snr, "gain": gain, "read_noise": read_noise,
                "model_variance": model_variance, "pixel_flags": pixel_flags,
                "max_group": max_group}
    result = _fit_stars(frames, x, y, models, settings, threads)
    return _table(result, settings["box"], read_noise)


def _frame_models(psf, n_frames: int) -> list:
    """One PSF per frame from what `psf_photometry_frames` was given, all of one profile."""
    if isinstance(psf, _MODEL_TYPES):
        models = [psf] * n_frames
    else:
        models = list(psf)
        if len(models) != n_frames or not all(isinstance(m, _MODEL_TYPES) for m in models):
            raise EngineValueError(f"psf must be a PSFModel or EmpiricalPSF, or a sequence of "
                                   f"{n_frames} of them")
    kinds = {m.model for m in models}
    if len(kinds) != 1:
        raise EngineValueError(f"every frame's PSF must have the same profile, got {sorted(kinds)}")
    return models


def _fit_stars(frames, x, y, models, settings, threads) -> dict[str, np.ndarray]:
    """Every star of every frame fitted with its frame's PSF: the compiled core for an analytic
    profile, engine.psf.empirical for a grid. Frames without a PSF get FIT_FAILED, positions
    kept at the inputs."""
    failed = np.array([m.failed for m in models])
    fit_x, fit_y = x, y
    if failed.any():  # nothing to fit on frames without a PSF
        fit_x = np.where(failed[:, None], np.nan, x)
        fit_y = np.where(failed[:, None], np.nan, y)
    kind = models[0].model
    if kind == "empirical":
        result = empirical.fit_frames(frames, fit_x, fit_y, models, **settings)
    else:
        good = [m for m in models if not m.failed]
        fallback = good[0] if good else PSFModel.from_parameters(kind)
        shapes = np.empty((*x.shape, 4))
        for f, m in enumerate(models):
            shapes[f] = (fallback if m.failed else m).shape_at(x[f], y[f])
        result = _psf.psf_fit(frames, fit_x, fit_y, shapes, model=kind, threads=threads,
                              **settings)
    if failed.any():
        result["flags"][failed] = int(MeasurementFlag.FIT_FAILED)
        result["x"][failed] = x[failed]
        result["y"][failed] = y[failed]
    return result


def _table(result: dict[str, np.ndarray], box: int, read_noise: float) -> pa.Table:
    """The photometry table (module docstring) of (n_frames, n_stars) fit results."""
    bkg = result["background"]
    with np.errstate(invalid="ignore"):
        background_std = np.sqrt(read_noise ** 2 + np.maximum(bkg, 0.0))
    shape = bkg.shape
    frame_index = np.broadcast_to(np.arange(shape[0])[:, None], shape).ravel()
    star_index = np.broadcast_to(np.arange(shape[1])[None, :], shape).ravel()
    n = bkg.size
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
        "flags": pa.array(result["flags"].ravel(), pa.uint32()),
        "method": pa.array(["psf"] * n, pa.string()),
        "chi2_reduced": pa.array(result["chi2_reduced"].ravel(), pa.float64()),
        "iterations": pa.array(result["iterations"].ravel(), pa.int32()),
    })

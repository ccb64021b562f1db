"""The photometry stage for one run: reference stars, registration of every frame, exact
multi-aperture photometry, and the noise model of every measurement.

One pass over the calibrated cube, block by block of frames: each frame is registered to the
reference (tracking the previous frame's transform through re-centred bright stars, falling
back to detection plus asterism matching after a jump or a meridian flip), every reference star
is placed on it and re-centred within a bound, and the block is measured in one compiled call.
A frame that cannot be registered is kept, flagged NOT_REGISTERED, never fatal.

Noise model (electrons, per measurement; each term stored in the table):
    var_star             = max(flux, 0)                      Poisson noise of the star
    var_background       = area * sigma_pix^2                sky + dark + read noise of the frame
    var_background_error = area^2 * sigma_pix^2 / n_bkg      error of the background estimate
    var_scintillation    = (sigma_Y * flux)^2                Young / Osborn et al. (2015), from
                                                             aperture diameter, airmass, site
                                                             altitude and exposure
    var_read, var_dark   = area * read^2, area * dark        the parts of var_background that
                                                             are known, for the noise budget
and flux_err = sqrt(var_star + var_background + var_background_error + var_scintillation).
PSF rows (psf_photometry on; method 'psf') carry the same terms with the fit's noise-equivalent
area (`PSFModel.noise_area`) in place of the aperture's area and var_background_error the rest
of the fit's variance (its background, blended neighbours). Their PSF model is chosen on the reference frame
(`engine.psf.choose_psf_model`, in the run's report) and fitted on every frame; stars that the
reference frame's PSF residual reveals join the list, held with their neighbours at their
registered positions.

sigma_pix^2 is the frame's own noise per pixel: the CCD equation max(sky, 0) + dark + read^2
(sky: the annulus level in electrons) when the read noise is known, but never more than the
annulus scatter sigma_bkg^2 (stored as background_std), which bounds it: a frame that still
holds its bias pedestal has a level far above its sky. The annulus scatter alone is not the
frame's noise: on a calibrated frame it also holds the noise of the master bias, dark and flat,
the same on every frame. A camera with few calibration frames (or a dark rate fitted from short
darks) shows that as large as the read noise, and counting it as each frame's own noise
overstates a light curve's scatter (the simulator's binned CCD night: 16.2 e- per pixel in the
annulus, 14.0 e- from frame to frame).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree

from engine.calibration.recipe import CalibratedFrames, DeviceCalibratedFrames
from engine.detection import cosmic_ray_mask, detect_stars, frame_fwhm, star_positions
from engine.device import resolve_device
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.noise import scintillation_sigma
from engine.photometry import aperture_photometry_frames
from engine.progress import progress
from engine.psf import (choose_psf_model, fit_psf_models, psf_photometry,
                        psf_photometry_frames, psf_residual_image)
from engine.registration import FrameTracker, Transform, recentre, registrations_table
from engine.settings.photometry import PhotometryConfig

__all__ = ["PhotometryConfig", "RunPhotometry", "measure_run"]

log = logging.getLogger("engine.photometry_stage")


@dataclass
class RunPhotometry:
    """What the stage produced for one run."""

    stars: pa.Table          # star, x, y (reference frame), flux, fwhm, peak, is_target
    registration: pa.Table   # one row per frame: status, reason, method, transform, rms
    photometry: pa.Table     # one row per (frame, star, radius), with the noise terms
    reference_frame: int
    fwhm: float
    target: int | None
    notes: list[str] = field(default_factory=list)
    psf: dict | None = None  # the PSF model chosen on the reference frame and its fit quality


def _column(frames: pa.Table, name: str, default: float) -> np.ndarray:
    if name not in frames.column_names:
        return np.full(frames.num_rows, default, dtype=np.float64)
    values = np.asarray(frames.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.where(np.isfinite(values), values, default)


def _choose_reference(data, candidates: list[int], config: PhotometryConfig, threads):
    """The candidate frame with the sharpest stars among those with enough of them (each
    frame's FWHM measured on its stars: hot pixels and cosmic rays are not stars). A FWHM
    under half the candidates' median is a failed measurement, not a sharp frame."""
    measured = []
    for index in candidates:
        image = np.asarray(data[index], dtype=np.float32)
        stars = detect_stars(image, config.detection_threshold, max_stars=config.max_stars,
                             threads=threads)
        if stars.num_rows >= 3:
            measured.append((frame_fwhm(stars), index, stars))
    if not measured:
        raise EngineValueError("no frame of this run shows 3 or more stars to measure")
    typical = np.nanmedian([m[0] for m in measured]) if any(
        math.isfinite(m[0]) for m in measured) else math.nan
    plausible = [m for m in measured if m[0] >= 0.5 * typical] or measured
    # A measured FWHM beats a NaN.
    fwhm, index, stars = min(plausible, key=lambda m: (math.isnan(m[0]), m[0]))
    return index, stars, fwhm


def _persistent_sharp_pixels(data, candidates: list[int], fwhm: float) -> np.ndarray | None:
    """Pixels sharp on two or more of the candidate frames: hot pixels the calibration left
    (a cosmic ray rarely strikes one pixel twice), not to be flagged as cosmic rays. None with
    fewer than two frames to compare."""
    if len(candidates) < 2:
        return None
    counts = sum(cosmic_ray_mask(np.asarray(data[index], dtype=np.float32), fwhm,
                                 threshold=3.0).astype(np.uint8) for index in candidates)
    return counts >= 2


def _with_cosmic_rays(block: np.ndarray, block_mask, fwhm: float, persistent) -> np.ndarray:
    """The block's pixel flags with each frame's cosmic-ray hits (COSMIC_RAY) added."""
    flags = (np.zeros(block.shape, dtype=np.uint8) if block_mask is None
             else np.array(block_mask, dtype=np.uint8))
    for k in range(block.shape[0]):
        known = flags[k] != 0 if persistent is None else (flags[k] != 0) | persistent
        hits = cosmic_ray_mask(block[k], fwhm, mask=known)
        flags[k][hits] |= np.uint8(PixelFlag.COSMIC_RAY)
    return flags


def measure_run(data, frames: pa.Table, *, mask=None, target_xy=None, radii=None, annulus=None,
                config: PhotometryConfig = PhotometryConfig(), threads: int | None = None
                ) -> RunPhotometry:
    """Measure every star of a run on every frame.

    Parameters
    ----------
    data : array-like (frames, y, x)
        The calibrated cube (a Zarr array or NumPy array, float32), in electrons / gain units
        (ADU) as calibration leaves it, or raw frames with their recipe (CalibratedFrames),
        which on device 'cuda' are calibrated on the GPU where they are measured.
    frames : pyarrow.Table
        The run's light frames in cube order: `gain` (e-/ADU), `read_noise` (e-), `exptime` (s),
        `airmass`, `site_height_m`, and optionally `time_bjd_tdb`, `dark_current` (e-/s/pixel).
    mask : array-like (frames, y, x) of uint8 PixelFlag bits, optional.
    target_xy : (x, y) of the target in the cube's first frame (0-based), optional.
    radii, annulus : aperture radii and (inner, outer) in pixels, overriding the FWHM multiples.
    config : PhotometryConfig.
    threads : threads for the compiled kernels (default: all cores).
    """
    n_frames = int(data.shape[0])
    if data.ndim != 3 or n_frames == 0:
        raise EngineValueError(f"a run cube must be (frames, y, x) with frames, got {data.shape}")
    if frames.num_rows != n_frames:
        raise EngineValueError(f"the frames table has {frames.num_rows} rows for {n_frames} frames")
    notes: list[str] = []
    device, said = resolve_device(config.device)
    if config.device == "auto":
        log.info(said)
    if device == "cuda" and isinstance(data, CalibratedFrames):
        # Raw blocks go to the device and are calibrated there, where the photometry measures them.
        on_device = data.on_device()
        mask = on_device.mask if mask is data.mask else mask
        data = on_device
    candidates = sorted(set(np.linspace(0, n_frames - 1, min(n_frames, 5)).astype(int).tolist()))
    reference, reference_stars, fwhm = _choose_reference(data, candidates, config, threads)
    if not math.isfinite(fwhm) or fwhm <= 0:
        fwhm = 3.0
        notes.append("the reference FWHM could not be measured: 3 px assumed")
    radii = (np.asarray(config.aperture_fwhm) * fwhm if radii is None
             else np.atleast_1d(np.asarray(radii, dtype=np.float64)))
    annulus = (tuple(float(a) * fwhm for a in config.annulus_fwhm) if annulus is None
               else tuple(float(a) for a in annulus))
    noise = _FrameNoise.of_frames(frames, config, notes)
    plan = _StarPlan(reference, reference_stars, star_positions(reference_stars), fwhm,
                     np.zeros(reference_stars.num_rows, dtype=bool))
    psf_choice = None
    if config.psf_photometry:
        psf_choice = _choose_psf(data[reference], plan.xy, noise.gain, noise.read_noise, config,
                                 threads, notes)
    if psf_choice is not None:
        plan = _with_faint_neighbours(data[reference], plan, psf_choice[0], noise, config,
                                      threads, notes)
    tracker = FrameTracker(reference_stars, fwhm=fwhm, threshold=config.detection_threshold,
                           max_stars=config.max_stars, tracking_stars=config.tracking_stars,
                           min_stars=config.tracking_min_stars, max_rms=config.tracking_max_rms,
                           threads=threads)
    # Frames are registered in cube order; the first is searched blind unless it is the reference.
    tracker.previous = Transform(1.0, 0.0, 0.0, 0.0) if reference == 0 else None
    photometry, registrations = _measure_blocks(
        data, mask, frames, plan, tracker, radii, annulus, noise, psf_choice,
        _persistent_sharp_pixels(data, candidates, fwhm), config, device, threads)
    target = None if target_xy is None else _target_star(registrations[0], plan, target_xy)
    return RunPhotometry(stars=_stars_table(plan, target),
                         registration=registrations_table(registrations),
                         photometry=photometry, reference_frame=reference, fwhm=float(fwhm),
                         target=target, notes=notes,
                         psf=None if psf_choice is None else psf_choice[1])


@dataclass(frozen=True)
class _StarPlan:
    """The stars a run measures, as the reference frame gives them."""

    reference: int           # the reference frame
    stars: pa.Table          # its detections (plus the PSF residual's), one row per star
    xy: np.ndarray           # (stars, 2) their positions on it
    fwhm: float              # its FWHM, pixels
    held: np.ndarray         # stars placed by the transform alone, not re-centred


def _place_stars(block, start, tracker, plan: _StarPlan, max_shift, registrations, threads):
    """Registers each frame of a block (into `registrations`) and places the plan's stars on it,
    re-centred within max_shift: x, y (frames, stars), NaN on frames not registered, and each
    star's CENTROID_FAILED flag."""
    shape = (block.shape[0], len(plan.xy))
    x, y = np.full(shape, np.nan), np.full(shape, np.nan)
    centroid_flags = np.zeros(shape, dtype=np.uint32)
    held = plan.held
    for k in range(block.shape[0]):
        result = tracker.register(block[k], start + k)
        registrations[start + k] = result
        if not result.ok:
            log.warning("frame %d not registered: %s", start + k, result.reason)
            continue
        predicted = result.transform.apply(plan.xy)
        xs, ys, flags = recentre(block[k], predicted[:, 0], predicted[:, 1], plan.fwhm,
                                 max_shift=max_shift, threads=threads)
        # Faint stars whose centroid failed keep the transform's position (better than noise).
        xs[held], ys[held] = predicted[held, 0], predicted[held, 1]
        flags[held] = 0
        x[k], y[k] = xs, ys
        centroid_flags[k] = flags & np.uint32(MeasurementFlag.CENTROID_FAILED)
    return x, y, centroid_flags


def _measure_blocks(data, mask, frames, plan: _StarPlan, tracker, radii, annulus, noise,
                    psf_choice, persistent, config: PhotometryConfig, device, threads):
    """The one pass over the cube, block by block of frames: each frame registered, the stars
    placed and measured (apertures, and PSF fits when chosen). Returns (photometry table,
    registrations in frame order)."""
    n_frames = int(data.shape[0])
    registrations: list = [None] * n_frames
    tables = []
    max_shift = config.recentre_max_shift_fwhm * plan.fwhm
    run_id = frames.column("run_id")[0].as_py() if "run_id" in frames.column_names else ""
    with progress(total=n_frames, desc=f"photometry {run_id}".rstrip()) as bar:
        for start in range(0, n_frames, config.block_frames):
            stop = min(n_frames, start + config.block_frames)
            block = np.ascontiguousarray(np.asarray(data[start:stop]), dtype=np.float32)
            block_mask = _with_cosmic_rays(block, None if mask is None else mask[start:stop],
                                           plan.fwhm, persistent)
            x, y, centroid_flags = _place_stars(block, start, tracker, plan, max_shift,
                                                registrations, threads)
            pixels, pixel_flags = block, block_mask
            if isinstance(data, DeviceCalibratedFrames):  # measured where they were calibrated
                pixels, pixel_flags = data.device_block(start, stop, block_mask)
            table = aperture_photometry_frames(
                pixels, x, y, radii, annulus, gain=1.0, pixel_flags=pixel_flags, threads=threads,
                device=device)
            table = _with_noise_terms(table, start, noise, centroid_flags,
                                      registrations[start:stop])
            tables.append(table)
            if psf_choice is not None:
                tables.append(_psf_rows(block, x, y, block_mask, start, noise, centroid_flags,
                                        registrations[start:stop], table, psf_choice, threads))
            bar.update(stop - start)
    return pa.concat_tables(tables, promote_options="default"), registrations


def _target_star(first, plan: _StarPlan, target_xy) -> int:
    """The star nearest the target's position on the first frame (registration `first`)."""
    if not first.ok:
        raise EngineValueError("the first frame is not registered: --target-xy cannot be placed")
    in_reference = first.transform.inverse().apply(np.asarray([target_xy], dtype=float))[0]
    distance = np.hypot(plan.xy[:, 0] - in_reference[0], plan.xy[:, 1] - in_reference[1])
    target = int(np.argmin(distance))
    if distance[target] > 2.0 * plan.fwhm:
        raise EngineValueError(f"no star within {2 * plan.fwhm:.1f} px of the target position "
                               f"{tuple(target_xy)} (nearest at {distance[target]:.1f} px)")
    return target


def _stars_table(plan: _StarPlan, target: int | None) -> pa.Table:
    n_stars = len(plan.xy)
    return pa.table({
        "star": pa.array(np.arange(n_stars), pa.int64()),
        "x": pa.array(plan.xy[:, 0]), "y": pa.array(plan.xy[:, 1]),
        "flux": plan.stars.column("flux"), "fwhm": plan.stars.column("fwhm"),
        "peak": plan.stars.column("peak"),
        "is_target": pa.array(np.arange(n_stars) == (-1 if target is None else target)),
    })


@dataclass(frozen=True)
class _FrameNoise:
    """Per-frame inputs of the noise model (index by frame number)."""

    gain: np.ndarray            # e-/ADU
    read_noise: np.ndarray      # e-
    dark_e: np.ndarray          # dark electrons per pixel in the exposure
    sigma_scint: np.ndarray     # relative scintillation sigma

    @classmethod
    def of_frames(cls, frames: pa.Table, config: PhotometryConfig, notes: list) -> _FrameNoise:
        """The noise inputs of a run's frames table; what it lacks is assumed, said in notes."""
        gain = _column(frames, "gain", np.nan)
        if not np.all(np.isfinite(gain)):
            # The pipeline fills the gain (header, configuration or calibration's measurement);
            # a caller's table without one is said, never assumed silently.
            notes.append(f"gain unknown for {int(np.sum(~np.isfinite(gain)))} frame(s): 1.0 "
                         "e-/ADU assumed (engine.calibration.camera.measure_noise measures it)")
            gain = np.where(np.isfinite(gain), gain, 1.0)
        exptime = _column(frames, "exptime", 1.0)
        if config.aperture_diameter_m is not None:
            diameter = np.full(frames.num_rows, float(config.aperture_diameter_m))
        else:
            diameter = _column(frames, "aperture_diameter_m", np.nan)
            if not np.all(diameter > 0.0):
                diameter = np.where(diameter > 0.0, diameter, 0.3)
                notes.append("telescope aperture unknown: 0.3 m assumed for the scintillation "
                             "term")
        sigma_scint = scintillation_sigma(
            diameter, np.maximum(_column(frames, "airmass", 1.0), 1.0),
            np.maximum(_column(frames, "site_height_m", 0.0), 0.0), np.maximum(exptime, 1e-3),
            c_y=config.scintillation_cy)
        return cls(gain, _column(frames, "read_noise", 0.0),
                   _column(frames, "dark_current", 0.0) * exptime, sigma_scint)

    def pixel_variance(self, frame, sky, sigma):
        """The frame's own noise per pixel (e-^2), bounded by the annulus scatter sigma (see the
        module doc)."""
        read = self.read_noise[frame]
        ccd_equation = np.where(read > 0, np.maximum(sky, 0.0) + self.dark_e[frame] + read ** 2,
                                np.inf)
        return np.minimum(ccd_equation, sigma ** 2)


def _measurement_flags(table, centroid_flags, registrations) -> np.ndarray:
    """The flags of a block's table (frames numbered within the block) with the block's
    CENTROID_FAILED and NOT_REGISTERED added."""
    flags = table.column("flags").to_numpy(zero_copy_only=False).copy()
    star = table.column("star").to_numpy()
    local = table.column("frame").to_numpy()
    flags |= centroid_flags[local, star]
    unregistered = np.array([not r.ok for r in registrations])
    flags[unregistered[local]] |= np.uint32(MeasurementFlag.NOT_REGISTERED)
    return flags


def _with_noise_terms(table: pa.Table, start: int, noise: _FrameNoise, centroid_flags,
                      registrations) -> pa.Table:
    """Converts a block's ADU table to electrons and adds the noise terms (see the module doc)."""
    frame = table.column("frame").to_numpy() + start
    g = noise.gain[frame]
    flux = table.column("flux").to_numpy(zero_copy_only=False) * g
    area = table.column("area").to_numpy(zero_copy_only=False)
    sigma = table.column("background_std").to_numpy(zero_copy_only=False) * g
    sky = table.column("background").to_numpy(zero_copy_only=False) * g
    n_bkg = table.column("background_pixels").to_numpy(zero_copy_only=False).astype(np.float64)
    read = noise.read_noise[frame]
    dark_e = noise.dark_e[frame]
    pixel_var = noise.pixel_variance(frame, sky, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_star = np.maximum(flux, 0.0)
        var_background = area * pixel_var
        var_background_error = np.where(n_bkg > 0, area ** 2 * pixel_var / n_bkg, np.inf)
        var_scintillation = (noise.sigma_scint[frame] * flux) ** 2
    var_read = area * read ** 2
    var_dark = area * dark_e
    flags = _measurement_flags(table, centroid_flags, registrations)
    total = var_star + var_background + var_background_error + var_scintillation
    columns = {
        "frame": pa.array(frame, pa.int64()),
        "star": table.column("star"), "radius": table.column("radius"),
        "x": table.column("x"), "y": table.column("y"),
        "flux": pa.array(flux), "flux_err": pa.array(np.sqrt(total)),
        "background": pa.array(sky),
        "background_std": pa.array(sigma), "background_pixels": table.column("background_pixels"),
        "area": table.column("area"), "flags": pa.array(flags, pa.uint32()),
        "var_star": pa.array(var_star), "var_background": pa.array(var_background),
        "var_background_error": pa.array(var_background_error),
        "var_scintillation": pa.array(var_scintillation), "var_read": pa.array(var_read),
        "var_dark": pa.array(var_dark),
        "method": pa.array(["aperture"] * len(frame)),
    }
    return pa.table(columns)


def _choose_psf(reference_image, ref_xy, gain, read_noise, config, threads, notes):
    """The run's PSF model (profile and whether it varies across the field), chosen on the
    reference frame: (model, report), or None (said in the notes) when no PSF can be fitted."""
    profiles = (("gaussian", "moffat", "empirical") if config.psf_model == "auto"
                else (config.psf_model,))
    try:
        model, report = choose_psf_model(
            np.asarray(reference_image, dtype=np.float32), ref_xy[:, 0], ref_xy[:, 1],
            profiles=profiles, gain=float(np.median(gain)),
            read_noise=float(np.median(read_noise)), threads=threads)
    except EngineValueError as exc:
        notes.append(f"no PSF photometry: {exc}")
        return None
    report["how"] = ("configured" if config.psf_model != "auto" else
                     "lowest reduced chi^2 of the reference frame's PSF stars (2% for each "
                     "added freedom)")
    return model, report


def _with_faint_neighbours(reference_image, plan: _StarPlan, psf, noise: _FrameNoise, config,
                           threads, notes) -> _StarPlan:
    """The reference star list plus the stars that the reference frame's PSF residual reveals
    (neighbours within a few FWHM that detection merged with a brighter star, and in a crowded
    field the fainter stars beyond the list's max_stars), more than one FWHM from every listed
    star. Its `held` marks the added stars and their listed neighbours within 2.5 FWHM, whose
    reference positions come from one joint PSF fit and which every frame places by its
    transform (centroids would pull them together)."""
    image = np.asarray(reference_image, dtype=np.float32)
    reference_stars, xy, fwhm = plan.stars, plan.xy, plan.fwhm
    kwargs = {"gain": float(np.median(noise.gain)),
              "read_noise": float(np.median(noise.read_noise)), "threads": threads}
    residual = psf_residual_image(image, xy[:, 0], xy[:, 1], psf, **kwargs)
    found = detect_stars(residual, config.detection_threshold, max_stars=config.max_stars,
                         threads=threads)
    held = np.zeros(len(xy), dtype=bool)
    if found.num_rows:
        distance = cKDTree(xy).query(star_positions(found))[0]
        found = found.filter(pa.array(distance > fwhm))
    if not found.num_rows:
        return plan
    notes.append(f"{found.num_rows} star(s) found in the reference frame's PSF residual added, "
                 "held with their neighbours at registered positions")
    added = star_positions(found)
    near = np.array([bool(n) for n in cKDTree(added).query_ball_point(xy, 2.5 * fwhm)])
    held = np.r_[near, np.ones(found.num_rows, dtype=bool)]
    xy = np.vstack([xy, added])
    stars = pa.concat_tables([reference_stars, found.select(reference_stars.column_names)
                              .cast(reference_stars.schema)])
    # A merged detection sits between its two stars: the joint fit moves it onto one of them,
    # where the fainter of two stars closer than a FWHM is a duplicate, dropped (a held star
    # that lands on one not held is the duplicate).
    for _ in range(3):
        index = np.flatnonzero(held)
        fitted = psf_photometry(image, xy[index, 0], xy[index, 1], psf=psf, fit_positions=True,
                                **kwargs)
        fitted_xy = np.c_[fitted.column("x").to_numpy(), fitted.column("y").to_numpy()]
        moved = np.isfinite(fitted_xy).all(axis=1)  # a failed fit keeps its star's position
        xy[index[moved]] = fitted_xy[moved]
        flux = np.full(len(xy), np.inf)
        flux[index] = np.nan_to_num(fitted.column("flux").to_numpy(zero_copy_only=False),
                                    nan=-np.inf)
        pairs = cKDTree(xy).query_pairs(fwhm, output_type="ndarray")
        pairs = pairs[held[pairs[:, 0]] | held[pairs[:, 1]]]
        if not len(pairs):
            break
        drop = np.zeros(len(xy), dtype=bool)
        drop[np.where(flux[pairs[:, 0]] < flux[pairs[:, 1]], pairs[:, 0], pairs[:, 1])] = True
        stars, xy, held = stars.filter(pa.array(~drop)), xy[~drop], held[~drop]
    return _StarPlan(plan.reference, stars, xy, fwhm, held)


def _psf_rows(block, x, y, block_mask, start, noise: _FrameNoise, centroid_flags,
              registrations, apertures: pa.Table, psf_choice, threads) -> pa.Table:
    """PSF fluxes (electrons) of the block's stars at their registered positions, each frame
    with its own fit of the run's PSF model, and the aperture rows' noise terms: the star's
    Poisson noise, the sky's over the fit's noise-equivalent area (`PSFModel.noise_area`), the
    rest of the fit's variance (the fitted background, blended neighbours) as
    var_background_error, and scintillation."""
    frames = np.arange(start, start + block.shape[0])
    registered = np.array([r.ok for r in registrations])
    x = np.where(registered[:, None], x, np.nan)
    y = np.where(registered[:, None], y, np.nan)
    gain = float(np.median(noise.gain[frames]))
    read_noise = float(np.median(noise.read_noise[frames]))
    chosen = psf_choice[0]
    models = fit_psf_models(block, x, y, model=chosen.model, varying=chosen.varying, gain=gain,
                            read_noise=read_noise, pixel_flags=block_mask, threads=threads)
    table = psf_photometry_frames(block, x, y, psf=models, gain=gain, read_noise=read_noise,
                                  pixel_flags=block_mask, threads=threads)
    local = table.column("frame").to_numpy()
    star = table.column("star").to_numpy()
    frame = local + start
    box = int(table.column("radius")[0].as_py()) if table.num_rows else 0
    nea = np.array([math.nan if m.failed else m.noise_area(box) for m in models])[local]
    # The annulus scatter of the aperture rows bounds the pixel variance as it does theirs.
    annulus_sigma = np.full(x.shape, np.nan)
    annulus_sigma[apertures.column("frame").to_numpy() - start,
                  apertures.column("star").to_numpy()] = (
        apertures.column("background_std").to_numpy(zero_copy_only=False))
    flux = table.column("flux").to_numpy(zero_copy_only=False)
    fit_var = table.column("flux_err").to_numpy(zero_copy_only=False) ** 2
    sky = table.column("background").to_numpy(zero_copy_only=False)
    pixel_var = noise.pixel_variance(frame, sky, annulus_sigma[local, star])
    with np.errstate(invalid="ignore"):
        var_star = np.maximum(flux, 0.0)
        var_background = nea * pixel_var
        var_background_error = np.maximum(fit_var - var_star - var_background, 0.0)
        var_scintillation = (noise.sigma_scint[frame] * flux) ** 2
    total = var_star + var_background + var_background_error + var_scintillation
    columns = {
        "frame": pa.array(frame, pa.int64()),
        "flux_err": pa.array(np.sqrt(total)),
        "flags": pa.array(_measurement_flags(table, centroid_flags, registrations), pa.uint32()),
        "var_star": pa.array(var_star), "var_background": pa.array(var_background),
        "var_background_error": pa.array(var_background_error),
        "var_scintillation": pa.array(var_scintillation),
        "var_read": pa.array(nea * noise.read_noise[frame] ** 2),
        "var_dark": pa.array(nea * noise.dark_e[frame]),
    }
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table

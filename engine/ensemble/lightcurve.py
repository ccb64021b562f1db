"""One run's light curves: `build_run_lightcurve`, from photometry to lightcurves rows + report.

The steps, each in its own module:
1. inputs: check the photometry, frames and star tables; dense (frames, stars) arrays.
2. selection: comparison and check stars (automatic, or the user's).
3. aperture: with several radii (and PSF fluxes), keep the one whose light curve scatters
   least: the target's out-of-event curve when windows are given, else the check stars',
   else the comparisons' (each against the others).
4. weights: the iterative robust weighted ensemble -> zero points, weights, excess scatter.
   The scintillation term comes from the photometry (var_scintillation), the frames table
   (scintillation), Young's formula with the configured telescope and altitude, or else is
   estimated from the comparisons' excess scatter, in that order.
5. detrend: the differential extinction's colour term learnt from the field stars; then the
   ensemble again on colour-corrected magnitudes.
6. zeropoints: clear-sky baseline, transparency, CLOUD / NOISE_MODEL_EXCEEDED / NO_ENSEMBLE.
7. sysrem: shared systematics of the field stars; detrend: the target's own fit, out of event.
8. rows: relative fluxes (comparisons against the others), magnitudes, flags; report: noise
   expected vs achieved, and the rest of the report's diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.ensemble.detrend import ColourExtinction, baseline_mask, colour_extinction, fit_target
from engine.ensemble.inputs import RunData, prepare_run, usable
from engine.ensemble.io import jsonable
from engine.ensemble.noise import MAG_PER_RELATIVE_FLUX as _MAG
from engine.ensemble.report import noise_report, plain, run_diagnostics
from engine.ensemble.schema import Repeated, table_from_columns
from engine.ensemble.selection import Selection, select_stars
from engine.ensemble.sysrem import FieldSystematics, field_systematics
from engine.ensemble.weights import Ensemble, row_nanmedian, solve_ensemble
from engine.ensemble.zeropoints import FrameQuality, frame_quality
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.io.schemas import LIGHTCURVES_SCHEMA, STAR_SUMMARY_SCHEMA
from engine.settings.ensemble import EnsembleConfig

__all__ = ["RunLightCurve", "build_run_lightcurve"]

_FRAME_BAD = np.uint32(MeasurementFlag.CLOUD | MeasurementFlag.NO_ENSEMBLE)


@dataclass
class RunLightCurve:
    """What `build_run_lightcurve` returns for one run.

    Attributes
    ----------
    table
        rows of lightcurves.parquet (LIGHTCURVES_SCHEMA), one per (frame, output star).
    diagnostics
        JSON-ready dict for report.json (weights, zero points, flagged frames with
        reasons, chosen aperture, noise ratios, detrending).
    stars
        STAR_SUMMARY_SCHEMA rows, the run-mean magnitude of every well-measured star, which
        `merge_runs` ties runs together with.
    """

    table: pa.Table
    diagnostics: dict
    stars: pa.Table

    @property
    def run_id(self) -> str:
        return self.diagnostics["run_id"]


# ------------------------------------------------------------------------------------------------
# Magnitudes and their noise model at one aperture
# ------------------------------------------------------------------------------------------------

@dataclass
class _Photometry:
    aperture: int
    flux: np.ndarray        # (k, j) e-
    flux_var: np.ndarray    # (k, j) e-^2, noise model (scintillation added when known)
    mag: np.ndarray         # (k, j) -2.5 log10(flux / exptime)
    var: np.ndarray         # (k, j) mag^2
    ok: np.ndarray          # (k, j) usable for fits
    scintillation: np.ndarray | None   # (k,) relative sigma added here (None: in var_* or none)


def _photometry(data: RunData, a: int, config: EnsembleConfig, scintillation=None) -> _Photometry:
    flux = data.matrix(a, "flux")
    flux_var = data.flux_variance(a)
    if scintillation is not None:
        flux_var = flux_var + (scintillation[:, None] * flux) ** 2
    ok = usable(data, a, config.exclude_flags)
    with np.errstate(all="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(flux / data.exptime[:, None]), np.nan)
        var = _MAG ** 2 * flux_var / flux ** 2
    ok &= np.isfinite(mag) & np.isfinite(var) & (var > 0)
    return _Photometry(aperture=a, flux=flux, flux_var=flux_var, mag=mag, var=var, ok=ok,
                       scintillation=scintillation)


def _scintillation(data: RunData, a: int, config: EnsembleConfig):
    """(per-frame relative sigma to add or None, source in words, estimate?)"""
    if "var_scintillation" in data.variance_terms(a):
        return None, "photometry (var_scintillation)", False
    if data.scintillation is not None and np.all(np.isfinite(data.scintillation)):
        return (np.asarray(data.scintillation, dtype=np.float64),
                "frames table (scintillation)", False)
    if config.aperture_diameter_m is not None and config.site_altitude_m is not None:
        from engine.noise import scintillation_sigma

        airmass = np.where(np.isfinite(data.airmass), np.maximum(data.airmass, 1.0), 1.0)
        sigma = np.asarray(scintillation_sigma(config.aperture_diameter_m, airmass,
                                               config.site_altitude_m, data.exptime,
                                               config.scintillation_cy), dtype=np.float64)
        return (sigma, "Young (1967) as corrected by Osborn et al. (2015), configured telescope",
                False)
    if config.estimate_scintillation:
        return None, "estimated from the comparisons' excess scatter", True
    return None, "none (unknown)", False


def _estimated_scintillation(data: RunData, ensemble: Ensemble) -> np.ndarray:
    """Per-frame relative sigma s0 X^1.5 / sqrt(t), s0 from the white part of the comparisons'
    excess variance (its median: the floor every constant star shares; a variable's excess is
    mostly red, and the median ignores a few odd stars)."""
    airmass = np.where(np.isfinite(data.airmass), np.maximum(data.airmass, 1.0), 1.0)
    shape = airmass ** 1.5 / np.sqrt(data.exptime)
    white = ensemble.total_excess - ensemble.red_excess
    excess = white[np.isfinite(white)]
    if excess.size == 0:
        return np.zeros(data.n_frames)
    floor = float(np.median(excess))
    s0 = np.sqrt(floor / np.mean(shape ** 2)) / _MAG
    return s0 * shape


# ------------------------------------------------------------------------------------------------
# Aperture choice
# ------------------------------------------------------------------------------------------------

def _detrended_scatter(time, values, mask):
    """Robust std of values about a straight line in time over mask (inf if < 5 points)."""
    use = mask & np.isfinite(values)
    if use.sum() < 5:
        return np.inf
    t = time[use] - time[use].mean()
    coefficients = np.polyfit(t, values[use], 1) if np.ptp(t) > 0 else [0.0, np.mean(values[use])]
    residual = values[use] - np.polyval(coefficients, t)
    return max(float(1.4826 * np.median(np.abs(residual - np.median(residual)))), 1e-9)


def _aperture_basis(selection: Selection, baseline, config: EnsembleConfig) -> str:
    """Whose scatter decides the aperture: the target's out-of-event curve when there are
    enough out-of-event frames, else the check stars', else the comparisons'."""
    if baseline is not None and baseline.sum() >= config.min_baseline_frames:
        return "target"
    if selection.checks.size:
        return "check stars"
    return "comparisons"


def _aperture_score(data, a, selection, baseline, basis, config, threads):
    phot = _photometry(data, a, config)
    try:
        ens = solve_ensemble(phot.mag, phot.var, phot.ok, selection.comparisons, config, threads,
                             data.time)
    except EngineValueError:
        return np.inf
    z = ens.zero_point
    if basis == "target":
        d = phot.mag[:, data.target] - z
        return _detrended_scatter(data.time, d, baseline & phot.ok[:, data.target])
    if basis == "check stars":
        scores = [_detrended_scatter(data.time, phot.mag[:, j] - z, phot.ok[:, j])
                  for j in selection.checks]
    else:
        order = np.argsort(-ens.share)[:5]
        scores = [_detrended_scatter(data.time, ens.mag[:, i] - ens.loo_zero_point[:, i],
                                     ens.valid[:, i]) for i in order]
    return float(np.exp(np.mean(np.log(scores))))


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def build_run_lightcurve(photometry: pa.Table, frames: pa.Table, stars: pa.Table, target=None,
                         config: EnsembleConfig | None = None, *, psf: pa.Table | None = None,
                         run_id: str | None = None, threads: int | None = None) -> RunLightCurve:
    """Comparison ensemble, zero points, cloud flags, detrending and noise of one run.

    Parameters
    ----------
    photometry : pyarrow.Table, one row per (frame, star, radius) as
        `engine.aperture_photometry_frames` returns (frame, star, radius, flux, flux_err, flags,
        x, y, background, ...; optional var_* noise terms).
    frames : pyarrow.Table: frame, time_bjd_tdb, airmass, exptime; optional fwhm, sky,
        scintillation, run_id, site, telescope, filter.
    stars : pyarrow.Table: star, x, y; optional ra, dec, star_id, colour (BP-RP),
        mag_instrumental, is_target.
    target : the target's star number (default: the star table's is_target).
    config : EnsembleConfig (default: the safe defaults).
    psf : optional PSF photometry (frame, star, flux, flux_err, flags, ...) offered as one more
        aperture ('psf').
    run_id : overrides the frames table's run_id.
    threads : threads for the compiled kernels (default: all of Numba's).

    Returns
    -------
    RunLightCurve (table, diagnostics, stars).
    """
    config = EnsembleConfig() if config is None else config
    if not isinstance(config, EnsembleConfig):
        raise EngineValueError(f"config must be an EnsembleConfig, got {type(config).__name__}")
    data = prepare_run(photometry, frames, stars, target, psf=psf, run_id=run_id)
    if config.aperture is not None:
        chosen = data.aperture_index(config.aperture)
    else:
        radii = [k for k, ap in enumerate(data.apertures) if np.isfinite(ap.radius)]
        chosen = radii[len(radii) // 2] if radii else 0
    selection = select_stars(data, chosen, config)
    baseline = baseline_mask(data.time, config)

    scores = {}
    basis = _aperture_basis(selection, baseline, config)
    if config.aperture is None and len(data.apertures) > 1:
        for a in range(len(data.apertures)):
            scores[a] = _aperture_score(data, a, selection, baseline, basis, config, threads)
            data.drop_cache(keep=None)
        chosen = min(scores, key=lambda a: (scores[a], a))
    how = {"target": "lowest scatter of the target's out-of-event light curve",
           "check stars": "lowest scatter of the check stars' light curves (geometric mean)",
           "comparisons": "lowest scatter of the top-weighted comparisons' light curves, each "
                          "against the others (geometric mean)"}[basis]
    aperture_report = {
        "chosen": data.apertures[chosen].label,
        "radius": plain(data.apertures[chosen].radius),
        "how": ("configured" if config.aperture is not None else
                "the only one" if len(data.apertures) == 1 else how),
        "scatter_mag": {data.apertures[a].label: plain(s) for a, s in scores.items()},
    }
    data.drop_cache(keep=chosen)
    return _reduce(data, chosen, selection, baseline, config, threads, aperture_report)


def _reduce(data: RunData, a: int, selection: Selection, baseline, config: EnsembleConfig,
            threads, aperture_report) -> RunLightCurve:
    target = data.target
    comparisons = selection.comparisons
    phot, ensemble, scint, scint_source = _first_ensemble(data, a, comparisons, config, threads)
    quality = _frame_quality(data, a, config, ensemble, scint, None, threads)

    # Field stars: everything but the target measured on most frames.
    coverage = phot.ok.mean(axis=0)
    field = np.flatnonzero(coverage >= config.min_coverage)
    field = field[field != target]
    clear = (quality.flags & _FRAME_BAD) == 0

    # Differential extinction's colour term, from the field; then the ensemble again.
    if config.colour_extinction:
        d_field, v_field = _differential(phot.mag, phot.var, ensemble, field)
        colour_term = colour_extinction(d_field, v_field, data.colour[field], data.airmass, clear)
    else:
        colour_term = ColourExtinction(reason="turned off (colour_extinction = False)")
    correction = colour_term.correction(data.colour, data.airmass)
    if colour_term.ok:
        mag = phot.mag - correction
        ensemble = solve_ensemble(mag, phot.var, phot.ok, comparisons, config, threads,
                                  data.time)
        quality = _frame_quality(data, a, config, ensemble, scint, correction, threads)
        clear = (quality.flags & _FRAME_BAD) == 0
    else:
        mag = phot.mag

    # Shared systematics of the field (SysRem), then the target's own fit out of event.
    d_field, v_field = _differential(mag, phot.var, ensemble, field)
    systematics = field_systematics(d_field, v_field, data.airmass, config.sysrem_components,
                                    threads, fit_frames=clear)
    trend = np.zeros_like(mag)
    trend[:, field] = systematics.model
    d_target = mag[:, target] - ensemble.zero_point
    v_target = phot.var[:, target] + ensemble.zero_point_var
    fit_frames = None if baseline is None else (baseline & clear & phot.ok[:, target])
    target_fit = fit_target(d_target, v_target, _regressors(data, a, systematics, config),
                            fit_frames, config)
    trend[:, target] = target_fit.model
    trend_var = np.zeros_like(mag)
    trend_var[:, target] = target_fit.model_var

    roles = _roles(target, selection, field, config)
    curves = _curves(data, a, phot, ensemble, quality, correction + trend, trend_var,
                     baseline, roles)
    table = _rows(data, a, curves, roles, quality, ensemble.zero_point)

    noise = noise_report(data, a, phot, curves, roles, baseline, clear, scint, scint_source,
                         target_fit)
    stars = _star_summary(data, phot, curves, field, roles, ensemble)
    diagnostics = run_diagnostics(data, a, selection, ensemble, quality, colour_term,
                                  systematics, target_fit, noise, aperture_report, config,
                                  baseline, field, scint_source)
    if baseline is not None and not curves.norm_frames[:, 0].any():
        diagnostics["notes"].append("no usable out-of-event frame: the target is normalised "
                                    "over all its frames (its level here is not the baseline)")
    if comparisons.size < 3:
        diagnostics["notes"].append(f"only {comparisons.size} comparison stars: a variable one "
                                    "cannot be told from the others")
    return RunLightCurve(table=table, diagnostics=jsonable(diagnostics), stars=stars)


def _first_ensemble(data: RunData, a: int, comparisons, config: EnsembleConfig, threads):
    """(photometry, ensemble, scintillation, its source in words) at aperture a, the
    scintillation estimated from the comparisons' excess scatter when nothing else gives it."""
    scint, scint_source, estimate = _scintillation(data, a, config)
    phot = _photometry(data, a, config, scint)
    ensemble = solve_ensemble(phot.mag, phot.var, phot.ok, comparisons, config, threads,
                              data.time)
    if estimate:
        scint = _estimated_scintillation(data, ensemble)
        if np.any(scint > 0):
            phot = _photometry(data, a, config, scint)
            ensemble = solve_ensemble(phot.mag, phot.var, phot.ok, comparisons, config, threads,
                                      data.time)
        else:
            scint_source += ": none detected"
    return phot, ensemble, scint, scint_source


def _roles(target: int, selection: Selection, field, config: EnsembleConfig) -> dict:
    """Output star position -> role (target, comparison, check, field)."""
    roles = {target: "target"}
    roles.update({int(j): "comparison" for j in selection.comparisons})
    roles.update({int(j): "check" for j in selection.checks})
    if config.include_field_stars:
        for j in field:
            roles.setdefault(int(j), "field")
    return roles


def _frame_quality(data, a, config, ensemble, scint, correction, threads) -> FrameQuality:
    """Transparency and frame flags. The zero points come from the largest aperture (the least
    sensitive to seeing) with the same comparisons; the scatter ratios from aperture a's."""
    radii = [(ap.radius, k) for k, ap in enumerate(data.apertures) if np.isfinite(ap.radius)]
    largest = max(radii)[1] if radii else a
    transparency = ensemble
    if largest != a:
        phot = _photometry(data, largest, config, scint)
        mag = phot.mag if correction is None else phot.mag - correction
        transparency = solve_ensemble(mag, phot.var, phot.ok, ensemble.comparisons, config,
                                      threads, data.time)
    return frame_quality(data.time, data.airmass, transparency.zero_point,
                         transparency.zero_point_var, ensemble.scatter_ratio,
                         ensemble.scatter_count, config, fwhm=data.fwhm)


def _differential(mag, var, ensemble: Ensemble, stars):
    """(frames, stars) magnitudes minus the zero point (comparisons: of the others) and their
    variances, zero-point error included."""
    d = mag[:, stars] - ensemble.zero_point[:, None]
    v = var[:, stars] + ensemble.zero_point_var[:, None]
    position = {int(c): i for i, c in enumerate(ensemble.comparisons)}
    for col, j in enumerate(stars):
        i = position.get(int(j))
        if i is not None:
            d[:, col] = mag[:, j] - ensemble.loo_zero_point[:, i]
            v[:, col] = var[:, j] + ensemble.loo_var[:, i]
    return d, v


def _regressors(data: RunData, a: int, systematics: FieldSystematics, config: EnsembleConfig):
    regressors = {}
    if config.airmass_term and data.airmass is not None:
        regressors["airmass"] = data.airmass
    for n, vector in enumerate(systematics.vectors):
        regressors[f"sysrem_{n + 1}"] = vector
    for name in config.regressors:
        if name in ("x", "y"):
            values = data.matrix(a, name)[:, data.target] if data.has_column(a, name) else None
        elif name == "fwhm":
            values = data.fwhm
        else:  # sky: the frames table's, else the target's local background
            values = data.sky
            if values is None and data.has_column(a, "background"):
                values = data.matrix(a, "background")[:, data.target]
        if values is not None:
            regressors[name] = values
    return regressors


@dataclass
class _Curves:
    stars: np.ndarray          # positions of the output stars
    rel_flux: np.ndarray       # (k, s)
    rel_flux_err: np.ndarray
    rel_flux_raw: np.ndarray
    detrend_model: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    zero_var: np.ndarray       # (k, s) zero-point variance each star was measured against
    norm_frames: np.ndarray    # (k, s) frames each star's normalisation rests on
    flags: np.ndarray          # (k, s) uint32 row flags (photometry | frame | row)


def _curves(data, a, phot, ensemble, quality, total_trend, trend_var, baseline,
            roles) -> _Curves:
    stars = np.array(sorted(roles, key=lambda j: (j != data.target, j)), dtype=np.int64)
    n_frames = data.n_frames
    position = {int(c): i for i, c in enumerate(ensemble.comparisons)}
    clear = (quality.flags & _FRAME_BAD) == 0
    photometry_flags = data.matrix(a, "flags", fill=0, dtype=np.uint32)
    shape = (n_frames, stars.size)
    out = {name: np.full(shape, np.nan) for name in (
        "rel_flux", "rel_flux_err", "rel_flux_raw", "detrend_model", "mag", "mag_err",
        "zero_var")}
    norm_frames = np.zeros(shape, dtype=bool)
    flags = np.zeros(shape, dtype=np.uint32)
    for s, j in enumerate(stars):
        i = position.get(int(j))
        if i is None:
            zero, zero_var = ensemble.zero_point, ensemble.zero_point_var
            outlier = np.zeros(n_frames, dtype=bool)
        else:
            zero, zero_var = ensemble.loo_zero_point[:, i], ensemble.loo_var[:, i]
            outlier = ensemble.valid[:, i] & ~ensemble.fit.used[:, i]
        zero_var = zero_var + trend_var[:, j]   # the detrending model's own error, if any
        flux = phot.flux[:, j]
        sigma = np.sqrt(phot.flux_var[:, j])
        rate = flux / data.exptime
        trend = total_trend[:, j]
        frames = clear & phot.ok[:, j] & np.isfinite(zero)
        if j == data.target and baseline is not None:
            frames &= baseline
        with np.errstate(all="ignore"):
            scale_raw = 10.0 ** (0.4 * zero) / data.exptime
            scale = scale_raw * 10.0 ** (0.4 * trend)
            raw = _normalised(flux * scale_raw, sigma * scale_raw, frames)
            detrended = _normalised(flux * scale, sigma * scale, frames)
            rel, rel_sigma = detrended
            out["rel_flux"][:, s] = rel
            out["rel_flux_err"][:, s] = np.sqrt(rel_sigma ** 2 + (rel / _MAG) ** 2 * zero_var)
            out["rel_flux_raw"][:, s] = raw[0]
            out["detrend_model"][:, s] = raw[0] / rel
            out["mag"][:, s] = np.where(rate > 0, phot.mag[:, j] - zero - trend, np.nan)
            out["mag_err"][:, s] = np.where(rate > 0, np.sqrt(phot.var[:, j] + zero_var), np.nan)
        out["zero_var"][:, s] = zero_var
        norm_frames[:, s] = frames
        row_flags = photometry_flags[:, j] | quality.flags
        row_flags = np.where(np.isfinite(flux), row_flags,
                             row_flags | np.uint32(MeasurementFlag.NO_FLUX))
        row_flags = np.where(outlier, row_flags | np.uint32(MeasurementFlag.ENSEMBLE_OUTLIER),
                             row_flags)
        row_flags = np.where(np.isfinite(zero) | ((quality.flags & np.uint32(
            MeasurementFlag.NO_ENSEMBLE)) != 0), row_flags,
            row_flags | np.uint32(MeasurementFlag.NO_ENSEMBLE))
        flags[:, s] = row_flags.astype(np.uint32)
    return _Curves(stars=stars, norm_frames=norm_frames, flags=flags, **out)


def _normalised(value, sigma, frames):
    """value / (its weighted mean over frames), and sigma alike; NaN mean when no frame."""
    use = frames & np.isfinite(value) & np.isfinite(sigma) & (sigma > 0)
    if not use.any():
        use = np.isfinite(value) & np.isfinite(sigma) & (sigma > 0)
    if not use.any():
        return np.full(value.shape, np.nan), np.full(value.shape, np.nan)
    w = 1.0 / sigma[use] ** 2
    mean = float(np.sum(w * value[use]) / np.sum(w))
    return value / mean, sigma / abs(mean)


def _rows(data: RunData, a: int, curves: _Curves, roles: dict, quality: FrameQuality,
          zero_point: np.ndarray) -> pa.Table:
    n_frames, n_out = curves.rel_flux.shape

    def per_frame(values):
        return np.repeat(np.asarray(values), n_out)

    def per_star(values):
        return np.tile(np.asarray(values), n_frames)

    stars = curves.stars
    n_rows = n_frames * n_out

    def constant(value):
        return Repeated([value], np.zeros(n_rows, dtype=np.int64))

    labels = sorted(set(roles.values()))
    role_index = np.array([labels.index(roles[int(j)]) for j in stars], dtype=np.int64)
    columns = {
        "run_id": constant(data.run_id),
        "time_bjd_tdb": per_frame(data.time),
        "time_err_s": per_frame(data.time_err) if data.time_err is not None else None,
        "star_id": per_star(data.star_id[stars]).astype(np.int64),
        "role": Repeated(labels, per_star(role_index)),
        "rel_flux": curves.rel_flux.ravel(),
        "rel_flux_err": curves.rel_flux_err.ravel(),
        "airmass": per_frame(data.airmass),
        "flags": curves.flags.ravel(),
        "site": constant(data.site),
        "telescope": constant(data.telescope),
        "filter": constant(data.filter),
        "frame": per_frame(data.frame).astype(np.int64),
        "star": per_star(data.star[stars]).astype(np.int64),
        "aperture": constant(data.apertures[a].label),
        "rel_flux_raw": curves.rel_flux_raw.ravel(),
        "detrend_model": curves.detrend_model.ravel(),
        "mag": curves.mag.ravel(),
        "mag_err": curves.mag_err.ravel(),
        "zero_point": per_frame(zero_point),
        "transparency": per_frame(quality.transparency),
    }
    return table_from_columns(columns, LIGHTCURVES_SCHEMA)


def _star_summary(data, phot, curves, field, roles, ensemble) -> pa.Table:
    """Run-mean detrended magnitude of every field star and output star (for merge_runs):
    weighted mean over the star's clear (normalisation) frames, its error (the larger of the
    formal one and the robust scatter / sqrt(n)), rms, median expected error and excess."""
    index_of = {int(j): s for s, j in enumerate(curves.stars)}
    rest = np.array([j for j in field if int(j) not in index_of], dtype=np.int64)
    members = np.concatenate([curves.stars, rest])
    mag = np.empty((data.n_frames, members.size))
    err = np.empty_like(mag)
    frames = np.zeros(mag.shape, dtype=bool)
    n_out = curves.stars.size
    mag[:, :n_out], err[:, :n_out], frames[:, :n_out] = curves.mag, curves.mag_err, \
        curves.norm_frames
    if rest.size:
        d, v = _differential(phot.mag, phot.var, ensemble, rest)
        clear_frames = curves.norm_frames.any(axis=1)
        mag[:, n_out:], err[:, n_out:] = d, np.sqrt(v)
        frames[:, n_out:] = phot.ok[:, rest] & clear_frames[:, None]
    use = frames & np.isfinite(mag) & np.isfinite(err) & (err > 0)
    n = use.sum(axis=0)
    with np.errstate(all="ignore"):
        w = np.where(use, 1.0 / np.where(use, err, 1.0) ** 2, 0.0)
        mean = (w * np.where(use, mag, 0.0)).sum(axis=0) / w.sum(axis=0)
        residual = np.where(use, mag - mean, np.nan)
        scatter = np.sqrt(np.where(use, residual ** 2, 0.0).sum(axis=0) / n)
        centre = row_nanmedian(residual, axis=0)
        robust = 1.4826 * row_nanmedian(np.abs(residual - centre), axis=0)
        expected = row_nanmedian(np.where(use, err, np.nan), axis=0)
        mean_err = np.maximum(np.sqrt(1.0 / w.sum(axis=0)), robust / np.sqrt(n))
        excess = np.sqrt(np.maximum(robust ** 2 - expected ** 2, 0.0))
    share_of = {int(c): float(ensemble.share[i]) for i, c in enumerate(ensemble.comparisons)}
    none = n == 0
    nan = np.nan
    columns = {
        "run_id": Repeated([data.run_id], np.zeros(members.size, dtype=np.int64)),
        "star": data.star[members], "star_id": data.star_id[members],
        "role": [roles.get(int(j), "field") for j in members],
        "ra": data.ra[members] if data.ra is not None else np.full(members.size, nan),
        "dec": data.dec[members] if data.dec is not None else np.full(members.size, nan),
        "colour": data.colour[members],
        "mag": np.where(none, nan, mean), "mag_err": np.where(none, nan, mean_err),
        "scatter": np.where(none, nan, scatter), "expected": np.where(none, nan, expected),
        "frames": n.astype(np.int64), "excess": np.where(none, nan, excess),
        "weight_share": np.array([share_of.get(int(j), 0.0) for j in members]),
    }
    return table_from_columns(columns, STAR_SUMMARY_SCHEMA)

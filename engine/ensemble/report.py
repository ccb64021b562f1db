"""One run's report.json diagnostics, as `build_run_lightcurve` returns them.

The comparisons with their weights and excess scatter (and the suspected variables among
them), every frame's zero point and transparency, the flagged frames with their reasons, how
the comparisons were chosen, the detrending, and the noise budget: expected against achieved
scatter of the target and the check stars.
"""

from __future__ import annotations

import numpy as np

from engine.ensemble.noise import MAG_PER_RELATIVE_FLUX, noise_summary
from engine.flags import MeasurementFlag, describe

__all__ = ["noise_report", "plain", "quality_aperture", "run_diagnostics"]


def plain(value):
    """JSON-ready: NaN / inf become None, NumPy scalars plain Python."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None


def quality_aperture(data, a: int) -> str:
    """Label of the aperture the transparency is judged at: the largest radius (else a)."""
    radii = [(ap.radius, k) for k, ap in enumerate(data.apertures) if np.isfinite(ap.radius)]
    return data.apertures[max(radii)[1] if radii else a].label


def _star_noise(data, a, phot, curves, s, frames, basis, scint, target_fit, roles) -> dict:
    """Expected vs achieved scatter of output star s over frames, term by term."""
    j = int(curves.stars[s])
    terms_available = data.variance_terms(a)
    parameters = max(target_fit.parameters, 1) if j == data.target else 1
    flux = phot.flux[:, j]
    with np.errstate(all="ignore"):
        terms = {name.removeprefix("var_"): np.sqrt(data.matrix(a, name)[:, j]) / np.abs(flux)
                 for name in terms_available}
        if not terms_available:
            terms["photometric (flux_err)"] = data.matrix(a, "flux_err")[:, j] / np.abs(flux)
        if scint is not None:
            terms["scintillation"] = np.asarray(scint, dtype=np.float64)
        terms["ensemble and detrending"] = (np.sqrt(curves.zero_var[:, s])
                                            / MAG_PER_RELATIVE_FLUX)
    result = noise_summary(curves.rel_flux[:, s], curves.rel_flux_err[:, s], frames, terms,
                           basis=basis, parameters=parameters)
    result.update(star=int(data.star[j]), star_id=int(data.star_id[j]), role=roles[j])
    return result


def noise_report(data, a, phot, curves, roles, baseline, clear, scint, scint_source,
                 target_fit) -> dict:
    """The target's noise (out of event when there are enough such frames) and the check
    stars', each on its good clear frames; the headline ratio says which basis it has."""
    def summary(s, frames, basis):
        return _star_noise(data, a, phot, curves, s, frames, basis, scint, target_fit, roles)

    ok_rows = (curves.flags & np.uint32(~int(MeasurementFlag.BLENDED) & 0xFFFFFFFF)) == 0
    target_frames = ok_rows[:, 0] & clear
    if baseline is not None and (target_frames & baseline).sum() >= 10:
        target = summary(0, target_frames & baseline, "target, out-of-event frames")
        headline = "rms_ratio"
    else:
        basis = ("target, all clear frames (no event window: any signal counts as scatter)"
                 if baseline is None else
                 "target, all clear frames (too few out-of-event frames: any signal counts "
                 "as scatter)")
        target = summary(0, target_frames, basis)
        headline = "point_to_point_ratio"
    checks = [summary(s, ok_rows[:, s] & clear, "check star, all clear frames")
              for s, j in enumerate(curves.stars) if roles[int(j)] == "check"]
    return {"target": target, "check_stars": checks, "ratio": target.get(headline),
            "ratio_basis": headline, "scintillation_source": scint_source}


def _comparison_report(data, selection, ensemble) -> list:
    """Per comparison: weight share, brightness, colour, rms against expected, excess."""
    fit = ensemble.fit
    comparisons = []
    for i, j in enumerate(ensemble.comparisons):
        used = fit.used[:, i]
        residual = ensemble.mag[:, i] - fit.star_mag[i] - ensemble.loo_zero_point[:, i]
        good = used & np.isfinite(residual)
        expected = np.sqrt(ensemble.var[:, i] + ensemble.loo_var[:, i])
        comparisons.append({
            "star": int(data.star[j]), "star_id": int(data.star_id[j]),
            "weight_share": plain(ensemble.share[i]),
            "mag_instrumental": plain(selection.magnitude[j]),
            "delta_mag": plain(selection.magnitude[j] - selection.magnitude[data.target]),
            "colour": plain(data.colour[j]),
            "rms_mag": plain(np.sqrt(np.mean(residual[good] ** 2)) if good.any() else None),
            "expected_rms_mag": plain(np.sqrt(np.mean(expected[good] ** 2))
                                      if good.any() else None),
            "excess_rms_mag": plain(np.sqrt(ensemble.total_excess[i])),
            "red_excess_rms_mag": plain(np.sqrt(ensemble.red_excess[i])),
            "frames_used": int(used.sum()),
            "frames_clipped": int((ensemble.valid[:, i] & ~used).sum()),
        })
    return comparisons


def _suspected_variables(comparisons: list, timescale_frames) -> list:
    """Down-weighted comparisons whose scatter is beyond twice the noise, or whose
    time-correlated part is beyond three times what noise leaves after averaging over the
    weighting timescale."""
    n_bin = max(int(timescale_frames), 1)
    return [c["star"] for c in comparisons
            if c["expected_rms_mag"] and (c["weight_share"] or 0.0) < 1.0 / len(comparisons)
            and ((c["excess_rms_mag"] or 0.0) > 2.0 * c["expected_rms_mag"]
                 or (c["red_excess_rms_mag"] or 0.0)
                 > 3.0 * c["expected_rms_mag"] / np.sqrt(n_bin))]


def _frame_report(data, ensemble, quality) -> list:
    return [{
        "frame": int(data.frame[k]), "time_bjd_tdb": float(data.time[k]),
        "airmass": plain(data.airmass[k]),
        "zero_point": plain(ensemble.zero_point[k]),
        "zero_point_err": plain(np.sqrt(ensemble.zero_point_var[k])),
        "transparency_zero_point": plain(quality.zero_point[k]),
        "clear_sky": plain(quality.baseline[k]),
        "transparency": plain(quality.transparency[k]),
        "scatter_ratio": plain(ensemble.scatter_ratio[k]),
        "comparisons_used": int(ensemble.fit.stars_used[k]),
        "flags": int(quality.flags[k]),
    } for k in range(data.n_frames)]


def _flag_count(quality, flag) -> int:
    return int(((quality.flags & np.uint32(flag)) != 0).sum())


def _rejected_counts(selection) -> dict:
    """How many candidates each kind of reason rejected (the reasons without their numbers)."""
    rejected = {}
    for reason in selection.rejected.values():
        key = reason.split(":")[0].split(" (")[0]
        for kind in ("measured on", "saturated", "blended"):
            if key.startswith(kind):
                key = "measured on too few frames" if kind == "measured on" else kind
        rejected[key] = rejected.get(key, 0) + 1
    return rejected


def _weights_report(data, selection, ensemble, config) -> dict:
    comparisons = _comparison_report(data, selection, ensemble)
    shares = np.array([c["weight_share"] or 0.0 for c in comparisons])
    return {"comparisons": comparisons,
            "largest_share": plain(shares.max()) if shares.size else None,
            "suspected_variables": _suspected_variables(comparisons, ensemble.timescale_frames),
            "timescale_min": config.weight_timescale_min,
            "timescale_frames": int(ensemble.timescale_frames),
            "iterations": int(ensemble.fit.iterations),
            "converged": bool(ensemble.fit.converged)}


def _detrending_report(config, baseline, colour_term, systematics, field, target_fit) -> dict:
    return {
        "windows": {"event": [list(w) for w in config.event_windows],
                    "baseline": [list(w) for w in config.baseline_windows],
                    "out_of_event_frames": None if baseline is None else int(baseline.sum())},
        "colour_extinction": {k: plain(v) if not isinstance(v, str) else v
                              for k, v in colour_term.as_dict().items()},
        "sysrem": systematics.as_dict() | {"field_stars": int(field.size)},
        "target_fit": target_fit.as_dict(),
    }


def run_diagnostics(data, a, selection, ensemble, quality, colour_term, systematics, target_fit,
                    noise, aperture_report, config, baseline, field, scint_source) -> dict:
    """The run's report.json entry (before `jsonable`)."""
    flagged = [{"frame": int(data.frame[k]), "time_bjd_tdb": float(data.time[k]),
                "flags": describe(int(quality.flags[k])), "reason": quality.reasons[k]}
               for k in range(data.n_frames) if quality.flags[k]]
    return {
        "run_id": data.run_id, "site": data.site, "telescope": data.telescope,
        "filter": data.filter, "frames": int(data.n_frames), "stars": int(data.n_stars),
        "star_id_source": data.star_id_source,
        "target": {"star": int(data.star[data.target]),
                   "star_id": int(data.star_id[data.target]),
                   "mag_instrumental": plain(selection.magnitude[data.target]),
                   "colour": plain(data.colour[data.target])},
        "aperture": aperture_report,
        "selection": {"automatic": selection.automatic,
                      "comparisons": [int(data.star[j]) for j in selection.comparisons],
                      "check_stars": [int(data.star[j]) for j in selection.checks],
                      "rejected_counts": _rejected_counts(selection), "notes": selection.notes},
        "weights": _weights_report(data, selection, ensemble, config),
        "zero_points": {"aperture": data.apertures[a].label,
                        "transparency_aperture": quality_aperture(data, a),
                        "extinction_mag_per_airmass": plain(quality.extinction),
                        "clear_sky_jitter_mag": plain(quality.jitter),
                        "frames": _frame_report(data, ensemble, quality)},
        "flagged_frames": flagged,
        "flag_counts": {"cloud": _flag_count(quality, MeasurementFlag.CLOUD),
                        "noise_model_exceeded": _flag_count(
                            quality, MeasurementFlag.NOISE_MODEL_EXCEEDED),
                        "no_ensemble": _flag_count(quality, MeasurementFlag.NO_ENSEMBLE)},
        "detrending": _detrending_report(config, baseline, colour_term, systematics, field,
                                         target_fit),
        "noise": noise,
        "scintillation_source": scint_source,
        "config": config.as_dict(),
        "notes": list(data.notes),
    }

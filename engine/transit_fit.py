"""Joint transit fits over runs from several telescopes, with per-run baselines.

Partial transits from several sites fit together: one planet (mid-time, Rp/Rs, a/Rs,
inclination; the period fixed) and, per run, a baseline `offset * (1 + slope * regressor)` with
the regressor the airmass (default) or time, so that each site's own zero point and trend are
fitted beside the transit. The model is `engine.kernels.transit.transit_light_curve`, integrated
over each exposure. Limb darkening is fixed per filter (generic quadratic coefficients for a
Sun-like star unless the caller gives them).

Uncertainties come from the covariance of the weighted least-squares solution (Gauss-Newton:
(J^T W J)^-1), scaled by the reduced chi-square when it exceeds one, so that under-estimated
error bars widen the intervals rather than shrink them. Their coverage is checked in the tests on
simulated injections. Per-run timing residuals refit the mid-time on each run alone with the
shape held at the joint solution: a site's clock error shows there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.optimize import least_squares

from engine.errors import EngineValueError
from engine.kernels.transit import transit_light_curve

__all__ = ["DEFAULT_LIMB_DARKENING", "TransitFit", "fit_transit"]

#: Quadratic limb darkening (u1, u2) by filter for a Sun-like dwarf (rounded from Claret-style
#: tables); a fit takes these unless given its own.
DEFAULT_LIMB_DARKENING = {
    "U": (0.75, 0.10), "B": (0.62, 0.18), "V": (0.47, 0.24), "G": (0.44, 0.25),
    "R": (0.38, 0.26), "I": (0.29, 0.27), "CLEAR": (0.42, 0.25), "L": (0.42, 0.25),
    "g": (0.55, 0.21), "r": (0.40, 0.26), "i": (0.31, 0.27), "z": (0.25, 0.27),
}
_FALLBACK_LIMB_DARKENING = (0.42, 0.25)


@dataclass
class TransitFit:
    """The result of `fit_transit`; `to_dict()` is what FIT.json holds."""

    tmid: float
    tmid_err: float
    rp_rs: float
    rp_rs_err: float
    a_rs: float
    a_rs_err: float
    inc: float
    inc_err: float
    depth: float
    period: float
    chi2_reduced: float
    n_points: int
    runs: dict[str, dict] = field(default_factory=dict)
    o_minus_c: float | None = None
    o_minus_c_err: float | None = None
    tmid_err_fit: float | None = None
    tmid_err_timing: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: NaN (an error undefined at a bound) becomes null."""
        return _json_ready({
            "tmid": self.tmid, "tmid_err": self.tmid_err, "rp_rs": self.rp_rs,
            "rp_rs_err": self.rp_rs_err, "a_rs": self.a_rs, "a_rs_err": self.a_rs_err,
            "inc": self.inc, "inc_err": self.inc_err, "depth": self.depth, "period": self.period,
            "chi2_reduced": self.chi2_reduced, "n_points": self.n_points,
            "o_minus_c_days": self.o_minus_c, "o_minus_c_err_days": self.o_minus_c_err,
            "tmid_err_fit": self.tmid_err_fit, "tmid_err_timing": self.tmid_err_timing,
            "tmid_err_note": ("tmid_err is the fit's error and the runs' timing errors "
                              "(time_err_s: stamp resolution, clock uncertainty) in quadrature"),
            "runs": self.runs,
        })


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def limb_darkening_for(filter_name: str, given: dict | None) -> tuple[float, float]:
    """(u1, u2) for a filter: the caller's value, else DEFAULT_LIMB_DARKENING, else a fallback."""
    if given and filter_name in given:
        return tuple(given[filter_name])  # type: ignore[return-value]
    key = (filter_name or "").strip()
    for candidate in (key, key.upper(), key[:1].upper()):
        if candidate in DEFAULT_LIMB_DARKENING:
            return DEFAULT_LIMB_DARKENING[candidate]
    return _FALLBACK_LIMB_DARKENING


def _as_arrays(lightcurves: pa.Table) -> dict[str, np.ndarray]:
    needed = ["run_id", "time_bjd_tdb", "rel_flux", "rel_flux_err"]
    missing = [c for c in needed if c not in lightcurves.column_names]
    if missing:
        raise EngineValueError(f"the light curves lack columns {missing}")
    table = lightcurves
    if "role" in table.column_names:
        roles = np.asarray(table.column("role").to_pylist())
        table = table.filter(pa.array(roles == "target"))
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in needed}
    columns["run_id"] = np.asarray(table.column("run_id").to_pylist(), dtype=object)
    n = table.num_rows
    for name, default in (("airmass", 1.0), ("exptime_days", 0.0), ("time_err_s", 0.0)):
        columns[name] = (np.asarray(table.column(name).to_numpy(zero_copy_only=False), float)
                         if name in table.column_names else np.full(n, default))
    if "exptime" in table.column_names and "exptime_days" not in table.column_names:
        columns["exptime_days"] = np.asarray(table.column("exptime").to_numpy(
            zero_copy_only=False), float) / 86400.0
    columns["filter"] = (np.asarray(table.column("filter").to_pylist(), dtype=object)
                         if "filter" in table.column_names else np.full(n, "", dtype=object))
    columns["time_err_s"] = np.where(np.isfinite(columns["time_err_s"]), columns["time_err_s"],
                                     0.0)
    good = (np.isfinite(columns["rel_flux"]) & np.isfinite(columns["rel_flux_err"])
            & (columns["rel_flux_err"] > 0) & np.isfinite(columns["time_bjd_tdb"]))
    if "flags" in table.column_names:
        good &= table.column("flags").to_numpy(zero_copy_only=False) == 0
    return {name: values[good] for name, values in columns.items()}


def fit_transit(lightcurves: pa.Table, *, period: float, t0: float, rp_rs: float = 0.1,
                a_rs: float = 10.0, inc: float = 89.0, limb_darkening: dict | None = None,
                baseline: str = "airmass", t0_window: float | None = None,
                ephemeris: tuple[float, float] | None = None,
                priors: dict[str, tuple[float, float]] | None = None) -> TransitFit:
    """Fit one transit jointly over every run in `lightcurves`.

    Parameters
    ----------
    lightcurves : pyarrow.Table in the lightcurves.parquet schema (target rows are used: `role`
        = 'target' when present; rows with flags != 0 are left out). Optional `exptime` (s) or
        `exptime_days` columns integrate the model over each exposure.
    period : orbital period, days (fixed).
    t0 : the predicted mid-transit BJD_TDB (the starting point of the fit).
    rp_rs, a_rs, inc : starting values (inclination in degrees).
    limb_darkening : {filter: (u1, u2)}; other filters take DEFAULT_LIMB_DARKENING.
    baseline : 'airmass' (offset and slope in airmass), 'time' (offset and slope in time) or
        'offset' per run.
    t0_window : the mid-time is bounded to t0 +- this (days; default a quarter of the duration
        implied by the starting values, at least 0.05 d).
    ephemeris : (T0, P) of a published ephemeris for the O-C of the fitted mid-time.
    priors : {name: (mean, sigma)} Gaussian priors on 'rp_rs', 'a_rs' or 'inc' (degrees), e.g.
        a published a/Rs and inclination, which partial transits alone constrain poorly. They
        enter the fit as extra residuals, so the quoted errors include them.
    """
    if not (period > 0 and math.isfinite(period) and math.isfinite(t0)):
        raise EngineValueError("period must be > 0 and t0 finite")
    if baseline not in ("airmass", "time", "offset"):
        raise EngineValueError(f"baseline must be 'airmass', 'time' or 'offset', got {baseline!r}")
    prior_terms = _prior_terms(priors)
    data = _as_arrays(lightcurves)
    runs = sorted(set(data["run_id"].tolist()))
    if not runs or len(data["time_bjd_tdb"]) < 5:
        raise EngineValueError("too few good target measurements to fit a transit")
    run_index = np.array([runs.index(r) for r in data["run_id"]])
    n_runs = len(runs)
    ld = np.array([limb_darkening_for(str(f), limb_darkening) for f in data["filter"]])
    time = data["time_bjd_tdb"]
    flux = data["rel_flux"]
    sigma = data["rel_flux_err"]
    exptime = data["exptime_days"]
    if baseline == "airmass":
        regressor = data["airmass"] - 1.0
    elif baseline == "time":
        regressor = time - t0
    else:
        regressor = np.zeros_like(time)
    n_slopes = n_runs if baseline != "offset" else 0
    if t0_window is None:
        duration = period / math.pi * math.asin(min(1.0, (1.0 + rp_rs) / a_rs))
        t0_window = max(0.05, 0.5 * duration)
    # Limb darkening differs by filter: evaluate the model once per distinct (u1, u2).
    groups = {}
    for key in {tuple(row) for row in ld}:
        groups[key] = np.all(ld == np.array(key), axis=1)

    # The mid-time is fitted as an offset from t0 (days): finite-difference steps are relative to
    # a parameter's size, and a BJD of 2.46e6 would make them tens of minutes long.
    def transit(params, t=time, e=exptime, group_masks=groups):
        shift, p, a, i = params[:4]
        tmid = t0 + shift
        model = np.empty_like(t)
        for (u1, u2), mask in group_masks.items():
            model[mask] = transit_light_curve(t[mask], tmid, period, p, a, i, u1, u2,
                                              exptime=e[mask])
        return model

    def model(params):
        offsets = params[4:4 + n_runs][run_index]
        slopes = params[4 + n_runs:][run_index] if n_slopes else 0.0
        return transit(params) * offsets * (1.0 + slopes * regressor)

    def residuals(params):
        data_terms = (flux - model(params)) / sigma
        if not prior_terms:
            return data_terms
        return np.concatenate([data_terms, [(params[index] - mean) / width
                                            for index, mean, width in prior_terms]])

    start = [0.0, rp_rs, a_rs, inc]
    for index, mean, _ in prior_terms:
        start[index] = mean  # a prior's mean is a better start than a default guess
    start += [float(np.median(flux[run_index == k])) for k in range(n_runs)]
    start += [0.0] * n_slopes
    lower = [-t0_window, 1e-3, 1.5, 60.0] + [0.0] * n_runs + [-np.inf] * n_slopes
    upper = [t0_window, 0.5, 200.0, 90.0] + [np.inf] * n_runs + [np.inf] * n_slopes
    start = np.clip(start, np.nextafter(lower, np.inf), np.nextafter(upper, -np.inf))
    solution = least_squares(residuals, start, bounds=(lower, upper), x_scale="jac",
                             method="trf", max_nfev=2000)
    params = solution.x
    dof = max(1, len(flux) - len(params))
    chi2_reduced = float(np.sum(solution.fun[:len(flux)] ** 2) / dof)
    errors = _parameter_errors(solution.jac, chi2_reduced, at_bound=solution.active_mask != 0)

    run_report = {}
    timing = data["time_err_s"]
    for k, run in enumerate(runs):
        mine = run_index == k
        resid = flux[mine] - model(params)[mine]
        run_report[run] = {
            "n_points": int(np.count_nonzero(mine)),
            "residual_rms": float(np.std(resid)),
            "offset": float(params[4 + k]),
            "slope": float(params[4 + n_runs + k]) if n_slopes else 0.0,
            **_run_timing(t0, params, k, mine, time, flux, sigma, exptime, ld, regressor,
                          period, n_runs, n_slopes, float(np.median(timing[mine]))),
        }
    shift, p, a, inc_fit = (float(v) for v in params[:4])
    tmid = t0 + shift
    depth = p * p  # the geometric depth (Rp/Rs)^2; the observed one depends on limb darkening
    timing_err = _timing_error(run_report)
    tmid_err = math.hypot(float(errors[0]), timing_err)
    o_minus_c = o_minus_c_err = None
    if ephemeris is not None:
        epoch = round((tmid - ephemeris[0]) / ephemeris[1])
        o_minus_c = tmid - (ephemeris[0] + epoch * ephemeris[1])
        o_minus_c_err = tmid_err
    return TransitFit(tmid=tmid, tmid_err=tmid_err, rp_rs=p, rp_rs_err=float(errors[1]),
                      a_rs=a, a_rs_err=float(errors[2]), inc=inc_fit, inc_err=float(errors[3]),
                      depth=depth, period=float(period), chi2_reduced=chi2_reduced,
                      n_points=int(len(flux)), runs=run_report, o_minus_c=o_minus_c,
                      o_minus_c_err=o_minus_c_err, tmid_err_fit=float(errors[0]),
                      tmid_err_timing=timing_err)


def _timing_error(run_report: dict) -> float:
    """The joint mid-time's error from the runs' timing errors (days): each run's clock error
    moves its data as a whole, so the runs' errors combine with the weight each run has in the
    mid-time (1 / its own tmid_err^2; equal weights when none constrains it)."""
    sigma = np.array([r["timing_err_s"] for r in run_report.values()]) / 86400.0
    if not sigma.size or not np.any(sigma > 0):
        return 0.0
    own = np.array([r["tmid_err_fit"] for r in run_report.values()], dtype=float)
    weight = np.where(np.isfinite(own) & (own > 0), 1.0 / np.where(own > 0, own, 1.0) ** 2, 0.0)
    if not np.any(weight > 0):
        weight = np.ones_like(sigma)
    return float(np.sqrt(np.sum((weight * sigma) ** 2)) / np.sum(weight))


#: Parameters a prior may constrain, and their place in the fit's parameter vector.
PRIOR_PARAMETERS = {"rp_rs": 1, "a_rs": 2, "inc": 3}


def _prior_terms(priors) -> list[tuple[int, float, float]]:
    """(parameter index, mean, sigma) of each Gaussian prior, validated."""
    terms = []
    for name, value in (priors or {}).items():
        if name not in PRIOR_PARAMETERS:
            raise EngineValueError(f"no prior on {name!r}: priors may be on "
                                   f"{sorted(PRIOR_PARAMETERS)}")
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            mean, width = (float(v) for v in value)
        except (TypeError, ValueError):
            raise EngineValueError(f"prior on {name} must be (mean, sigma), got {value!r}") from None
        if not (math.isfinite(mean) and math.isfinite(width) and width > 0):
            raise EngineValueError(f"prior on {name}: mean finite and sigma > 0, got {value!r}")
        terms.append((PRIOR_PARAMETERS[name], mean, width))
    return terms


def _parameter_errors(jacobian: np.ndarray, chi2_reduced: float, at_bound=None) -> np.ndarray:
    """Standard errors from (J^T J)^-1 (J of the normalised residuals), widened by chi2 > 1.

    A parameter that ended on a bound (e.g. an inclination of exactly 90 degrees) has no
    symmetric error: it gets NaN and the others are computed with it held fixed."""
    free = np.ones(jacobian.shape[1], dtype=bool) if at_bound is None else ~np.asarray(at_bound)
    errors = np.full(jacobian.shape[1], np.nan)
    jtj = jacobian[:, free].T @ jacobian[:, free]
    try:
        covariance = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        covariance = np.linalg.pinv(jtj)
    errors[free] = np.sqrt(np.clip(np.diag(covariance), 0.0, None) * max(1.0, chi2_reduced))
    return errors


def _run_timing(t0, params, k, mine, time, flux, sigma, exptime, ld, regressor, period, n_runs,
                n_slopes, timing_err_s=0.0) -> dict:
    """This run's own mid-time with the shape fixed at the joint fit: its timing residual.
    Its tmid_err holds the fit's error and the run's timing error (s) in quadrature."""
    shift, p, a, inc = params[:4]
    tmid = t0 + shift
    u1, u2 = ld[mine][0]
    t, f, s, e, x = time[mine], flux[mine], sigma[mine], exptime[mine], regressor[mine]

    def residuals(q):
        shape = transit_light_curve(t, tmid + q[0], period, p, a, inc, u1, u2, exptime=e)
        return (f - shape * q[1] * (1.0 + q[2] * x)) / s

    start = [0.0, params[4 + k], params[4 + n_runs + k] if n_slopes else 0.0]
    window = 0.05
    fit = least_squares(residuals, start, x_scale="jac",
                        bounds=([-window, 0.0, -np.inf], [window, np.inf, np.inf]))
    dof = max(1, len(f) - 3)
    errors = _parameter_errors(fit.jac, float(np.sum(fit.fun ** 2) / dof),
                               at_bound=fit.active_mask != 0)
    in_transit = np.any(transit_light_curve(t, tmid, period, p, a, inc, u1, u2) < 1.0)
    total = math.hypot(float(errors[0]), timing_err_s / 86400.0)
    return {"tmid": float(tmid + fit.x[0]), "tmid_err": total, "tmid_err_fit": float(errors[0]),
            "timing_err_s": timing_err_s,
            "timing_residual_s": float(fit.x[0] * 86400.0),
            "timing_residual_err_s": total * 86400.0,
            "covers_transit": bool(in_transit)}

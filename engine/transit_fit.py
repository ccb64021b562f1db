"""Joint transit fits over runs from several telescopes, with per-run baselines.

Partial transits from several sites fit together: one planet (mid-time, Rp/Rs, a/Rs,
inclination; the period fixed) and, per run, a baseline `offset * (1 + slope * regressor)` with
the regressor the airmass (default) or time, so that each site's own zero point and trend are
fitted beside the transit. The model is `engine.kernels.transit.transit_light_curve`, integrated
over each exposure.

Limb darkening is quadratic and fixed per filter: the caller's coefficients, else the grey-atmosphere
model of `engine.limb_darkening` at the star's Teff when it is given, else generic coefficients for
a Sun-like dwarf; FIT.json says which, per filter.

Uncertainties come from the covariance of the weighted least-squares solution (Gauss-Newton:
(J^T W J)^-1), then widened, never shrunk: by sqrt(reduced chi-square) when it exceeds one
(under-estimated error bars) and by beta, the red-noise factor of the time-averaging method
(Pont, Zucker & Queloz 2006; Winn et al. 2008): the residuals of each run are binned over 10-30
minutes, and beta is the median ratio of the binned scatter to what white noise would give
(beta >= 1). A parameter that ends on a bound of the fit (an inclination of 90 degrees) has no
symmetric error: it is reported as a limit, its error null with the reason. Coverage is checked in
the tests on simulated injections. Per-run timing residuals refit the mid-time on each run alone
with the shape held at the joint solution: a site's clock error shows there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.optimize import least_squares

from engine.errors import EngineValueError
from engine.kernels.transit import projected_separation, transit_light_curve
from engine.limb_darkening import band_wavelength_nm, grey_atmosphere_coefficients

__all__ = ["DEFAULT_LIMB_DARKENING", "FIT_UNITS", "TransitFit", "fit_transit", "red_noise_beta",
           "red_noise_beta_of_runs", "weak_shape_reason"]

#: The time scale of every time in a fit (inputs and FIT.json).
TIME_SCALE = "BJD_TDB"

#: Units of FIT.json's quantities (the `units` map it carries).
FIT_UNITS = {
    "tmid": "d (BJD_TDB)", "tmid_err": "d", "tmid_err_fit": "d", "tmid_err_timing": "d",
    "rp_rs": "stellar radii", "rp_rs_err": "stellar radii", "a_rs": "stellar radii",
    "a_rs_err": "stellar radii", "inc": "deg", "inc_err": "deg",
    "depth": "fraction of the out-of-transit flux ((Rp/Rs)^2)", "period": "d",
    "o_minus_c_days": "d", "o_minus_c_err_days": "d", "chi2_reduced": "dimensionless",
    "beta": "dimensionless", "error_scale": "dimensionless",
    "residual_rms": "relative flux", "timing_err_s": "s", "timing_residual_s": "s",
    "timing_residual_err_s": "s", "teff": "K", "logg": "log10(cm s^-2)", "feh": "dex",
    "beta_bin_minutes": "min",
}

#: Widths (minutes) over which residuals are binned for the red-noise factor beta.
BETA_BIN_MINUTES = (10.0, 15.0, 20.0, 25.0, 30.0)

#: The shape parameters of the fit, in the order of its parameter vector after the mid-time.
FIT_PARAMETERS = ("tmid", "rp_rs", "a_rs", "inc")

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
    """The result of `fit_transit`; `to_dict()` is what FIT.json holds. Errors are NaN for a
    parameter at a bound (see `at_bound`), and include the chi-square and red-noise widening."""

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
    #: Red-noise factor (>= 1) and the total factor the covariance errors were multiplied by.
    beta: float = 1.0
    error_scale: float = 1.0
    #: FIT_PARAMETERS name -> (lower, upper) bound of the fit, and "lower"/"upper"/None.
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    at_bound: dict[str, str | None] = field(default_factory=dict)
    #: Correlation coefficients of the shape parameters, e.g. {"rp_rs~a_rs": 0.93}.
    correlations: dict[str, float] = field(default_factory=dict)
    #: filter -> {"law", "u1", "u2", "source"}: the coefficients the fit used.
    limb_darkening: dict[str, dict] = field(default_factory=dict)
    star: dict | None = None
    priors: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: The per-run baseline's regressor ('airmass': airmass - 1; 'time': time - time_origin).
    baseline: str = "airmass"
    time_origin: float = 0.0

    def parameter_report(self, name: str) -> dict:
        """One parameter as FIT.json's `parameters` entry: value, error, unit, and either the
        error's widening or, at a bound, the limit and why there is no error."""
        value, error = getattr(self, name), getattr(self, f"{name}_err")
        prior = self.priors.get(name)
        entry = {"value": value, "error": error, "unit": FIT_UNITS[name],
                 "at_bound": self.at_bound.get(name),
                 "prior": None if prior is None else {"mean": prior[0], "sigma": prior[1]}}
        side = self.at_bound.get(name)
        if side:
            limit = self.bounds[name][0 if side == "lower" else 1]
            entry["error"] = None
            entry["error_note"] = (
                f"at the fit's {side} bound ({limit:g}): the data only give a limit "
                f"({name} {'>=' if side == 'lower' else '<='} ~{value:g}), no symmetric error")
        return entry

    def to_dict(self) -> dict:
        """JSON-ready: NaN (an error undefined at a bound) becomes null."""
        from engine import __version__

        return _json_ready({
            "tmid": self.tmid, "tmid_err": self.tmid_err, "rp_rs": self.rp_rs,
            "rp_rs_err": self.rp_rs_err, "a_rs": self.a_rs, "a_rs_err": self.a_rs_err,
            "inc": self.inc, "inc_err": self.inc_err, "depth": self.depth, "period": self.period,
            "residual_rms": {run: info["residual_rms"] for run, info in self.runs.items()},
            "time_scale": TIME_SCALE, "units": FIT_UNITS, "software_version": __version__,
            "chi2_reduced": self.chi2_reduced, "beta": self.beta, "error_scale": self.error_scale,
            "error_note": ("errors are the covariance errors times error_scale = "
                           "sqrt(max(1, chi2_reduced)) * beta (beta: red noise from residuals "
                           f"binned over {BETA_BIN_MINUTES[0]:g}-{BETA_BIN_MINUTES[-1]:g} min)"),
            "parameters": {name: self.parameter_report(name) for name in FIT_PARAMETERS},
            "correlations": self.correlations, "limb_darkening": self.limb_darkening,
            "star": self.star, "n_points": self.n_points,
            "o_minus_c_days": self.o_minus_c, "o_minus_c_err_days": self.o_minus_c_err,
            "tmid_err_fit": self.tmid_err_fit, "tmid_err_timing": self.tmid_err_timing,
            "tmid_err_note": ("tmid_err is the fit's error and the runs' timing errors "
                              "(time_err_s: stamp resolution, clock uncertainty) in quadrature"),
            "baseline": self.baseline, "runs": self.runs,
        })


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def limb_darkening_for(filter_name: str, given: dict | None = None,
                       star: dict | None = None) -> tuple[float, float]:
    """(u1, u2) for a filter; see `limb_darkening_choice` for the order of the sources."""
    choice = limb_darkening_choice(filter_name, given, star)
    return choice["u1"], choice["u2"]


def limb_darkening_choice(filter_name: str, given: dict | None = None,
                          star: dict | None = None) -> dict:
    """The quadratic coefficients for a filter and where they come from: the caller's `given`
    {filter: (u1, u2)}, else the grey-atmosphere model at star['teff'] (K) for a known band, else
    DEFAULT_LIMB_DARKENING (a Sun-like dwarf), else a generic fallback."""
    if given and filter_name in given:
        u1, u2 = (float(u) for u in given[filter_name])
        return {"law": "quadratic", "u1": u1, "u2": u2, "source": "given by the caller"}
    wavelength = band_wavelength_nm(filter_name)
    teff = (star or {}).get("teff")
    if teff is not None and wavelength is not None:
        u1, u2 = grey_atmosphere_coefficients(float(teff), wavelength)
        return {"law": "quadratic", "u1": u1, "u2": u2,
                "source": f"grey Eddington atmosphere at Teff {float(teff):.0f} K, "
                          f"{wavelength:g} nm (engine.limb_darkening; log g and [Fe/H] do "
                          "not enter it)"}
    key = (filter_name or "").strip()
    for candidate in (key, key.upper(), key[:1].upper()):
        if candidate in DEFAULT_LIMB_DARKENING:
            u1, u2 = DEFAULT_LIMB_DARKENING[candidate]
            why = "no Teff given" if teff is None else "no wavelength known for this filter"
            return {"law": "quadratic", "u1": u1, "u2": u2,
                    "source": f"default for a Sun-like dwarf ({why}; engine.transit_fit."
                              "DEFAULT_LIMB_DARKENING)"}
    u1, u2 = _FALLBACK_LIMB_DARKENING
    return {"law": "quadratic", "u1": u1, "u2": u2,
            "source": "generic fallback (filter unknown to the engine)"}


def _star(teff, logg, feh) -> dict | None:
    """The star's parameters as FIT.json records them; None when none is given."""
    star = {name: float(value) for name, value in (("teff", teff), ("logg", logg), ("feh", feh))
            if value is not None}
    for name, value in star.items():
        if not math.isfinite(value):
            raise EngineValueError(f"the star's {name} must be finite, got {value}")
    return star or None


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
                priors: dict[str, tuple[float, float]] | None = None,
                teff: float | None = None, logg: float | None = None,
                feh: float | None = None) -> TransitFit:
    """Fit one transit jointly over every run in `lightcurves`.

    Parameters
    ----------
    lightcurves : pyarrow.Table in the lightcurves.parquet schema (target rows are used: `role`
        = 'target' when present; rows with flags != 0 are left out). Optional `exptime` (s) or
        `exptime_days` columns integrate the model over each exposure.
    period : orbital period, days (fixed).
    t0 : the predicted mid-transit BJD_TDB (the starting point of the fit).
    rp_rs, a_rs, inc : starting values (inclination in degrees).
    limb_darkening : {filter: (u1, u2)}; other filters take the grey-atmosphere model's at
        `teff`, or without it DEFAULT_LIMB_DARKENING (see `limb_darkening_choice`).
    baseline : 'airmass' (offset and slope in airmass), 'time' (offset and slope in time) or
        'offset' per run.
    t0_window : the mid-time is bounded to t0 +- this (days; default a quarter of the duration
        implied by the starting values, at least 0.05 d).
    ephemeris : (T0, P) of a published ephemeris for the O-C of the fitted mid-time.
    priors : {name: (mean, sigma)} Gaussian priors on 'rp_rs', 'a_rs' or 'inc' (degrees), e.g.
        a published a/Rs and inclination, which partial transits alone constrain poorly. They
        enter the fit as extra residuals, so the quoted errors include them.
    teff, logg, feh : the star's effective temperature (K), surface gravity (log10 cgs) and
        metallicity (dex): with teff, filters without given coefficients take the
        grey-atmosphere model's (engine.limb_darkening); all three are recorded in FIT.json.
    """
    _check_arguments(period, t0, baseline)
    prior_terms = _prior_terms(priors)
    data = _as_arrays(lightcurves)
    runs = sorted(set(data["run_id"].tolist()))
    if not runs or len(data["time_bjd_tdb"]) < 5:
        raise EngineValueError("too few good target measurements to fit a transit")
    star = _star(teff, logg, feh)
    ld_used = {str(f): limb_darkening_choice(str(f), limb_darkening, star)
               for f in sorted(set(data["filter"].tolist()))}
    joint = _JointModel.build(data, runs, ld_used, baseline, t0, period, prior_terms)
    if t0_window is None:
        duration = period / math.pi * math.asin(min(1.0, (1.0 + rp_rs) / a_rs))
        t0_window = max(0.05, 0.5 * duration)
    start, lower, upper = joint.starting_point(rp_rs, a_rs, inc, t0_window)
    solution = least_squares(joint.residuals, start, bounds=(lower, upper), x_scale="jac",
                             method="trf", max_nfev=2000)
    params = solution.x
    flux = joint.flux
    dof = max(1, len(flux) - len(params))
    chi2_reduced = float(np.sum(solution.fun[:len(flux)] ** 2) / dof)
    residual = flux - joint.model(params)
    beta = red_noise_beta_of_runs([(joint.time[joint.run_index == k],
                                    residual[joint.run_index == k]) for k in range(len(runs))])
    error_scale = math.sqrt(max(1.0, chi2_reduced)) * beta
    errors, covariance = _parameter_errors(solution.jac, at_bound=solution.active_mask != 0)
    errors = errors * error_scale

    run_report = _run_report(joint, runs, params, residual, data)
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
    bounds, at_bound = _shape_bounds(lower, upper, t0, solution.active_mask)
    return TransitFit(tmid=tmid, tmid_err=tmid_err, rp_rs=p, rp_rs_err=float(errors[1]),
                      a_rs=a, a_rs_err=float(errors[2]), inc=inc_fit, inc_err=float(errors[3]),
                      depth=depth, period=float(period), chi2_reduced=chi2_reduced,
                      n_points=int(len(flux)), runs=run_report, o_minus_c=o_minus_c,
                      o_minus_c_err=o_minus_c_err, tmid_err_fit=float(errors[0]),
                      tmid_err_timing=timing_err, beta=beta, error_scale=error_scale,
                      bounds=bounds, at_bound=at_bound,
                      correlations=_shape_correlations(covariance), limb_darkening=ld_used,
                      star=star, priors={FIT_PARAMETERS[i]: (m, w) for i, m, w in prior_terms},
                      baseline=baseline, time_origin=float(t0))


def _shape_bounds(lower, upper, t0: float, active_mask) -> tuple[dict, dict]:
    """The shape parameters' bounds (the mid-time's in BJD_TDB) and which bound each ended on."""
    bounds = {name: (lower[i] + (t0 if i == 0 else 0.0), upper[i] + (t0 if i == 0 else 0.0))
              for i, name in enumerate(FIT_PARAMETERS)}
    at_bound = {name: {-1: "lower", 1: "upper"}.get(int(active_mask[i]))
                for i, name in enumerate(FIT_PARAMETERS)}
    return bounds, at_bound


def _check_arguments(period: float, t0: float, baseline: str) -> None:
    if not (period > 0 and math.isfinite(period) and math.isfinite(t0)):
        raise EngineValueError("period must be > 0 and t0 finite")
    if baseline not in ("airmass", "time", "offset"):
        raise EngineValueError(f"baseline must be 'airmass', 'time' or 'offset', got {baseline!r}")


@dataclass
class _JointModel:
    """The joint model's data and parameter layout: [tmid - t0, rp_rs, a_rs, inc], then one
    offset per run, then one slope per run (none with the 'offset' baseline).

    The mid-time is fitted as an offset from t0 (days): finite-difference steps are relative to
    a parameter's size, and a BJD of 2.46e6 would make them tens of minutes long."""

    time: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    exptime: np.ndarray
    regressor: np.ndarray
    run_index: np.ndarray
    ld: np.ndarray               # (n, 2) quadratic limb darkening of each point
    groups: dict                 # (u1, u2) -> the points with those coefficients
    n_runs: int
    n_slopes: int
    t0: float
    period: float
    prior_terms: list

    @classmethod
    def build(cls, data, runs, ld_used, baseline, t0, period, prior_terms) -> _JointModel:
        time = data["time_bjd_tdb"]
        if baseline == "airmass":
            regressor = data["airmass"] - 1.0
        elif baseline == "time":
            regressor = time - t0
        else:
            regressor = np.zeros_like(time)
        ld = np.array([(ld_used[str(f)]["u1"], ld_used[str(f)]["u2"]) for f in data["filter"]])
        # Limb darkening differs by filter: evaluate the model once per distinct (u1, u2).
        groups = {key: np.all(ld == np.array(key), axis=1) for key in {tuple(row) for row in ld}}
        return cls(time=time, flux=data["rel_flux"], sigma=data["rel_flux_err"],
                   exptime=data["exptime_days"], regressor=regressor,
                   run_index=np.array([runs.index(r) for r in data["run_id"]]), ld=ld,
                   groups=groups, n_runs=len(runs),
                   n_slopes=len(runs) if baseline != "offset" else 0, t0=t0, period=period,
                   prior_terms=prior_terms)

    def transit(self, params) -> np.ndarray:
        shift, p, a, i = params[:4]
        tmid = self.t0 + shift
        model = np.empty_like(self.time)
        for (u1, u2), mask in self.groups.items():
            model[mask] = transit_light_curve(self.time[mask], tmid, self.period, p, a, i, u1, u2,
                                              exptime=self.exptime[mask])
        return model

    def model(self, params) -> np.ndarray:
        offsets = params[4:4 + self.n_runs][self.run_index]
        slopes = params[4 + self.n_runs:][self.run_index] if self.n_slopes else 0.0
        return self.transit(params) * offsets * (1.0 + slopes * self.regressor)

    def residuals(self, params) -> np.ndarray:
        data_terms = (self.flux - self.model(params)) / self.sigma
        if not self.prior_terms:
            return data_terms
        return np.concatenate([data_terms, [(params[index] - mean) / width
                                            for index, mean, width in self.prior_terms]])

    def starting_point(self, rp_rs, a_rs, inc, t0_window):
        """(start, lower, upper) of the parameter vector; a prior's mean is a better start
        than a default guess, and each run's offset starts at its median flux."""
        n_runs, n_slopes = self.n_runs, self.n_slopes
        start = [0.0, rp_rs, a_rs, inc]
        for index, mean, _ in self.prior_terms:
            start[index] = mean
        start += [float(np.median(self.flux[self.run_index == k])) for k in range(n_runs)]
        start += [0.0] * n_slopes
        lower = [-t0_window, 1e-3, 1.5, 60.0] + [0.0] * n_runs + [-np.inf] * n_slopes
        upper = [t0_window, 0.5, 200.0, 90.0] + [np.inf] * n_runs + [np.inf] * n_slopes
        start = np.clip(start, np.nextafter(lower, np.inf), np.nextafter(upper, -np.inf))
        return start, lower, upper


def _run_report(joint: _JointModel, runs, params, residual, data) -> dict:
    """Per run: points, residual rms and beta, filter, baseline and its own timing residual."""
    report = {}
    for k, run in enumerate(runs):
        mine = joint.run_index == k
        report[run] = {
            "n_points": int(np.count_nonzero(mine)),
            "residual_rms": float(np.std(residual[mine])),
            "beta": red_noise_beta(joint.time[mine], residual[mine]),
            "filter": str(data["filter"][mine][0]),
            "offset": float(params[4 + k]),
            "slope": float(params[4 + joint.n_runs + k]) if joint.n_slopes else 0.0,
            **_run_timing(joint.t0, params, k, mine, joint.time, joint.flux, joint.sigma,
                          joint.exptime, joint.ld, joint.regressor, joint.period, joint.n_runs,
                          joint.n_slopes, float(np.median(data["time_err_s"][mine]))),
        }
    return report


def red_noise_beta(time: np.ndarray, residuals: np.ndarray,
                   bin_minutes=BETA_BIN_MINUTES) -> float:
    """The red-noise factor beta of one series of fit residuals (time in days): >= 1, 1 for
    white noise. See `red_noise_beta_of_runs`."""
    return red_noise_beta_of_runs([(time, residuals)], bin_minutes)


def red_noise_beta_of_runs(series, bin_minutes=BETA_BIN_MINUTES) -> float:
    """Beta by time averaging (Pont et al. 2006; Winn et al. 2008) over (time, residuals) pairs:
    each series is cut into bins of each width in `bin_minutes`; the scatter of the bin means is
    compared with white noise's expectation, sigma_1^2 <1 / n_bin> (sigma_1 the unbinned scatter;
    unbiased estimators, so uneven bins need no M/(M-1) factor); beta is the median of the ratios
    over widths and series, at least 1. Widths that leave fewer than 3 bins of 2+ points are
    skipped; with none left beta is 1 (too short a series to tell)."""
    ratios = []
    for time, residuals in series:
        order = np.argsort(time)
        t, r = np.asarray(time, float)[order], np.asarray(residuals, float)[order]
        if r.size < 6:
            continue
        sigma1 = np.std(r, ddof=1)
        if not sigma1 > 0:
            continue
        for minutes in bin_minutes:
            index = np.floor((t - t[0]) / (minutes / 1440.0)).astype(np.int64)
            counts = np.bincount(index)
            means = np.bincount(index, r)[counts >= 2] / counts[counts >= 2]
            if means.size < 3:
                continue
            expected = sigma1 * math.sqrt(float(np.mean(1.0 / counts[counts >= 2])))
            ratios.append(float(np.std(means, ddof=1)) / expected)
    return max(1.0, float(np.median(ratios))) if ratios else 1.0


def _shape_correlations(covariance: np.ndarray) -> dict[str, float]:
    """Correlation coefficients between the transit parameters (NaN where one is at a bound)."""
    result = {}
    for i in range(4):
        for j in range(i + 1, 4):
            with np.errstate(invalid="ignore", divide="ignore"):
                value = covariance[i, j] / math.sqrt(covariance[i, i] * covariance[j, j])
            result[f"{FIT_PARAMETERS[i]}~{FIT_PARAMETERS[j]}"] = float(value)
    return result


def weak_shape_reason(fit: TransitFit, relative_limit: float = 0.1,
                      correlation_limit: float = 0.9) -> str | None:
    """Why the night leaves the transit's shape (a/Rs, inclination) weakly constrained, or None:
    a parameter at a bound, an a/Rs error above `relative_limit` of its value, a correlation
    above `correlation_limit` between a/Rs and the inclination (only their combination, the
    impact parameter and duration, is measured: the curvature errors then understate how far
    each can go) or of either with Rp/Rs, or no run covering ingress or egress."""
    reasons = [f"{name} at its {fit.at_bound[name]} bound" for name in ("a_rs", "inc")
               if fit.at_bound.get(name)]
    if math.isfinite(fit.a_rs_err) and fit.a_rs_err > relative_limit * fit.a_rs:
        reasons.append(f"a/Rs error {100 * fit.a_rs_err / fit.a_rs:.0f}% of its value")
    for pair in ("a_rs~inc", "rp_rs~a_rs", "rp_rs~inc"):
        value = fit.correlations.get(pair, float("nan"))
        if math.isfinite(value) and abs(value) > correlation_limit:
            reasons.append(f"correlation {pair} {value:+.2f}")
    if not any(run.get("covers_contact") for run in fit.runs.values()):
        reasons.append("no run covers ingress or egress")
    return "; ".join(reasons) or None


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


def _parameter_errors(jacobian: np.ndarray, at_bound=None) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors and covariance from (J^T J)^-1 (J of the normalised residuals), before
    any widening.

    A parameter that ended on a bound (e.g. an inclination of exactly 90 degrees) has no
    symmetric error: it gets NaN (row and column of the covariance too) and the others are
    computed with it held fixed."""
    free = np.ones(jacobian.shape[1], dtype=bool) if at_bound is None else ~np.asarray(at_bound)
    jtj = jacobian[:, free].T @ jacobian[:, free]
    try:
        inverse = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        inverse = np.linalg.pinv(jtj)
    covariance = np.full((jacobian.shape[1],) * 2, np.nan)
    covariance[np.ix_(free, free)] = inverse
    errors = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return np.where(free, errors, np.nan), covariance


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
    errors, _ = _parameter_errors(fit.jac, at_bound=fit.active_mask != 0)
    errors *= math.sqrt(max(1.0, float(np.sum(fit.fun ** 2) / dof)))
    in_transit = np.any(transit_light_curve(t, tmid, period, p, a, inc, u1, u2) < 1.0)
    # Ingress or egress: the planet's disk crosses the star's limb, 1 - p < z < 1 + p.
    separation = projected_separation(t, tmid, period, a, inc)
    contact = np.any((separation > 1.0 - p) & (separation < 1.0 + p))
    total = math.hypot(float(errors[0]), timing_err_s / 86400.0)
    return {"tmid": float(tmid + fit.x[0]), "tmid_err": total, "tmid_err_fit": float(errors[0]),
            "timing_err_s": timing_err_s,
            "timing_residual_s": float(fit.x[0] * 86400.0),
            "timing_residual_err_s": total * 86400.0,
            "covers_transit": bool(in_transit), "covers_contact": bool(contact)}

"""Detrending of one run's differential light curves, without ever fitting away the event.

Two kinds of correction, kept apart on purpose:

- Learnt from the *other* stars, applied to every star of known colour, the target included:
  the differential extinction's colour term. A star of colour c against an ensemble of mean
  colour c_e dims by k'' (c - c_e) X relative to it, so every field star's airmass slope b_j
  (its differential magnitude against airmass) lies on b = b0 + k'' c. `colour_extinction`
  fits that line over the field stars (weighted, with their intrinsic scatter estimated and 4
  sigma outliers clipped); the correction k'' c (X - mean X) never looks at the target's curve,
  so it cannot touch an event. (The b0 part is grey and already in the zero points.) The
  slopes' intrinsic scatter is estimated robustly (median-based) and 3.5-sigma outliers (a
  variable star's trend) leave the fit; a term below 3 sigma is reported but not applied.

- Fitted to the target's own curve: its airmass slope, the SysRem vectors of the field, and
  optional regressors (centroid x, y, FWHM, sky). `fit_target` fits them by weighted least
  squares with 4-sigma clipping *only on the frames the caller allows* (outside the event
  windows, or inside the baseline windows) and evaluates the model on every frame. Without such
  frames the target is not fitted at all: that is the safe default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.settings.ensemble import EnsembleConfig

__all__ = ["ColourExtinction", "TargetFit", "baseline_mask", "colour_extinction", "fit_target"]


def baseline_mask(time: np.ndarray, config: EnsembleConfig) -> np.ndarray | None:
    """Frames free of the event by the user's windows; None when no window was given."""
    if not config.has_windows:
        return None
    time = np.asarray(time, dtype=np.float64)
    if config.baseline_windows:
        inside = np.zeros(time.shape, dtype=bool)
        for lo, hi in config.baseline_windows:
            inside |= (time >= lo) & (time <= hi)
    else:
        inside = np.ones(time.shape, dtype=bool)
    for lo, hi in config.event_windows:
        inside &= ~((time >= lo) & (time <= hi))
    return inside


@dataclass
class ColourExtinction:
    """The differential extinction's colour term, learnt from the field stars."""

    coefficient: float = float("nan")      # k'' (mag / airmass / mag of colour)
    error: float = float("nan")
    intercept: float = float("nan")        # b0 (mag / airmass), grey: in the zero points
    stars: int = 0
    scatter: float = float("nan")          # intrinsic scatter of the slopes (mag / airmass)
    reason: str | None = None              # why it was not determined

    @property
    def ok(self) -> bool:
        return self.reason is None and np.isfinite(self.coefficient)

    def correction(self, colour, airmass) -> np.ndarray:
        """(frames, stars) magnitudes to subtract: k'' c (X - mean X); 0 for unknown colour."""
        colour = np.atleast_1d(np.asarray(colour, dtype=np.float64))
        airmass = np.asarray(airmass, dtype=np.float64)
        if not self.ok:
            return np.zeros((airmass.shape[0], colour.shape[0]))
        dx = airmass - np.nanmean(airmass)
        out = self.coefficient * np.outer(np.where(np.isfinite(dx), dx, 0.0), colour)
        return np.where(np.isfinite(out), out, 0.0)

    def as_dict(self) -> dict:
        return {"coefficient": self.coefficient, "error": self.error,
                "intercept": self.intercept, "stars": self.stars, "slope_scatter": self.scatter,
                "reason": self.reason}


def colour_extinction(diff_mag, var, colour, airmass, frames_ok) -> ColourExtinction:
    """Fit b_j = b0 + k'' c_j to the field stars' airmass slopes (see the module docstring).

    diff_mag, var: (frames, stars) differential magnitudes of field stars (not the target)
    and their variances; colour: (stars,), NaN unknown; airmass: (frames,); frames_ok: frames to
    use (e.g. not cloudy).
    """
    airmass = np.asarray(airmass, dtype=np.float64)
    colour = np.asarray(colour, dtype=np.float64)
    ok = (np.isfinite(diff_mag) & np.isfinite(var) & (var > 0) & frames_ok[:, None]
          & np.isfinite(airmass)[:, None])
    if not np.isfinite(airmass).any() or np.ptp(airmass[np.isfinite(airmass)]) < 0.02:
        return ColourExtinction(reason="airmass range below 0.02")
    x = np.where(np.isfinite(airmass), airmass - np.nanmean(airmass), 0.0)[:, None]
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    y = np.where(ok, diff_mag, 0.0)
    s, sx, sxx = w.sum(0), (w * x).sum(0), (w * x * x).sum(0)
    sy, sxy, syy = (w * y).sum(0), (w * x * y).sum(0), (w * y * y).sum(0)
    count = ok.sum(0)
    with np.errstate(all="ignore"):
        det = s * sxx - sx * sx
        slope = (s * sxy - sx * sy) / det
        intercept = (sy - slope * sx) / s
        chi2 = syy - 2 * intercept * sy - 2 * slope * sxy + intercept ** 2 * s \
            + 2 * intercept * slope * sx + slope ** 2 * sxx
        reduced = chi2 / np.maximum(count - 2, 1)
        slope_var = s / det * np.maximum(reduced, 1.0)
    good = (count >= 5) & np.isfinite(slope) & np.isfinite(slope_var) & (slope_var > 0) \
        & np.isfinite(colour)
    if good.sum() < 8:
        return ColourExtinction(reason=f"{int(good.sum())} field stars with colour and enough "
                                       "frames (8 needed)")
    b, vb, c = slope[good], slope_var[good], colour[good]
    if np.std(c) < 0.1:
        return ColourExtinction(reason="field stars' colours span less than 0.1 mag")
    keep = np.ones(b.shape, dtype=bool)
    tau2 = 0.0
    coef = np.zeros(2)
    cov = np.full((2, 2), np.nan)
    for _ in range(20):
        wt = 1.0 / (vb + tau2)
        a = np.column_stack([np.ones(keep.sum()), c[keep]])
        cov = np.linalg.inv(a.T @ (a * wt[keep, None]))
        coef = cov @ (a.T @ (wt[keep] * b[keep]))
        residual = b - (coef[0] + coef[1] * c)
        tau2 = _robust_extra_variance(residual[keep], vb[keep])
        new_keep = residual ** 2 <= 12.25 * (vb + tau2)          # 3.5 sigma
        if np.array_equal(new_keep, keep) or new_keep.sum() < 8:
            break
        keep = new_keep
    error = float(np.sqrt(cov[1, 1]))
    result = ColourExtinction(coefficient=float(coef[1]), error=error, intercept=float(coef[0]),
                              stars=int(keep.sum()), scatter=float(np.sqrt(tau2)))
    if not abs(coef[1]) >= 3.0 * error:
        result.reason = (f"not significant: {coef[1]:.4f} +- {error:.4f} mag / airmass / mag "
                         "(3 sigma needed); not applied")
    return result


def _robust_extra_variance(residual, variance):
    """Extra variance t of residuals with variances `variance`: the t >= 0 for which the median
    of residual^2 / (variance + t) is the median of chi-square with one degree of freedom (a
    robust version of the moment estimate; outliers and a few variables do not inflate it)."""
    target = 0.45493642311957283
    q = residual ** 2
    if q.size == 0 or np.median(q / variance) <= target:
        return 0.0
    lo, hi = 0.0, float(np.max(q)) + float(np.max(variance))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.median(q / (variance + mid)) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class TargetFit:
    """The target's own detrending model (magnitudes) and how it was fitted."""

    model: np.ndarray                        # (frames,) mag to subtract; 0 when not fitted
    model_var: np.ndarray                    # (frames,) its variance (mag^2)
    applied: bool
    reason: str | None                       # why it was not fitted
    coefficients: dict = field(default_factory=dict)
    frames_fitted: int = 0
    rms: float = float("nan")                # weighted rms of the fitted frames' residuals
    parameters: int = 0                      # fitted parameters, the constant included

    def as_dict(self) -> dict:
        return {"applied": self.applied, "reason": self.reason,
                "coefficients": self.coefficients, "frames_fitted": self.frames_fitted,
                "parameters": self.parameters, "residual_rms_mag": self.rms}


def _weighted_fit(design, y, w, keep):
    """Weighted least squares on rows `keep`: (coefficients, covariance scaled by max(1,
    reduced chi^2), rows kept after 4-sigma clipping)."""
    n_par = design.shape[1]
    coef = np.zeros(n_par)
    cov = np.full((n_par, n_par), np.nan)
    for _ in range(10):
        sw = np.sqrt(w[keep])
        a = design[keep] * sw[:, None]
        coef = np.linalg.lstsq(a, y[keep] * sw, rcond=None)[0]
        chi = (y - design @ coef) * np.sqrt(w)
        reduced = float(np.sum(chi[keep] ** 2)) / max(int(keep.sum()) - n_par, 1)
        cov = np.linalg.pinv(a.T @ a) * max(reduced, 1.0)
        new_keep = keep & (np.abs(chi) <= 4.0 * np.sqrt(max(reduced, 1.0)))
        if np.array_equal(new_keep, keep) or new_keep.sum() < max(n_par + 2, 3):
            break
        keep = new_keep
    return coef, cov, keep


def fit_target(diff_mag, var, regressors: dict, fit_frames, config: EnsembleConfig) -> TargetFit:
    """Fit constant + regressors to the target's differential magnitudes on `fit_frames` only.

    diff_mag, var: (frames,) the target's differential magnitudes and variances; regressors:
    name -> (frames,) values; fit_frames: (frames,) bool, the frames allowed (None: none).
    Each regressor is centred on its weighted mean over the fitted frames (non-finite values
    count as that mean). Weighted least squares with 4-sigma clipping; then regressors whose
    coefficient is below 3 sigma are dropped one by one (the least significant first), since
    an insignificant term only adds its noise to the frames it is extrapolated to. Returns the
    model without its constant, and the model's variance per frame (added to the errors).
    """
    n = diff_mag.shape[0]
    zero = np.zeros(n)
    if fit_frames is None:
        return TargetFit(model=zero, model_var=zero.copy(), applied=False,
                         reason="no event or baseline window given: the target's own curve is "
                                "not fitted (safe default)")
    ok = fit_frames & np.isfinite(diff_mag) & np.isfinite(var) & (var > 0)
    names, columns, notes = [], [], []
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    for name, values in regressors.items():
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite[ok].any() or np.ptp(values[ok & finite]) <= 0:
            notes.append(f"{name}: no variation on the fitted frames")
            continue
        mean = float(np.sum((w * values)[ok & finite]) / np.sum(w[ok & finite]))
        names.append(name)
        columns.append(np.where(finite, values - mean, 0.0))
    needed = max(config.min_baseline_frames, 3 * (1 + len(names)))
    if ok.sum() < needed:
        return TargetFit(model=zero, model_var=zero.copy(), applied=False,
                         reason=f"{int(ok.sum())} usable out-of-event frames, {needed} needed")
    y = np.where(ok, diff_mag, 0.0)
    while True:
        design = np.column_stack([np.ones(n)] + columns)
        coef, cov, keep = _weighted_fit(design, y, w, ok.copy())
        if not names:
            break
        significance = np.abs(coef[1:]) / np.sqrt(np.maximum(np.diag(cov)[1:], 1e-300))
        weakest = int(np.argmin(significance))
        if significance[weakest] >= 3.0:
            break
        notes.append(f"{names[weakest]}: dropped ({significance[weakest]:.1f} sigma)")
        del names[weakest]
        del columns[weakest]
    residual = diff_mag - design @ coef
    rms = float(np.sqrt(np.sum(w[keep] * residual[keep] ** 2) / np.sum(w[keep])))
    if not names:
        return TargetFit(model=zero, model_var=zero.copy(), applied=False,
                         reason="no regressor is significant (3 sigma) on the fitted frames",
                         coefficients={"constant": float(coef[0]),
                                       **({"notes": notes} if notes else {})},
                         frames_fitted=int(keep.sum()), rms=rms, parameters=1)
    g = design[:, 1:]
    sub = cov[1:, 1:]
    model_var = np.einsum("ij,jk,ik->i", g, sub, g)
    return TargetFit(model=g @ coef[1:], model_var=model_var, applied=True, reason=None,
                     coefficients={"constant": float(coef[0]),
                                   **{nm: float(c) for nm, c in zip(names, coef[1:])},
                                   **{f"{nm}_err": float(np.sqrt(e))
                                      for nm, e in zip(names, np.diag(cov)[1:])},
                                   **({"notes": notes} if notes else {})},
                     frames_fitted=int(keep.sum()), rms=rms, parameters=1 + len(names))

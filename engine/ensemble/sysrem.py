"""SysRem over a run's field stars: the systematics many stars share, found without the target.

The field stars' differential light curves (after the ensemble's zero points and the colour
extinction) still share effects a grey zero point cannot remove: a seeing-dependent aperture
loss that depends on brightness, a colour-dependent cloud, a flat-field error that moves with
the stars. SysRem (Tamuz, Mazeh & Zucker 2005; engine.kernels.ensemble.sysrem) finds them as
rank-one terms c_k a_j. Each star's own extra scatter (a variable, a blend) is added to its
variance first, so a variable star cannot become a "systematic". The target is never part of
the fit: its coefficients are fitted later, out of event only (engine.ensemble.detrend).
Only components that lower the field's chi^2 by more than noise could (1.5 times the
(sqrt(frames) + sqrt(stars))^2 a rank-one fit takes out of pure noise) are kept: an
insignificant vector would only add its noise to every star it is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.ensemble.weights import row_nanmedian
from engine.kernels.ensemble import sysrem

__all__ = ["FieldSystematics", "field_systematics"]


@dataclass
class FieldSystematics:
    """The SysRem components of one run's field stars."""

    vectors: np.ndarray        # (components, frames), unit rms
    coefficients: np.ndarray   # (components, field stars)
    model: np.ndarray          # (frames, field stars) magnitudes removed from each star
    reason: str | None = None  # why no component was fitted
    chi2_gain: list = None     # chi^2 each component found removes (kept or not)
    chi2_threshold: float = float("nan")  # what noise alone would remove, times 1.5

    @property
    def components(self) -> int:
        return self.vectors.shape[0]

    def as_dict(self) -> dict:
        return {"components": int(self.components), "reason": self.reason,
                "coefficient_rms_mag": [float(np.sqrt(np.mean(c ** 2))) if c.size else 0.0
                                        for c in self.coefficients],
                "chi2_gain": list(self.chi2_gain or []), "chi2_threshold": self.chi2_threshold}


def field_systematics(diff_mag: np.ndarray, var: np.ndarray, airmass: np.ndarray,
                      components: int, threads: int | None = None,
                      fit_frames: np.ndarray | None = None) -> FieldSystematics:
    """SysRem components of (frames, stars) differential magnitudes of field stars.

    fit_frames: frames the components are fitted on (e.g. not cloudy; default all). On the
    other frames each kept component's value is the weighted projection of the stars'
    residuals on its fitted coefficients, so that every frame gets its correction.
    """
    n_frames, n_stars = diff_mag.shape
    if fit_frames is None:
        fit_frames = np.ones(n_frames, dtype=bool)
    full_mag, full_var = diff_mag, var
    diff_mag = np.where(fit_frames[:, None], diff_mag, np.nan)
    empty = FieldSystematics(vectors=np.zeros((0, n_frames)), coefficients=np.zeros((0, n_stars)),
                             model=np.zeros((n_frames, n_stars)))
    if components == 0:
        empty.reason = "turned off (sysrem_components = 0)"
        return empty
    if n_stars < 5 or n_frames < 10:
        empty.reason = f"{n_stars} field stars and {n_frames} frames (5 and 10 needed)"
        return empty
    ok = np.isfinite(diff_mag) & np.isfinite(var) & (var > 0)
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    with np.errstate(all="ignore"):
        mean = (w * np.where(ok, diff_mag, 0.0)).sum(0) / w.sum(0)
        residual = np.where(ok, diff_mag - mean, np.nan)
        spread = 1.4826 * row_nanmedian(np.abs(residual - row_nanmedian(residual, 0)), 0)
        typical = row_nanmedian(np.where(ok, var, np.nan), 0)
    excess = np.where(np.isfinite(spread) & np.isfinite(typical),
                      np.maximum(spread ** 2 - typical, 0.0), 0.0)
    total_var = np.where(ok, var + excess[None, :], np.nan)
    initial = None
    if np.all(np.isfinite(airmass)) and np.ptp(airmass) > 1e-3:
        initial = airmass - np.mean(airmass)
    fit = sysrem(residual, total_var, components, initial=initial, max_iter=50, tol=1e-6,
                 threads=threads)
    # Keep the leading components that explain more than noise could: a rank-one fit to pure
    # noise lowers chi^2 by about (sqrt(frames) + sqrt(stars))^2 (the largest singular value of
    # a noise matrix), so a component must do 1.5 times better.
    weight = np.where(ok, 1.0 / np.where(ok, total_var, 1.0), 0.0)
    frames_used = int(np.count_nonzero(ok.any(axis=1)))
    stars_used = int(np.count_nonzero(ok.any(axis=0)))
    threshold = 1.5 * (np.sqrt(frames_used) + np.sqrt(stars_used)) ** 2
    current = np.where(ok, residual, 0.0)
    model = np.zeros((n_frames, n_stars))
    gains, kept = [], 0
    for vector, coefficient in zip(fit.vectors, fit.coefficients):
        term = np.outer(vector, coefficient)
        gain = float(np.sum(weight * (current ** 2 - (current - term) ** 2)))
        gains.append(gain)
        if gain <= threshold or kept < len(gains) - 1:
            continue
        model += term
        current = current - term
        kept += 1
    reason = None if kept else "no component explains more than noise"
    vectors = fit.vectors[:kept].copy()
    coefficients = fit.coefficients[:kept]
    others = ~fit_frames
    if kept and others.any():
        # Frames left out of the fit: project their residuals on the coefficients, in turn.
        ok_all = np.isfinite(full_mag) & np.isfinite(full_var) & (full_var > 0)
        w_all = np.where(ok_all, 1.0 / np.where(ok_all, full_var + excess[None, :], 1.0), 0.0)
        current = np.where(ok_all, full_mag - mean[None, :], 0.0)
        for n in range(kept):
            a = coefficients[n]
            with np.errstate(all="ignore"):
                value = (w_all * current * a).sum(axis=1) / (w_all * a * a).sum(axis=1)
            value = np.where(np.isfinite(value), value, 0.0)
            vectors[n, others] = value[others]
            current = current - np.outer(vectors[n], a)
        model = np.zeros((n_frames, n_stars))
        for vector, coefficient in zip(vectors, coefficients):
            model += np.outer(vector, coefficient)
    return FieldSystematics(vectors=vectors, coefficients=coefficients, model=model,
                            reason=reason, chi2_gain=gains, chi2_threshold=float(threshold))

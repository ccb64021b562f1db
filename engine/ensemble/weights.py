"""The weighted comparison ensemble of one run, and what follows from it directly.

`solve_ensemble` runs the iterative robust weighting (engine.kernels.ensemble.weighted_ensemble)
on the comparison stars' magnitudes and derives:
- each comparison's leave-one-out zero point (the ensemble of the *other* comparisons), which
  its own light curve and its scatter are measured against;
- each comparison's share of the total weight, which is what the report lists;
- each frame's scatter ratio: how far the comparisons scatter about the zero point compared
  with the noise model (robust: the median of the squared normalised residuals over the median
  of chi-square with one degree of freedom, 0.4549), used to flag frames.
Weights aim at the least noise on the timescale of the events looked for (see
`solve_ensemble`): a comparison's time-correlated excess counts once per frame of that
timescale, in the spirit of Broeg et al. (2005) who weight by the scatter that matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels.ensemble import EnsembleFit, weighted_ensemble
from engine.settings.ensemble import EnsembleConfig

__all__ = ["Ensemble", "MEDIAN_CHI2_1", "row_nanmedian", "solve_ensemble"]

#: Median of the chi-square distribution with one degree of freedom.
MEDIAN_CHI2_1 = 0.45493642311957283


def row_nanmedian(values: np.ndarray, axis: int = 1) -> np.ndarray:
    """Median of each row (axis=1) or column (axis=0) ignoring NaN; NaN where all are NaN.
    (np.nanmedian along an axis loops in Python; sorting puts NaN last, so index instead.)"""
    values = np.asarray(values, dtype=np.float64)
    if axis == 0:
        values = values.T
    ordered = np.sort(values, axis=1)
    count = np.isfinite(values).sum(axis=1)
    rows = np.arange(values.shape[0])
    low = ordered[rows, np.maximum((count - 1) // 2, 0)] if values.shape[1] else np.full(
        values.shape[0], np.nan)
    high = ordered[rows, np.minimum(count // 2, max(values.shape[1] - 1, 0))] \
        if values.shape[1] else low
    return np.where(count > 0, 0.5 * (low + high), np.nan)


@dataclass
class Ensemble:
    """The fitted ensemble of one run at one aperture (frames k, comparisons i)."""

    fit: EnsembleFit
    comparisons: np.ndarray      # positions of the comparisons among the run's stars
    mag: np.ndarray              # (k, i) magnitudes the fit saw
    var: np.ndarray              # (k, i) their noise-model variances
    valid: np.ndarray            # (k, i) usable measurements
    loo_zero_point: np.ndarray   # (k, i) zero point of the other comparisons
    loo_var: np.ndarray          # (k, i) its variance
    share: np.ndarray            # (i,) share of the total weight
    scatter_ratio: np.ndarray    # (k,) comparisons' scatter / noise model
    scatter_count: np.ndarray    # (k,) comparisons that ratio rests on
    total_excess: np.ndarray | None = None   # (i,) excess variance before any red penalty
    red_excess: np.ndarray | None = None     # (i,) its time-correlated part (mag^2)
    timescale_frames: int = 1                # frames the red part is counted for

    @property
    def zero_point(self) -> np.ndarray:
        return self.fit.zero_point

    @property
    def zero_point_var(self) -> np.ndarray:
        return self.fit.zero_point_var


def solve_ensemble(mag: np.ndarray, var: np.ndarray, valid: np.ndarray, comparisons: np.ndarray,
                   config: EnsembleConfig, threads: int | None = None,
                   time: np.ndarray | None = None) -> Ensemble:
    """Fit the ensemble of the comparison columns of (frames, stars) magnitudes.

    With `time` and config.weight_timescale_min > 0, each comparison's excess is split into a
    white and a red (time-correlated) part by binning its leave-one-out residuals over
    n = timescale / cadence frames, and the red part is counted n times in its weight: the
    ensemble is then the one with the least noise on that timescale (about an ingress), and a
    slowly varying comparison, the worst kind for a transit, weighs far less than its
    frame-to-frame scatter alone would say. Re-fitted until the red parts settle (at most 4).
    """
    m = np.ascontiguousarray(mag[:, comparisons])
    v = np.ascontiguousarray(var[:, comparisons])
    ok = np.ascontiguousarray(valid[:, comparisons])
    n_bin = _frames_per_timescale(time, config.weight_timescale_min)
    red = np.zeros(m.shape[1])
    first = None
    for _ in range(4 if n_bin > 1 else 1):
        penalty = (n_bin - 1) * red
        fit = weighted_ensemble(m, v + penalty[None, :], ok, clip=config.clip_sigma,
                                min_stars=config.min_stars_per_frame,
                                max_iter=config.max_iterations, threads=threads)
        ensemble = _derived(fit, m, v, ok, comparisons, penalty)
        if first is None:
            first = ensemble
        if n_bin <= 1:
            break
        new_red = _red_excess(ensemble, first.fit.excess, n_bin)
        if np.allclose(new_red, red, rtol=0.05, atol=1e-8):
            red = new_red
            break
        red = new_red
    ensemble.total_excess = first.fit.excess + 0.0
    ensemble.red_excess = red
    ensemble.timescale_frames = n_bin
    return ensemble


def _frames_per_timescale(time, timescale_min) -> int:
    if time is None or not timescale_min or len(time) < 6:
        return 1
    steps = np.diff(np.sort(np.asarray(time, dtype=np.float64))) * 1440.0
    steps = steps[steps > 0]
    if steps.size == 0:
        return 1
    return int(max(1, min(round(timescale_min / float(np.median(steps))), len(time) // 3)))


def _red_excess(ensemble: Ensemble, total_excess: np.ndarray, n_bin: int) -> np.ndarray:
    """Per comparison, the part of its excess variance that survives averaging over n_bin
    consecutive frames (moment estimate from bins of its leave-one-out residuals)."""
    residual = ensemble.mag - ensemble.fit.star_mag[None, :] - ensemble.loo_zero_point
    white = ensemble.var + ensemble.loo_var
    use = ensemble.valid & np.isfinite(residual) & np.isfinite(white)
    n_frames, n_stars = residual.shape
    n_blocks = n_frames // n_bin
    if n_blocks < 3:
        return np.zeros(n_stars)
    cut = n_blocks * n_bin
    shape = (n_blocks, n_bin, n_stars)
    r = np.where(use, residual, 0.0)[:cut].reshape(shape)
    w = np.where(use, white, 0.0)[:cut].reshape(shape)
    count = use[:cut].reshape(shape).sum(axis=1)
    with np.errstate(all="ignore"):
        mean = r.sum(axis=1) / count
        expected = w.sum(axis=1) / count ** 2
        full = count >= max(2, n_bin // 2)
        excess_per_bin = np.where(full, mean ** 2 - expected - total_excess[None, :] / count, 0.0)
        bins = full.sum(axis=0)
        size = np.where(full, count, 0).sum(axis=0) / np.maximum(bins, 1)
        moment = excess_per_bin.sum(axis=0) / np.maximum(bins, 1)
        red = moment / np.maximum(1.0 - 1.0 / size, 1e-12)
    red = np.where((bins >= 3) & np.isfinite(red), red, 0.0)
    return np.clip(red, 0.0, total_excess)


def _derived(fit: EnsembleFit, m, v, ok, comparisons, penalty) -> Ensemble:
    """Leave-one-out zero points, weight shares and per-frame scatter ratios of a fit. The
    scatter ratio uses the noise model and the fitted excess, not the red-noise penalty."""
    z = fit.zero_point[:, None]
    wsum = 1.0 / fit.zero_point_var[:, None]
    with np.errstate(all="ignore"):
        offset = m - fit.star_mag[None, :]
        others = wsum - fit.weight
        loo = np.where(fit.used, (wsum * z - fit.weight * offset) / others, z)
        loo_var = np.where(fit.used, 1.0 / others, 1.0 / wsum)
        bad = ~np.isfinite(z) | (others <= 0) | ~np.isfinite(loo)
        loo = np.where(bad, np.nan, loo)
        loo_var = np.where(bad, np.nan, loo_var)

        total = fit.weight.sum()
        share = fit.weight.sum(axis=0) / total if total > 0 else np.zeros(m.shape[1])

        residual = offset - loo
        sigma2 = v + penalty[None, :] + fit.excess[None, :] + loo_var
        q = np.where(ok & np.isfinite(residual), residual ** 2 / sigma2, np.nan)
        count = np.isfinite(q).sum(axis=1)
        median = np.where(count >= 3, row_nanmedian(q), np.nan)
        ratio = np.sqrt(median / MEDIAN_CHI2_1)
    return Ensemble(fit=fit, comparisons=np.asarray(comparisons), mag=m, var=v, valid=ok,
                    loo_zero_point=loo, loo_var=loo_var, share=share, scatter_ratio=ratio,
                    scatter_count=count)

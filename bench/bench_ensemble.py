"""Benchmark family: the iterative weighted comparison ensemble, the engine against plain NumPy.

Workload: 1,000 comparison stars x 1,000 frames (quick: 200 x 200) of magnitudes with a zero
point per frame, per-measurement errors of 2-20 mmag, one variable star in twenty, a few cosmic
rays and 3% missing measurements: `engine.kernels.ensemble.weighted_ensemble` (robust weights
from each star's leave-one-out scatter, 5-sigma clipping, zero points, excess variances) until
it converges.

Anchor: the same iteration written the way a user would in NumPy, whole-array operations per
step (`numpy_weighted_ensemble` below). Both must agree on the zero points, the stars' mean
magnitudes and their excess scatter (to 1e-9 mag and 1e-9 mag^2) before anything is timed.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Case, register

_SIZES = {False: (1000, 1000), True: (200, 200)}   # (frames, stars): full, quick


def _setup(quick: bool, rng: np.random.Generator) -> Case:
    n_frames, n_stars = _SIZES[quick]
    zero = rng.normal(0.0, 0.05, n_frames) + np.linspace(0.0, 0.3, n_frames)
    star = rng.uniform(9.0, 15.0, n_stars)
    sigma = rng.uniform(0.002, 0.02, (n_frames, n_stars))
    mag = zero[:, None] + star[None, :] + sigma * rng.standard_normal((n_frames, n_stars))
    variables = rng.choice(n_stars, n_stars // 20, replace=False)
    phase = rng.uniform(0, 2 * np.pi, variables.size)
    mag[:, variables] += 0.03 * np.sin(np.arange(n_frames)[:, None] / 40.0 + phase)
    hits = rng.integers(0, mag.size, mag.size // 2000)
    mag.flat[hits] += rng.uniform(0.1, 1.0, hits.size)
    valid = rng.uniform(size=mag.shape) > 0.03
    inputs = {"mag": mag, "var": sigma ** 2, "valid": valid}
    return Case(inputs=inputs, size=f"{n_stars} stars x {n_frames} frames",
                units=n_stars * n_frames, unit="measurements")


def _engine(inputs, threads: int):
    from engine.kernels.ensemble import weighted_ensemble

    fit = weighted_ensemble(inputs["mag"], inputs["var"], inputs["valid"], threads=threads)
    return fit.zero_point, fit.star_mag, fit.excess


def numpy_weighted_ensemble(mag, var, valid, clip=5.0, min_stars=2, max_iter=50, tol=1e-9,
                            unclipped_iterations=2):
    """The engine's iteration (see engine.kernels.ensemble) in whole-array NumPy."""
    ok = np.isfinite(mag) & np.isfinite(var) & (var > 0) & valid
    mag = np.where(ok, mag, 0.0)
    var = np.where(ok, var, 1.0)
    use = ok.copy()
    with np.errstate(all="ignore"):
        star = mag.sum(axis=0) / ok.sum(axis=0)
    star = np.where(np.isfinite(star), star, 0.0)
    excess = np.zeros(mag.shape[1])

    def zero_points():
        w = np.where(use, 1.0 / (var + excess), 0.0)
        wsum = w.sum(axis=1)
        count = use.sum(axis=1)
        with np.errstate(all="ignore"):
            z = (w * (mag - star)).sum(axis=1) / wsum
        return np.where(count >= min_stars, z, np.nan), wsum

    previous = np.full(mag.shape[0], np.nan)
    for iteration in range(max_iter):
        z, wsum = zero_points()
        has = np.isfinite(z)[:, None]
        zz = np.where(has, z[:, None], 0.0)
        w = np.where(use & has, 1.0 / (var + excess), 0.0)
        with np.errstate(all="ignore"):
            total = w.sum(axis=0)
            mean = np.where(total > 0, (w * (mag - zz)).sum(axis=0) / total, star)
            others = wsum[:, None] - w
            inside = (w > 0) & (others > 0)
            r = np.where(inside, (mag - mean - zz) * wsum[:, None] / others, 0.0)
            v_others = np.where(inside, 1.0 / others, 0.0)
            u = np.where(inside, 1.0 / (var + excess) ** 2, 0.0)
            num = (u * (r * r - var - v_others)).sum(axis=0)
            den = u.sum(axis=0)
            new_excess = np.where(den > 0, np.maximum(num / den, 0.0), excess)
        changed = 0
        if iteration >= unclipped_iterations:
            with np.errstate(all="ignore"):
                w_old = 1.0 / (var + excess)
                others_used = wsum[:, None] - w_old
                r_used = (mag - mean - zz) * wsum[:, None] / others_used
                r_free = mag - mean - zz
                residual = np.where(use, r_used, r_free)
                limit = np.where(use, others_used, wsum[:, None])
                keep = residual ** 2 <= clip * clip * (var + excess + 1.0 / limit)
                decide = ok & has & (limit > 0)
            new_use = np.where(decide, keep, use)
            changed = int((new_use != use).sum())
            use = new_use
        moved_zero = (np.inf if not np.array_equal(np.isfinite(z), np.isfinite(previous)) else
                      float(np.nanmax(np.abs(z - previous))) if np.isfinite(z).any() else 0.0)
        moved_star = float(np.max(np.abs(mean - star))) if mean.size else 0.0
        previous, star, excess = z, mean, new_excess
        if (iteration > unclipped_iterations and moved_zero <= tol and moved_star <= tol
                and changed == 0):
            break
    z, _ = zero_points()
    has = np.isfinite(z)
    shift = float(np.mean(z[has])) if has.any() else 0.0
    star = np.where((use & has[:, None]).any(axis=0), star + shift, np.nan)
    return z - shift, star, excess


def _anchor(inputs):
    return numpy_weighted_ensemble(inputs["mag"], inputs["var"], inputs["valid"])


def _discrepancy(engine_result, anchor_result) -> float:
    worst = 0.0
    for ours, theirs in zip(engine_result, anchor_result):
        if not np.array_equal(np.isnan(ours), np.isnan(theirs)):
            return float("inf")
        both = np.isfinite(ours)
        if both.any():
            worst = max(worst, float(np.max(np.abs(ours[both] - theirs[both]))))
    return worst


ENSEMBLE = register(Benchmark(
    name="ensemble",
    anchor="numpy (same iteration)",
    requires=(),
    setup=_setup,
    run_engine=_engine,
    run_anchor=_anchor,
    discrepancy=_discrepancy,   # largest difference over zero points, star magnitudes, excesses
    tolerance=1e-9,
    threaded=True,
    rounds=5,
    notes="iterative robust weighted ensemble (leave-one-out excess weights, 5-sigma clipping) "
          "to convergence; anchor: the same iteration in whole-array NumPy",
))

"""Ensemble photometry kernels: the iterative weighted comparison ensemble and SysRem.

What this module promises
-------------------------
- `weighted_ensemble` fits the two-way model  mag[k, i] = zero_point[k] + star_mag[i] + noise
  to a block of comparison-star magnitudes (frames k, stars i) by iteratively reweighted least
  squares, in the spirit of Honeycutt (1992) and Broeg, Fernandez & Neuhaeuser (2005): each
  measurement weighs 1 / (var[k, i] + excess[i]), where var is the noise model's variance and
  excess[i] the extra variance of star i measured from its own scatter against the *other*
  stars (leave-one-out residuals), so a variable comparison ends with a large excess and a
  weight near zero. Measurements further than `clip` sigma from the others are left out of the
  fit (they may come back on a later iteration). The iteration is exactly the one written out
  loop by loop in `tests/reference.py::weighted_ensemble`, and gives its numbers to ~1e-12.
- `sysrem` removes the systematics many stars share (Tamuz, Mazeh & Zucker 2005): rank-one
  terms c[k] a[j] fitted to a residual matrix by alternating weighted least squares, one
  component after another; equal to `tests/reference.py::sysrem` to ~1e-12.
- Results do not depend on the thread count: every parallel loop writes its own outputs and
  every sum runs in a fixed order. The kernels keep no state; the thread count is an argument.

Kernel layout: `_block_zero_points`, `_star_update`, `_sysrem_block`, `_sysrem_star` are the
scalar cores (one star, or one block of frames summed over the stars in order);
`_zero_points`, `_star_updates`, `_sysrem_vector`, `_sysrem_coefficients` their parallel array
drivers, on star-major (stars, frames) copies. Drivers trust their inputs (C-contiguous float64
of matching shapes, uint8 masks): call them only through the validating public functions at
the bottom of this module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from engine.errors import EngineValueError
from engine.kernels._jit import jit, set_threads

__all__ = ["EnsembleFit", "SysremFit", "sysrem", "weighted_ensemble"]

_NAN = math.nan


# ------------------------------------------------------------------------------------------------
# Weighted ensemble: scalar cores. Arrays are star-major here, (stars, frames), so that a star's
# measurements are contiguous; zero points are summed over stars for a block of frames at once.
# ------------------------------------------------------------------------------------------------

@jit
def _block_zero_points(mag, var, use, star_mag, excess, k0, k1, min_stars, zero_point,
                       weight_sum, count):
    """Zero points of frames k0 <= k < k1: weighted means of mag[i, k] - star_mag[i] over the
    stars used on each frame, weights 1 / (var + excess[i]), summed over i in increasing order.
    Frames with fewer than min_stars stars get NaN. (Branch-free inner loop: it vectorises.)"""
    for k in range(k0, k1):
        zero_point[k] = 0.0
        weight_sum[k] = 0.0
        count[k] = 0
    for i in range(mag.shape[0]):
        e = excess[i]
        m = star_mag[i]
        for k in range(k0, k1):
            used = use[i, k] != 0
            w = 1.0 / (var[i, k] + e) if used else 0.0
            zero_point[k] += w * (mag[i, k] - m)
            weight_sum[k] += w
            count[k] += 1 if used else 0
    for k in range(k0, k1):
        if count[k] < min_stars or weight_sum[k] <= 0.0:
            zero_point[k] = _NAN
        else:
            zero_point[k] = zero_point[k] / weight_sum[k]


@jit
def _star_update(mag, var, valid, use, zero_point, weight_sum, star_mag_i, excess_i, i,
                 clip, do_clip):
    """One star's step: its mean magnitude, its excess variance, and (do_clip) its outliers.

    The mean is the weighted mean of mag - zero_point over the frames that use the star. With
    it, the leave-one-out residuals r (the star against the zero point of the *other* stars)
    give one moment step of the maximum-likelihood equation for the extra variance e:
        e = sum u (r^2 - var - var_others) / sum u,   u = 1 / (var + e)^2,
    floored at 0 (sums over the frames that use the star). In the same pass, with do_clip, a
    valid measurement is marked used when r^2 <= clip^2 (var + e_old + var_others), e_old being
    the excess this step started from. Frames without a zero point (NaN) are skipped. Returns
    (mean, excess, number of measurements whose use changed); use[i, :] is updated. The loops
    are branch-free (selects) so that they vectorise.
    """
    n_frames = mag.shape[1]
    total = 0.0
    wsum = 0.0
    for k in range(n_frames):
        z = zero_point[k]
        take = (use[i, k] != 0) and z == z
        w = 1.0 / (var[i, k] + excess_i) if take else 0.0
        total += w * ((mag[i, k] - z) if take else 0.0)
        wsum += w
    mean = total / wsum if wsum > 0.0 else star_mag_i

    num = 0.0
    den = 0.0
    changed = 0
    limit = clip * clip
    for k in range(n_frames):
        z = zero_point[k]
        used = use[i, k] != 0
        w = 1.0 / (var[i, k] + excess_i)
        others = weight_sum[k] - (w if used else 0.0)
        fine = (valid[i, k] != 0) and z == z and others > 0.0
        inv = 1.0 / others if fine else 0.0
        r = (mag[i, k] - mean - z) * weight_sum[k] * inv if fine else 0.0
        moment = fine and used
        u = w * w if moment else 0.0
        num += u * (r * r - var[i, k] - inv)
        den += u
        keep = r * r <= limit * (var[i, k] + excess_i + inv)
        new = (1 if keep else 0) if (fine and do_clip) else use[i, k]
        changed += 1 if new != use[i, k] else 0
        use[i, k] = new
    excess = excess_i
    if den > 0.0:
        excess = num / den
        if excess < 0.0:
            excess = 0.0
    return mean, excess, changed


# ------------------------------------------------------------------------------------------------
# Weighted ensemble: array drivers
# ------------------------------------------------------------------------------------------------

_BLOCK = 256  # frames per zero-point block: a star's row segment of a block stays in L1

#: Below this many (frame, star) entries the loops run on the calling thread: waking worker
#: threads costs more than the work (the numbers are the same either way).
_PARALLEL_MIN = 100_000


@jit(parallel=True)
def _zero_points(mag, var, use, star_mag, excess, min_stars, zero_point, weight_sum, count):
    n_frames = mag.shape[1]
    n_blocks = (n_frames + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        k0 = b * _BLOCK
        k1 = min(k0 + _BLOCK, n_frames)
        _block_zero_points(mag, var, use, star_mag, excess, k0, k1, min_stars, zero_point,
                           weight_sum, count)


@jit(parallel=True)
def _star_updates(mag, var, valid, use, zero_point, weight_sum, star_mag, excess, clip, do_clip,
                  changed):
    for i in prange(mag.shape[0]):
        mean, e, c = _star_update(mag, var, valid, use, zero_point, weight_sum, star_mag[i],
                                  excess[i], i, clip, do_clip)
        star_mag[i] = mean
        excess[i] = e
        changed[i] = c


# ------------------------------------------------------------------------------------------------
# SysRem: scalar cores and drivers, star-major (stars, frames) like the ensemble
# ------------------------------------------------------------------------------------------------

@jit
def _sysrem_block(residual, weight, coefficient, k0, k1, vector, den):
    """Best c[k] for fixed star coefficients, frames k0 <= k < k1:
    sum_j w r a / sum_j w a^2 (0 when undefined), summed over j in increasing order."""
    for k in range(k0, k1):
        vector[k] = 0.0
        den[k] = 0.0
    for j in range(residual.shape[0]):
        a = coefficient[j]
        for k in range(k0, k1):
            w = weight[j, k]          # 0 where missing (and the residual is 0 there)
            vector[k] += w * residual[j, k] * a
            den[k] += w * a * a
    for k in range(k0, k1):
        vector[k] = vector[k] / den[k] if den[k] > 0.0 else 0.0


@jit
def _sysrem_star(residual, weight, vector, j):
    """Best a[j] for a fixed frame vector: sum_k w r c / sum_k w c^2 (0 when undefined)."""
    num = 0.0
    den = 0.0
    for k in range(residual.shape[1]):
        w = weight[j, k]              # 0 where missing (and the residual is 0 there)
        num += w * residual[j, k] * vector[k]
        den += w * vector[k] * vector[k]
    return num / den if den > 0.0 else 0.0


@jit(parallel=True)
def _sysrem_vector(residual, weight, coefficient, vector, den):
    n_frames = residual.shape[1]
    n_blocks = (n_frames + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        k0 = b * _BLOCK
        _sysrem_block(residual, weight, coefficient, k0, min(k0 + _BLOCK, n_frames), vector, den)


@jit(parallel=True)
def _sysrem_coefficients(residual, weight, vector, coefficient):
    for j in prange(residual.shape[0]):
        coefficient[j] = _sysrem_star(residual, weight, vector, j)


# ------------------------------------------------------------------------------------------------
# Public, validating functions
# ------------------------------------------------------------------------------------------------

class EnsembleFit(NamedTuple):
    """What `weighted_ensemble` returns (frames k, stars i).

    zero_point[k]: the frame's zero point (mag; NaN where fewer than min_stars were used); the
        zero points average to 0 over the frames that have one, so star_mag is each star's mean.
    zero_point_var[k]: its variance, 1 / sum_i weight[k, i] (mag^2; NaN without a zero point).
    star_mag[i]: the star's mean magnitude on the ensemble's system (NaN if never used).
    excess[i]: the star's variance beyond the noise model (mag^2), from its leave-one-out scatter.
    weight[k, i]: the final weight 1 / (var + excess) of each measurement used, 0 otherwise.
    used[k, i]: the measurement entered the final fit (valid and not clipped).
    stars_used[k]: how many stars the frame's zero point rests on.
    iterations, converged: how the iteration ended.
    """

    zero_point: np.ndarray
    zero_point_var: np.ndarray
    star_mag: np.ndarray
    excess: np.ndarray
    weight: np.ndarray
    used: np.ndarray
    stars_used: np.ndarray
    iterations: int
    converged: bool


def _float_matrix(name, value, shape=None):
    arr = np.ascontiguousarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise EngineValueError(f"{name} must be 2-d (frames, stars), got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise EngineValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EngineValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def weighted_ensemble(mag, var, valid=None, *, clip: float = 5.0, min_stars: int = 2,
                      max_iter: int = 50, tol: float = 1e-9, unclipped_iterations: int = 2,
                      threads: int | None = None) -> EnsembleFit:
    """Iterative, robust weighted ensemble of comparison stars (see the module docstring).

    Parameters
    ----------
    mag : (frames, stars) array of instrumental magnitudes.
    var : (frames, stars) array of their noise-model variances (mag^2, > 0).
    valid : optional (frames, stars) bool mask of usable measurements; non-finite mag or var,
        and var <= 0, are never used.
    clip : measurements more than `clip` sigma from the other stars are left out (> 0).
    min_stars : a frame needs this many stars for a zero point (>= 1).
    max_iter : iterations at most; tol: stop when zero points and star magnitudes move less
        than this (mag) and no measurement changed its use.
    unclipped_iterations : iterations before clipping starts (the excess variances must exist
        before a variable star's swings can be told from outliers).
    threads : threads for the parallel loops (default: all of Numba's; fewer than 100,000
        entries run on the calling thread); results do not depend on it.

    Returns
    -------
    EnsembleFit
    """
    mag = _float_matrix("mag", mag)
    var = _float_matrix("var", var, mag.shape)
    ok = _usable(mag, var, valid)
    clip = float(clip)
    if not (math.isfinite(clip) and clip > 0.0):
        raise EngineValueError(f"clip must be finite and > 0, got {clip!r}")
    min_stars = _count("min_stars", min_stars, 1)
    max_iter = _count("max_iter", max_iter, 1)
    unclipped_iterations = _count("unclipped_iterations", unclipped_iterations, 0)
    tol = float(tol)
    if not (tol >= 0.0):
        raise EngineValueError(f"tol must be >= 0, got {tol!r}")
    set_threads(1 if mag.size < _PARALLEL_MIN else threads)

    # Star-major copies; masked entries hold harmless numbers so no NaN reaches a sum.
    ok_t = np.ascontiguousarray(ok.T)
    state = _EnsembleState.start(np.ascontiguousarray(np.where(ok_t, mag.T, 0.0)),
                                 np.ascontiguousarray(np.where(ok_t, var.T, 1.0)), ok_t)
    iterations, converged = _iterate(state, clip, min_stars, max_iter, tol,
                                     unclipped_iterations)
    return _final_fit(state, min_stars, iterations, converged)


def _usable(mag, var, valid):
    """Finite mag, finite var > 0, and the caller's valid mask."""
    ok = np.isfinite(mag) & np.isfinite(var) & (var > 0.0)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != mag.shape:
            raise EngineValueError(f"valid must have shape {mag.shape}, got {valid.shape}")
        ok &= valid.astype(bool)
    return ok


class _EnsembleState(NamedTuple):
    """The star-major arrays the kernels update in place."""

    mag_t: np.ndarray          # (stars, frames) magnitudes, 0 where unusable
    var_t: np.ndarray          # (stars, frames) variances, 1 where unusable
    valid8: np.ndarray         # (stars, frames) uint8 usable
    use: np.ndarray            # (stars, frames) uint8 used (not clipped)
    star_mag: np.ndarray       # (stars,)
    excess: np.ndarray         # (stars,) excess variance
    zero_point: np.ndarray     # (frames,)
    weight_sum: np.ndarray     # (frames,)
    count: np.ndarray          # (frames,) stars used
    changed: np.ndarray        # (stars,) measurements whose use changed this iteration

    @classmethod
    def start(cls, mag_t, var_t, ok_t):
        n_stars, n_frames = mag_t.shape
        valid8 = ok_t.astype(np.uint8)
        # Start from each star's plain mean (0 when never measured); the iteration does the rest.
        with np.errstate(all="ignore"):
            star_mag = mag_t.sum(axis=1) / ok_t.sum(axis=1)
        star_mag = np.ascontiguousarray(np.where(np.isfinite(star_mag), star_mag, 0.0))
        return cls(mag_t=mag_t, var_t=var_t, valid8=valid8, use=valid8.copy(),
                   star_mag=star_mag, excess=np.zeros(n_stars),
                   zero_point=np.full(n_frames, np.nan), weight_sum=np.zeros(n_frames),
                   count=np.zeros(n_frames, dtype=np.int64),
                   changed=np.zeros(n_stars, dtype=np.int64))

    def update_zero_points(self, min_stars):
        _zero_points(self.mag_t, self.var_t, self.use, self.star_mag, self.excess, min_stars,
                     self.zero_point, self.weight_sum, self.count)


def _iterate(state: _EnsembleState, clip, min_stars, max_iter, tol, unclipped_iterations):
    """Zero points, then star magnitudes, excess variances and clipping, until nothing moves
    more than tol. Returns (iterations, converged)."""
    previous_zero = np.full(state.zero_point.size, np.nan)
    for iteration in range(max_iter):
        state.update_zero_points(min_stars)
        previous_mag = state.star_mag.copy()
        do_clip = iteration >= unclipped_iterations
        _star_updates(state.mag_t, state.var_t, state.valid8, state.use, state.zero_point,
                      state.weight_sum, state.star_mag, state.excess, clip, do_clip,
                      state.changed)
        moved_zero = _largest_change(state.zero_point, previous_zero)
        moved_mag = _largest_change(state.star_mag, previous_mag)
        previous_zero = state.zero_point.copy()
        if (iteration > unclipped_iterations and moved_zero <= tol and moved_mag <= tol
                and not state.changed.any()):
            return iteration + 1, True
    return max_iter, False


def _final_fit(state: _EnsembleState, min_stars, iterations, converged) -> EnsembleFit:
    """The final zero points with the final weights and use, shifted to mean zero."""
    state.update_zero_points(min_stars)
    zero_point, star_mag = state.zero_point, state.star_mag
    has_zero = np.isfinite(zero_point)
    weight_t = np.where((state.use != 0) & has_zero[None, :],
                        1.0 / (state.var_t + state.excess[:, None]), 0.0)
    if has_zero.any():
        shift = float(np.mean(zero_point[has_zero]))
        zero_point -= shift
        star_mag = star_mag + shift
    used = (state.use.T != 0) & has_zero[:, None]
    star_mag = np.where(used.any(axis=0), star_mag, np.nan)
    with np.errstate(divide="ignore"):
        zero_point_var = np.where(has_zero, 1.0 / state.weight_sum, np.nan)
    return EnsembleFit(zero_point=zero_point, zero_point_var=zero_point_var, star_mag=star_mag,
                       excess=state.excess, weight=np.ascontiguousarray(weight_t.T), used=used,
                       stars_used=np.where(has_zero, state.count, 0), iterations=iterations,
                       converged=converged)


def _largest_change(new, old):
    both = np.isfinite(new) & np.isfinite(old)
    if np.isfinite(new).sum() != both.sum() or np.isfinite(old).sum() != both.sum():
        return math.inf
    return float(np.max(np.abs(new[both] - old[both]))) if both.any() else 0.0


class SysremFit(NamedTuple):
    """What `sysrem` returns: residual minus the removed components.

    vectors[n, k], coefficients[n, j]: the n-th component is vectors[n][:, None] *
    coefficients[n][None, :] (frames k, stars j); the vectors are scaled to unit rms.
    cleaned[k, j]: the residuals with every component removed.
    iterations[n]: alternations each component took.
    """

    vectors: np.ndarray
    coefficients: np.ndarray
    cleaned: np.ndarray
    iterations: np.ndarray


def sysrem(residual, var, components: int = 1, *, initial=None, max_iter: int = 100,
           tol: float = 1e-7, threads: int | None = None) -> SysremFit:
    """SysRem (Tamuz, Mazeh & Zucker 2005) on a (frames, stars) residual matrix.

    residual : (frames, stars) magnitudes with each star's mean removed; NaN = missing.
    var : their variances (mag^2); entries with non-finite or non-positive var are missing.
    components : how many systematic components to find and remove, one after another.
    initial : optional first guess of the frame vector (e.g. airmass - its mean); default 1.
    max_iter, tol : alternations per component at most, and the change of the frame vector
        (relative to its rms) below which it has converged.
    threads : threads for the parallel loops (default: all of Numba's).
    """
    residual = _float_matrix("residual", residual)
    var = _float_matrix("var", var, residual.shape)
    components = _count("components", components, 0)
    max_iter = _count("max_iter", max_iter, 1)
    set_threads(1 if residual.size < _PARALLEL_MIN else threads)
    n_frames, n_stars = residual.shape
    ok = np.isfinite(residual) & np.isfinite(var) & (var > 0.0)
    ok_t = np.ascontiguousarray(ok.T)
    with np.errstate(divide="ignore"):
        weight = np.ascontiguousarray(np.where(ok_t, 1.0 / np.where(ok_t, var.T, 1.0), 0.0))
    cleaned = np.ascontiguousarray(np.where(ok_t, residual.T, 0.0))
    if initial is None:
        start = np.ones(n_frames)
    else:
        start = np.asarray(initial, dtype=np.float64)
        if start.shape != (n_frames,) or not np.all(np.isfinite(start)):
            raise EngineValueError(f"initial must be {n_frames} finite values")
        if not np.any(start != 0.0):
            start = np.ones(n_frames)
    vectors = np.zeros((components, n_frames))
    coefficients = np.zeros((components, n_stars))
    iterations = np.zeros(components, dtype=np.int64)
    den = np.zeros(n_frames)
    for n in range(components):
        vector = np.ascontiguousarray(start, dtype=np.float64).copy()
        coefficient = np.zeros(n_stars)
        for it in range(max_iter):
            iterations[n] = it + 1
            _sysrem_coefficients(cleaned, weight, vector, coefficient)
            previous = vector.copy()
            _sysrem_vector(cleaned, weight, coefficient, vector, den)
            scale = math.sqrt(float(np.mean(vector * vector))) if n_frames else 0.0
            if scale == 0.0:
                break
            vector /= scale
            if float(np.max(np.abs(vector - previous))) <= tol:
                break
        _sysrem_coefficients(cleaned, weight, vector, coefficient)
        cleaned -= np.outer(coefficient, vector)
        vectors[n] = vector
        coefficients[n] = coefficient
    cleaned = np.where(ok, cleaned.T, np.nan)
    return SysremFit(vectors=vectors, coefficients=coefficients, cleaned=cleaned,
                     iterations=iterations)

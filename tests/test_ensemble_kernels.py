"""Ensemble kernels (engine.kernels.ensemble) against the slow references and analytic answers."""

import numpy as np
import pytest
import reference

from engine.errors import EngineValueError
from engine.kernels.ensemble import sysrem, weighted_ensemble

FIELDS = ("zero_point", "zero_point_var", "star_mag", "excess", "weight", "used", "stars_used")


def _block(rng, n_frames=70, n_stars=11, variable=True, outliers=True, missing=0.05):
    zero = rng.normal(0.0, 0.05, n_frames) + np.linspace(0, 0.2, n_frames)
    star = rng.uniform(10.0, 14.0, n_stars)
    sigma = rng.uniform(0.002, 0.02, (n_frames, n_stars))
    mag = zero[:, None] + star[None, :] + sigma * rng.standard_normal((n_frames, n_stars))
    if variable:
        mag[:, 2] += 0.04 * np.sin(np.arange(n_frames) / 6.0)
    if outliers:
        mag[rng.integers(0, n_frames, 4), rng.integers(0, n_stars, 4)] += 0.5
    valid = rng.uniform(size=mag.shape) > missing
    return mag, sigma ** 2, valid, zero, star


def _assert_equal_to_reference(fit, ref):
    for name in FIELDS:
        ours = np.asarray(getattr(fit, name), dtype=float)
        theirs = np.asarray(ref[name], dtype=float)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), name
        scale = np.nanmax(np.abs(theirs)) if np.isfinite(theirs).any() else 1.0
        np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-12 * max(scale, 1.0),
                                   err_msg=name)
    assert fit.iterations == ref["iterations"] and fit.converged == ref["converged"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_ensemble_equals_slow_reference(seed):
    rng = np.random.default_rng(seed)
    mag, var, valid, _, _ = _block(rng)
    fit = weighted_ensemble(mag, var, valid, threads=1)
    _assert_equal_to_reference(fit, reference.weighted_ensemble(mag, var, valid))


def test_weighted_ensemble_edge_cases_equal_reference():
    rng = np.random.default_rng(5)
    mag, var, valid, _, _ = _block(rng, n_frames=25, n_stars=4)
    valid[3, :] = False             # a frame without stars
    valid[7, 1:] = False            # a frame with one star (below min_stars)
    valid[:, 3] = False             # a star never measured
    mag[10, 0] = np.nan             # non-finite inputs are never used
    var[11, 1] = 0.0
    fit = weighted_ensemble(mag, var, valid, min_stars=2, threads=1)
    _assert_equal_to_reference(fit, reference.weighted_ensemble(mag, var, valid, min_stars=2))
    assert np.isnan(fit.zero_point[3]) and np.isnan(fit.zero_point[7])
    assert np.isnan(fit.star_mag[3]) and not fit.used[:, 3].any()
    assert not fit.used[10, 0] and not fit.used[11, 1]
    assert np.all(fit.weight[~fit.used] == 0.0)


def test_noise_free_block_is_recovered_exactly():
    rng = np.random.default_rng(3)
    zero = rng.normal(0, 0.1, 40)
    star = rng.uniform(9, 15, 8)
    mag = zero[:, None] + star[None, :]
    fit = weighted_ensemble(mag, np.full(mag.shape, 1e-6), threads=1)
    # The model is defined up to a constant: zero points average to 0 over the frames.
    np.testing.assert_allclose(fit.zero_point, zero - zero.mean(), atol=1e-12)
    np.testing.assert_allclose(fit.star_mag, star + zero.mean(), atol=1e-12)
    np.testing.assert_allclose(fit.excess, 0.0, atol=1e-15)
    assert fit.converged and fit.used.all()


def test_variable_star_ends_near_zero_weight_and_outliers_are_clipped():
    rng = np.random.default_rng(11)
    n_frames, n_stars = 200, 8
    sigma = 0.003
    mag = rng.normal(0, sigma, (n_frames, n_stars)) + np.arange(n_stars)
    mag[:, 0] += 0.03 * np.sin(np.arange(n_frames) / 15.0)   # a variable comparison
    mag[50, 4] += 0.2                                           # a cosmic ray
    fit = weighted_ensemble(mag, np.full(mag.shape, sigma ** 2), threads=1)
    share = fit.weight.sum(0) / fit.weight.sum()
    assert share[0] < 0.02, share
    assert np.sqrt(fit.excess[0]) == pytest.approx(0.03 / np.sqrt(2), rel=0.15)
    assert np.all(np.sqrt(fit.excess[1:]) < 0.0015)
    assert not fit.used[50, 4] and fit.used[49, 4]
    # The zero points follow the constant stars, not the variable one.
    assert np.std(fit.zero_point) < 2 * sigma / np.sqrt(n_stars - 2)


def test_threads_give_identical_results():
    rng = np.random.default_rng(8)
    mag, var, valid, _, _ = _block(rng, n_frames=600, n_stars=300)   # above the serial limit
    one = weighted_ensemble(mag, var, valid, threads=1)
    two = weighted_ensemble(mag, var, valid, threads=2)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_invalid_arguments_raise():
    mag = np.zeros((5, 3))
    with pytest.raises(EngineValueError, match="2-d"):
        weighted_ensemble(np.zeros(5), np.ones(5))
    with pytest.raises(EngineValueError, match="shape"):
        weighted_ensemble(mag, np.ones((5, 4)))
    with pytest.raises(EngineValueError, match="clip"):
        weighted_ensemble(mag, np.ones((5, 3)), clip=0.0)
    with pytest.raises(EngineValueError, match="min_stars"):
        weighted_ensemble(mag, np.ones((5, 3)), min_stars=0)
    with pytest.raises(EngineValueError, match="valid"):
        weighted_ensemble(mag, np.ones((5, 3)), valid=np.ones((3, 5), bool))


@pytest.mark.parametrize("components", [1, 2])
def test_sysrem_equals_slow_reference(components):
    rng = np.random.default_rng(4)
    n_frames, n_stars = 50, 30
    residual = rng.normal(0, 0.004, (n_frames, n_stars))
    residual += np.outer(np.linspace(-1, 1, n_frames), rng.normal(0, 0.01, n_stars))
    residual += np.outer(np.sin(np.arange(n_frames) / 4.0), rng.normal(0, 0.006, n_stars))
    var = rng.uniform(1e-5, 3e-5, residual.shape)
    residual[rng.uniform(size=residual.shape) < 0.03] = np.nan
    initial = np.linspace(-1, 1, n_frames) ** 2
    ours = sysrem(residual, var, components, initial=initial, threads=1)
    theirs = reference.sysrem(residual, var, components, initial=initial)
    for name in ("vectors", "coefficients", "cleaned", "iterations"):
        np.testing.assert_allclose(getattr(ours, name), theirs[name], rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_sysrem_removes_a_rank_one_systematic_exactly():
    rng = np.random.default_rng(6)
    c = rng.normal(0, 1, 80)
    a = rng.normal(0, 0.02, 40)
    fit = sysrem(np.outer(c, a), np.full((80, 40), 1e-4), 1, threads=1)
    np.testing.assert_allclose(fit.cleaned, 0.0, atol=1e-10)
    product = np.outer(fit.vectors[0], fit.coefficients[0])
    np.testing.assert_allclose(product, np.outer(c, a), atol=1e-10)
    assert np.sqrt(np.mean(fit.vectors[0] ** 2)) == pytest.approx(1.0)


def test_sysrem_threads_identical_and_zero_components():
    rng = np.random.default_rng(7)
    residual = rng.normal(0, 0.01, (400, 300))
    residual += np.outer(np.linspace(-1, 1, 400), rng.normal(0, 0.01, 300))
    var = np.full(residual.shape, 1e-4)
    one = sysrem(residual, var, 1, threads=1, max_iter=20)
    two = sysrem(residual, var, 1, threads=2, max_iter=20)
    np.testing.assert_array_equal(one.cleaned, two.cleaned)
    none = sysrem(residual, var, 0)
    np.testing.assert_array_equal(none.cleaned, residual)
    assert none.vectors.shape == (0, 400)


def test_benchmark_anchor_is_the_same_iteration():
    from engine.bench.bench_ensemble import numpy_weighted_ensemble

    rng = np.random.default_rng(12)
    mag, var, valid, _, _ = _block(rng, n_frames=90, n_stars=25)
    fit = weighted_ensemble(mag, var, valid, threads=1)
    zero, star, excess = numpy_weighted_ensemble(mag, var, valid)
    np.testing.assert_allclose(zero, fit.zero_point, atol=1e-12)
    np.testing.assert_allclose(star, fit.star_mag, atol=1e-12)
    np.testing.assert_allclose(excess, fit.excess, atol=1e-14)

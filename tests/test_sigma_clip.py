"""The one sigma-clipping rule (engine.kernels.sigma_clip) against astropy, and the C++ annulus
clip (engine.cext.sigma_clipped_median) against the rule, on random and edge inputs."""

import numpy as np
import pytest
from astropy.stats import sigma_clip, sigma_clipped_stats

import engine.cext
from engine.kernels.sigma_clip import clipped_bounds, clipped_median_std, wirth_median


def _samples(rng):
    """Sets of values the clip must agree on: clean, with outliers, heavy tails, ties, tiny."""
    yield np.array([5.0])
    yield np.array([1.0, 2.0])
    yield np.full(17, 3.25)
    for n in (3, 10, 101, 1000):
        yield rng.normal(10.0, 2.0, n)
        yield np.concatenate([rng.normal(10.0, 2.0, n), rng.uniform(50.0, 90.0, n // 10 + 1)])
        yield 100.0 + 5.0 * rng.standard_cauchy(n)
        yield rng.integers(0, 6, n).astype(np.float64)  # many ties at the bounds


def _core_bounds(values, maxiters, sigma_lower, sigma_upper, cenfunc="median", stdfunc="std"):
    data = values.copy()
    return clipped_bounds(data, data.size, cenfunc == "median", stdfunc == "mad_std", maxiters,
                          sigma_lower, sigma_upper, np.empty(data.size))


@pytest.mark.parametrize("cenfunc,stdfunc", [("median", "std"), ("mean", "std"),
                                             ("median", "mad_std"), ("mean", "mad_std")])
def test_core_bounds_are_astropys(cenfunc, stdfunc):
    rng = np.random.default_rng(11)
    for values in _samples(rng):
        for maxiters, sigma in ((1, 3.0), (5, 2.5), (None, 2.0)):
            # Along an axis astropy runs its C code, which the core ports operation by operation.
            _, lower, upper = sigma_clip(values[:, None], sigma=sigma, maxiters=maxiters,
                                         cenfunc=cenfunc, stdfunc=stdfunc, axis=0,
                                         return_bounds=True)
            got = _core_bounds(values, -1 if maxiters is None else maxiters, sigma, sigma,
                               cenfunc, stdfunc)
            assert got == (lower[0], upper[0])


def test_core_median_is_numpys_and_leaves_the_values():
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 8, 51):
        values = rng.normal(size=n)
        work = values.copy()
        assert wirth_median(work, n) == np.median(values)
        np.testing.assert_array_equal(np.sort(work), np.sort(values))  # reordered, not changed


def test_cpp_annulus_clip_follows_the_core():
    rng = np.random.default_rng(7)
    for values in _samples(rng):
        for iterations, sigma in ((1, 3.0), (4, 2.5), (5, 2.0)):
            lower, upper = _core_bounds(values, iterations, sigma, sigma)
            kept = values[(values >= lower) & (values <= upper)]
            median, std, count = engine.cext.sigma_clipped_median(values, sigma=sigma,
                                                                  iterations=iterations)
            assert count == kept.size
            assert median == pytest.approx(np.median(kept), rel=1e-13)
            # The C++ sums about the median; the core's std is two-pass: equal to rounding.
            assert std == pytest.approx(np.std(kept), rel=1e-10, abs=1e-13)


def test_core_clipped_stats_are_astropys_and_the_cpp_annulus_clips():
    rng = np.random.default_rng(5)
    for values in _samples(rng):
        for iterations, sigma in ((1, 3.0), (4, 2.5), (5, 2.0)):
            data = values.copy()
            median, std, kept = clipped_median_std(data, data.size, sigma, iterations)
            _, a_median, a_std = sigma_clipped_stats(values, sigma=sigma, maxiters=iterations)
            assert median == pytest.approx(a_median, rel=1e-13)
            assert std == pytest.approx(a_std, rel=1e-12, abs=1e-13)
            cpp = engine.cext.sigma_clipped_median(values, sigma=sigma, iterations=iterations)
            assert kept == cpp[2] and median == cpp[0]
            assert std == pytest.approx(cpp[1], rel=1e-10, abs=1e-13)
    # No clipping at iterations 0 (the C++ rule), and nothing kept gives NaNs.
    values = np.r_[np.zeros(20), 1e6]
    assert clipped_median_std(values.copy(), values.size, 3.0, 0) == (0.0, np.std(values), 21)
    assert engine.cext.sigma_clipped_median(values, sigma=3.0, iterations=0)[2] == 21
    median, std, kept = clipped_median_std(np.empty(0), 0, 3.0, 5)
    assert kept == 0 and np.isnan(median) and np.isnan(std)

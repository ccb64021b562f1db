"""The simulator's photon counts (engine.simulation._kernels.photon_counts) against the Poisson
distribution: exact inversion below NORMAL_FROM_MEAN equals scipy's quantile function, and above
it the skew-kept normal has the Poisson mean, variance and third moment."""

import numpy as np
import pytest
from scipy import stats

from engine.simulation._kernels import NORMAL_FROM_MEAN, photon_counts


def _counts(mean, uniforms, normals):
    mean = np.ascontiguousarray(mean, dtype=np.float64).reshape(1, -1)
    out = np.empty(mean.shape, dtype=np.float32)
    photon_counts(mean, np.zeros_like(mean), np.asarray(uniforms, np.float32).reshape(1, -1),
                  np.asarray(normals, np.float32).reshape(1, -1), out)
    return out[0].astype(np.float64)


def test_small_means_are_the_poisson_quantile_of_the_uniform():
    rng = np.random.default_rng(5)
    n = 200_000
    mean = rng.uniform(0.0, NORMAL_FROM_MEAN, n)
    uniforms = rng.random(n, dtype=np.float32)
    counts = _counts(mean, uniforms, np.zeros(n))
    expected = stats.poisson.ppf(uniforms.astype(np.float64), mean)
    # Only a uniform within rounding of a CDF step may land on the neighbouring count.
    on_step = np.isclose(stats.poisson.cdf(expected, mean), uniforms, rtol=0, atol=1e-9)
    assert np.all((counts == expected) | on_step)
    assert np.mean(counts != expected) < 1e-4


@pytest.mark.parametrize("mean", [0.3, 7.5, 49.0, 50.0, 400.0])
def test_moments_are_the_poisson_ones(mean):
    rng = np.random.default_rng(int(mean * 10))
    n = 400_000
    counts = _counts(np.full(n, mean), rng.random(n, dtype=np.float32),
                     rng.standard_normal(n, dtype=np.float32))
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    # Poisson: mean = variance = third central moment = mean; sampling errors of n draws.
    assert counts.mean() == pytest.approx(mean, abs=5 * np.sqrt(mean / n))
    assert counts.var() == pytest.approx(mean, rel=5 * np.sqrt(2.0 / n) + 1e-3)
    # The third moment's sampling error is about sqrt(15 mean^3 / n): at these means a normal
    # without the skew term (third moment 0) falls outside four of them.
    third = np.mean((counts - counts.mean()) ** 3)
    assert third == pytest.approx(mean, abs=4 * np.sqrt(15 * mean ** 3 / n) + 0.05)


def test_large_means_follow_the_poisson_distribution():
    # Chi-square of the counts against the Poisson probabilities, bins of >= 50 expected.
    rng = np.random.default_rng(11)
    n, mean = 300_000, 60.0
    counts = _counts(np.full(n, mean), rng.random(n, dtype=np.float32),
                     rng.standard_normal(n, dtype=np.float32))
    edges = np.arange(25, 100)
    observed = np.histogram(counts, np.r_[-0.5, edges + 0.5, np.inf])[0]
    cdf = stats.poisson.cdf(np.r_[edges, np.inf], mean)
    expected = n * np.diff(np.r_[0.0, cdf])
    chi2 = np.sum((observed - expected) ** 2 / expected)
    assert stats.chi2.sf(chi2, len(expected) - 1) > 1e-3


def test_no_light_gives_no_counts_and_the_dark_adds_to_the_light():
    light = np.array([[0.0, 30.0, 500.0]])
    dark = np.array([[0.0, 10.0, 100.0]])
    uniforms = np.full(light.shape, 0.5, np.float32)
    normals = np.zeros(light.shape, np.float32)
    out = np.empty(light.shape, np.float32)
    photon_counts(light, dark, uniforms, normals, out)
    # The median of Poisson(40) is 40; at z = 0 the large branch gives round(600 - 1/6) = 600.
    assert out.tolist() == [[0.0, stats.poisson.ppf(0.5, 40.0), 600.0]]

"""The sigma-clipped combine against the slow reference, against astropy itself, and on edges.

Specialisations compiled here (Numba compile time counts): float64 stacks (fast and exact, parity
at 1e-12 and bit for bit) and float32 stacks into float32 (the pipeline's, parity at 1e-5).
"""

import itertools
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip

import reference
from engine.errors import EngineValueError
from engine.kernels.combine import sigma_clip_combine, sorting_network

SETTINGS = [
    dict(),  # astropy's defaults: sigma 3, maxiters 5, median, std
    dict(cenfunc="mean", maxiters=1),  # ccdproc.combine's clipping
    dict(stdfunc="mad_std", sigma=2.5),
    dict(maxiters=None, sigma=2.0),
    dict(method="median", sigma=2.0),
]


def _stack(rng, shape=(13, 9, 150), dtype=np.float64):
    # Heavy tails (Cauchy) make several clipping iterations and a few values that come back
    # inside the last bounds after an earlier iteration clipped them.
    stack = 100.0 + 5.0 * rng.standard_cauchy(shape)
    stack[rng.random(shape) < 0.01] = np.nan
    stack[:, 0, 0] = np.nan  # a pixel with no finite value
    stack[:, 0, 1] = 42.0  # all equal: std 0, everything kept
    stack[2, 0, 2] = np.inf
    stack[:, 0, 3] = np.nan
    stack[4, 0, 3] = 7.0  # a single finite value
    return stack.astype(dtype)


@pytest.mark.parametrize("settings", SETTINGS)
def test_float64_matches_reference(settings):
    stack = _stack(np.random.default_rng(1))
    got = sigma_clip_combine(stack, counts=True, threads=2, **settings)
    expected, counts = reference.sigma_clip_combine(stack, **settings)
    assert got.data.dtype == np.float64
    np.testing.assert_array_equal(got.counts, counts)
    np.testing.assert_allclose(got.data, expected, rtol=1e-12, atol=0, equal_nan=True)
    assert np.isnan(got.data[0, 0]) and got.counts[0, 0] == 0
    assert got.data[0, 1] == 42.0 and got.counts[0, 1] == 13
    assert got.data[0, 3] == 7.0 and got.counts[0, 3] == 1


def test_values_that_come_back_inside_the_last_bounds():
    # Found by search with the reference: each column's last bounds take back values that an
    # earlier iteration clipped (cenfunc mean, mad_std, asymmetric sigmas, maxiters 3).
    columns = [[-10.9, 0.5, 0.1, 2.1, -50.6, 2.8, -3.6, -0.9, 0.6],
               [-58.9, 4.8, -0.5, -81.3, 8.6, 3.2, 5.9, 3.4, -1.5, 10.8, -6.0]]
    stack = np.full((11, 1, 2), np.nan)
    for i, column in enumerate(columns):
        stack[:len(column), 0, i] = column
    settings = dict(cenfunc="mean", stdfunc="mad_std", maxiters=3)
    got = sigma_clip_combine(stack, sigma_lower=0.8, sigma_upper=2.0, counts=True, **settings)
    for i, column in enumerate(columns):
        lower, upper = reference.sigma_clip_bounds(column, 0.8, 2.0, 3, "mean", "mad_std")
        kept = np.array(column)[(np.array(column) >= lower) & (np.array(column) <= upper)]
        assert got.counts[0, i] == kept.size == 5
        assert got.data[0, i] == pytest.approx(kept.mean(), rel=1e-13)


@pytest.mark.parametrize("settings", SETTINGS[:4])
def test_exact_mode_is_astropy_bit_for_bit(settings):
    stack = _stack(np.random.default_rng(2))
    got = sigma_clip_combine(stack, exact=True, counts=True, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the NaN and inf values
        clipped = sigma_clip(stack, axis=0, **{k: v for k, v in settings.items() if k != "method"})
    np.testing.assert_array_equal(got.counts, (~clipped.mask).sum(axis=0))
    np.testing.assert_array_equal(got.data, np.ma.mean(clipped, axis=0).filled(np.nan))
    median = sigma_clip_combine(stack, exact=True, method="median", **settings).data
    np.testing.assert_array_equal(median, np.ma.median(clipped, axis=0).filled(np.nan))


def test_float32_matches_reference():
    rng = np.random.default_rng(3)
    stack = _stack(rng, dtype=np.float32)
    stack[5, 3, :20] = 65535.0  # saturated values: outliers, clipped
    for settings in SETTINGS[:2]:
        got = sigma_clip_combine(stack, counts=True, **settings)
        expected, counts = reference.sigma_clip_combine(stack, **settings)
        assert got.data.dtype == np.float32
        np.testing.assert_array_equal(got.counts, counts)
        np.testing.assert_allclose(got.data, expected, rtol=1e-6, atol=0, equal_nan=True)
        assert np.all(got.data[3, :20] < 1000.0)  # the saturated values were clipped


def test_one_and_two_frames_and_gaussian_noise():
    rng = np.random.default_rng(4)
    for n in (1, 2):
        stack = rng.normal(0.0, 1.0, (n, 5, 7))
        got = sigma_clip_combine(stack, counts=True)
        np.testing.assert_allclose(got.data, stack.mean(axis=0), rtol=1e-14, atol=1e-15)
        assert np.all(got.counts == n)
    # Pure Gaussian noise: 3-sigma clipping keeps nearly everything; the mean is unbiased.
    stack = rng.normal(10.0, 2.0, (31, 40, 40)).astype(np.float32)
    got = sigma_clip_combine(stack, counts=True)
    assert got.counts.mean() > 30.8
    assert abs(float(got.data.mean()) - 10.0) < 0.01


def test_threads_and_out_arrays():
    stack = _stack(np.random.default_rng(5), dtype=np.float32)
    out = np.empty(stack.shape[1:], np.float32)
    counts = np.empty(stack.shape[1:], np.int32)
    one = sigma_clip_combine(stack, out=out, counts=counts, threads=1)
    assert one.data is out and one.counts is counts
    two = sigma_clip_combine(stack, threads=2)
    np.testing.assert_array_equal(out, two.data)
    # Big enough (9 M values) for two threads to share the work: the same numbers.
    big = np.random.default_rng(6).normal(0.0, 1.0, (9, 1000, 1000)).astype(np.float32)
    np.testing.assert_array_equal(sigma_clip_combine(big, threads=1).data,
                                  sigma_clip_combine(big, threads=2).data)
    # A 2-D stack (n, m) combines to (m,).
    flat = sigma_clip_combine(stack[:, 2, :])
    np.testing.assert_array_equal(flat.data, out[2])


def test_sorting_network_sorts_everything():
    for n in range(1, 11):  # the 0-1 principle: sorting every 0/1 input proves the network
        pairs = sorting_network(n)
        for bits in itertools.product((0, 1), repeat=n):
            values = list(bits)
            for i, j in pairs:
                values[i], values[j] = min(values[i], values[j]), max(values[i], values[j])
            assert values == sorted(values)
    rng = np.random.default_rng(6)
    for n in (17, 30, 64, 100):
        values = rng.normal(size=(n, 50))
        for i, j in sorting_network(n):
            low, high = np.minimum(values[i], values[j]), np.maximum(values[i], values[j])
            values[i], values[j] = low, high
        assert np.all(np.diff(values, axis=0) >= 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="sum"), "method"),
    (dict(cenfunc="mode"), "cenfunc"),
    (dict(stdfunc="var"), "stdfunc"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma_lower=-1.0), "sigma_lower"),
    (dict(maxiters=0), "maxiters"),
    (dict(maxiters=2.5), "maxiters"),
    (dict(dtype=np.int16), "dtype"),
    (dict(out=np.zeros((4, 4))), "out"),
    (dict(counts=np.zeros((3, 4), np.int64)), "counts"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    with pytest.raises(EngineValueError, match=message):
        sigma_clip_combine(np.zeros((5, 3, 4)), **kwargs)


def test_bad_stacks_are_refused():
    with pytest.raises(EngineValueError, match="shape"):
        sigma_clip_combine(np.zeros((0, 3, 4)))
    with pytest.raises(EngineValueError, match="shape"):
        sigma_clip_combine(np.zeros(5))
    with pytest.raises(EngineValueError, match="not supported"):
        sigma_clip_combine(np.zeros((3, 4, 4), np.complex128))
    stack = np.zeros((3, 4, 4))
    with pytest.raises(EngineValueError, match="shares memory"):
        sigma_clip_combine(stack, out=stack[0])

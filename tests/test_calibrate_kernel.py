"""The calibration apply kernel against the slow reference, analytic answers and bad arguments.

Specialisations compiled here (Numba compile time counts): uint16 -> float32 with a uint8 mask
(the pipeline's), float64 -> float64 (parity at 1e-12), int16 -> float32 with a uint16 mask.
"""

import numpy as np
import pytest
import reference

from engine.errors import EngineValueError
from engine.flags import PixelFlag
from engine.kernels.calibrate import calibrate_frames

SHAPE = (3, 37, 45)  # frames, rows, columns: odd sizes leave vector remainders in every loop


def _masters(rng, shape, dtype=np.float64):
    bias = rng.normal(1000.0, 5.0, shape).astype(dtype)
    dark = rng.uniform(0.0, 2.0, shape).astype(dtype)
    flat = rng.uniform(0.8, 1.2, shape).astype(dtype)
    return bias, dark, flat


def _assert_same(fast, slow, rtol, atol):
    data, mask, error = fast
    ref_data, ref_mask, ref_error = slow
    np.testing.assert_array_equal(np.isnan(data), np.isnan(ref_data))
    np.testing.assert_allclose(data, ref_data, rtol=rtol, atol=atol, equal_nan=True)
    if mask is not None:
        np.testing.assert_array_equal(mask, ref_mask)
    if error is not None:
        np.testing.assert_allclose(error, ref_error, rtol=rtol, atol=atol, equal_nan=True)


def test_uint16_to_float32_matches_reference():
    rng = np.random.default_rng(1)
    raw = rng.integers(900, 4000, SHAPE).astype(np.uint16)
    raw[0, 3, 4] = 65535  # saturated
    bias, dark, flat = _masters(rng, SHAPE[1:], np.float32)
    flat[5, 6] = 0.0  # a dead flat pixel: NaN out, flagged
    bad = np.zeros(SHAPE[1:], np.uint8)
    bad[7, 8] = PixelFlag.BAD
    scale = np.array([30.0, 30.0, 30.0])
    kwargs = dict(bias=bias, dark=dark, dark_scale=scale, flat=flat, bad_pixels=bad)
    fast = calibrate_frames(raw, **kwargs, threads=2)
    assert fast.data.dtype == np.float32 and fast.mask.dtype == np.uint8
    assert fast.uncertainty is None
    _assert_same(fast, reference.calibrate_frames(raw, **kwargs), rtol=1e-5, atol=1e-3)
    assert fast.mask[0, 3, 4] == PixelFlag.SATURATED
    assert np.all(fast.mask[:, 5, 6] == PixelFlag.NONFINITE)
    assert np.all(np.isnan(fast.data[:, 5, 6]))
    assert np.all(fast.mask[:, 7, 8] & PixelFlag.BAD)


def test_float64_general_path_matches_reference_to_rounding():
    # Overscan (median), trim, non-linearity, uncertainty and a different dark scale per frame:
    # the staged path, in float64.
    rng = np.random.default_rng(2)
    raw = rng.normal(3000.0, 300.0, (3, 40, 60))
    raw[1, 2, 50] = np.nan  # an overscan value that is not finite is left out
    raw[2, 10, 10] = np.nan  # a raw pixel that is not finite is flagged
    trim = (2, 38, 4, 48)
    shape = (36, 44)
    bias, dark, flat = _masters(rng, shape)
    kwargs = dict(bias=bias, dark=dark, dark_scale=[10.0, 20.0, 60.0], flat=flat,
                  overscan=(50, 58), trim=trim, nonlinearity=[0.5, 1.01, -2e-6, 1e-10],
                  gain=1.7, read_noise=9.0, saturation=5000.0)
    fast = calibrate_frames(raw, **kwargs, dtype=np.float64, uncertainty=True, threads=2)
    slow = reference.calibrate_frames(raw, **kwargs)
    assert fast.data.shape == (3,) + shape
    _assert_same(fast, slow, rtol=1e-12, atol=1e-9)
    assert fast.mask[2, 8, 6] == PixelFlag.NONFINITE
    for method in ("mean", "median"):
        fast = calibrate_frames(raw, overscan=(50, 58), overscan_method=method, trim=trim,
                                dtype=np.float64)
        slow = reference.calibrate_frames(raw, overscan=(50, 58), overscan_method=method,
                                          trim=trim)
        _assert_same(fast, slow, rtol=1e-12, atol=1e-9)


def test_float64_fused_path_and_masters_left_out():
    rng = np.random.default_rng(3)
    raw = rng.normal(2000.0, 100.0, SHAPE)
    bias, dark, flat = _masters(rng, SHAPE[1:])
    for kwargs in (dict(), dict(bias=bias), dict(flat=flat), dict(dark=dark, dark_scale=7.0),
                   dict(bias=bias, dark=dark, dark_scale=[1.0, 2.0, 3.0], flat=flat)):
        fast = calibrate_frames(raw, dtype=np.float64, **kwargs)
        _assert_same(fast, reference.calibrate_frames(raw, **kwargs), rtol=1e-12, atol=1e-9)


def test_recovers_the_signal_analytically():
    # raw = bias + dark * t + signal * flat exactly: the calibration gives the signal back.
    rng = np.random.default_rng(4)
    bias, dark, flat = _masters(rng, SHAPE[1:])
    signal = rng.uniform(0.0, 5000.0, SHAPE)
    t = np.array([5.0, 30.0, 120.0])
    raw = bias + dark * t[:, None, None] + signal * flat
    got = calibrate_frames(raw, bias=bias, dark=dark, dark_scale=t, flat=flat, dtype=np.float64)
    np.testing.assert_allclose(got.data, signal, rtol=0, atol=1e-9)
    assert not got.mask.any()


def test_int16_and_uint16_mask_and_single_frame():
    rng = np.random.default_rng(5)
    raw = rng.integers(-500, 3000, SHAPE[1:]).astype(np.int16)  # one 2-D frame
    raw[0, 0] = 32767
    bad = np.zeros(SHAPE[1:], np.uint16)
    bad[1, 1] = 1 << 9  # a bit beyond uint8, kept by a uint16 mask
    mask = np.zeros(SHAPE[1:], np.uint16)
    got = calibrate_frames(raw, bad_pixels=bad, mask=mask, flat=np.full(SHAPE[1:], 2.0))
    assert got.mask is mask and got.data.shape == SHAPE[1:]
    np.testing.assert_allclose(got.data, raw / 2.0, rtol=1e-6)
    assert mask[0, 0] == PixelFlag.SATURATED and mask[1, 1] == 1 << 9
    assert np.count_nonzero(mask) == 2


def test_uncertainty_is_poisson_plus_read_noise():
    signal = np.full((1, 4, 5), 1000.0)
    got = calibrate_frames(signal + 500.0, bias=np.full((4, 5), 500.0),
                           flat=np.full((4, 5), 0.5), gain=2.0, read_noise=10.0,
                           uncertainty=True, dtype=np.float64)
    expected = np.sqrt(1000.0 / 2.0 + (10.0 / 2.0) ** 2) / 0.5
    np.testing.assert_allclose(got.uncertainty, expected, rtol=1e-14)


def test_outputs_in_place_threads_agree_and_inputs_untouched():
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 65536, SHAPE).astype(np.uint16)
    before = raw.copy()
    bias, dark, flat = _masters(rng, SHAPE[1:], np.float32)
    out = np.empty(SHAPE, np.float32)
    one = calibrate_frames(raw, bias=bias, flat=flat, out=out, threads=1)
    assert one.data is out
    two = calibrate_frames(raw, bias=bias, flat=flat, threads=2)
    np.testing.assert_array_equal(one.data, two.data)
    np.testing.assert_array_equal(one.mask, two.mask)
    np.testing.assert_array_equal(raw, before)
    none = calibrate_frames(raw, bias=bias, flat=flat, mask=False)
    assert none.mask is None
    # Big enough (2.2 M pixels) for two threads to share the work: the same numbers.
    big = rng.integers(0, 65536, (2, 1024, 1100)).astype(np.uint16)
    flat = rng.uniform(0.5, 1.5, (1024, 1100)).astype(np.float32)
    one = calibrate_frames(big, flat=flat, dark=flat, dark_scale=[1.0, 2.0], threads=1)
    two = calibrate_frames(big, flat=flat, dark=flat, dark_scale=[1.0, 2.0], threads=2)
    np.testing.assert_array_equal(one.data, two.data)
    np.testing.assert_array_equal(one.mask, two.mask)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bias=np.zeros((5, 5))), "bias has shape"),
    (dict(dark=np.zeros(SHAPE[1:])), "dark_scale"),
    (dict(dark=np.zeros(SHAPE[1:]), dark_scale=[1.0, np.nan, 1.0]), "finite"),
    (dict(trim=(0, 50, 0, 10)), "outside the raw frame"),
    (dict(trim=(0, 10, 0)), "pairs"),
    (dict(trim=(0, 10, 0, 30), overscan=(20, 40)), "overlap"),
    (dict(trim=(0, 37, 0, 40), overscan=(40, 45), overscan_method="mode"), "overscan_method"),
    (dict(uncertainty=True), "gain"),
    (dict(uncertainty=True, gain=-1.0), "gain"),
    (dict(out=np.zeros(SHAPE, np.float16)), "dtype"),
    (dict(out=np.zeros((3, 37, 44), np.float32)), "shape"),
    (dict(mask=np.zeros(SHAPE, np.int8)), "dtype"),
    (dict(bad_pixels=np.full(SHAPE[1:], 256, np.uint16)), "fit"),
    (dict(nonlinearity=[]), "nonlinearity"),
    (dict(dtype=np.int32), "dtype"),
    (dict(saturation=np.nan), "saturation"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    raw = np.zeros(SHAPE, np.uint16)
    with pytest.raises(EngineValueError, match=message):
        calibrate_frames(raw, **kwargs)


def test_bad_raw_input_and_shared_memory_are_refused():
    with pytest.raises(EngineValueError, match="shape"):
        calibrate_frames(np.zeros((2, 3, 4, 5), np.uint16))
    with pytest.raises(EngineValueError, match="not supported"):
        calibrate_frames(np.zeros((4, 5), np.complex64))
    raw = np.zeros(SHAPE, np.float32)
    with pytest.raises(EngineValueError, match="shares memory"):
        calibrate_frames(raw, out=raw)

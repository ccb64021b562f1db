"""Aperture photometry: the compiled kernel against photutils, the slow references and analytic answers."""

import math

import numpy as np
import pytest

import engine
import reference
from engine.cext import _core, aperture_sums
from engine.flags import MeasurementFlag, PixelFlag


def _star_field(rng, shape=(80, 90), n=12):
    image = rng.normal(50.0, 3.0, size=shape)
    x = rng.uniform(-3, shape[1] + 2, n)
    y = rng.uniform(-3, shape[0] + 2, n)
    jj, ii = np.indices(shape)
    for xs, ys, amp in zip(x, y, rng.uniform(100, 5000, n)):
        image += amp * np.exp(-((ii - xs) ** 2 + (jj - ys) ** 2) / (2 * 1.8 ** 2))
    return image, x, y


def test_sums_equal_photutils_exact_on_random_positions():
    from photutils.aperture import CircularAperture
    from photutils.aperture import aperture_photometry as photutils_photometry

    rng = np.random.default_rng(7)
    image, x, y = _star_field(rng)
    radii = [0.7, 2.5, 6.3, 11.0]
    table = engine.aperture_photometry(image, x, y, radii).to_pydict()
    ours = np.array(table["flux"]).reshape(len(x), len(radii))
    ours_area = np.array(table["area"]).reshape(len(x), len(radii))
    for k, r in enumerate(radii):
        theirs = photutils_photometry(image, CircularAperture(np.c_[x, y], r), method="exact")
        expected = np.asarray(theirs["aperture_sum"], dtype=float)
        on = ~np.isnan(ours[:, k])  # wholly off the image: NaN for us, NaN or 0 for photutils
        np.testing.assert_allclose(ours[on, k], expected[on], rtol=1e-10, atol=1e-9)
        assert np.all(np.isnan(expected[~on]) | (expected[~on] == 0))
        area = CircularAperture(np.c_[x, y], r).area_overlap(image, method="exact")
        np.testing.assert_allclose(ours_area[on, k], np.asarray(area)[on], rtol=1e-10)


def test_sums_equal_slow_reference_float32_and_float64():
    rng = np.random.default_rng(11)
    image, x, y = _star_field(rng, shape=(40, 37), n=6)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        data = image.astype(dtype)
        sums = aperture_sums(data[None], x[None], y[None], [1.5, 4.0])
        for s in range(len(x)):
            for k, r in enumerate([1.5, 4.0]):
                want, area = reference.aperture_sum(data.astype(np.float64), x[s], y[s], r)
                if area == 0:
                    assert math.isnan(sums["sum"][0, s, k])
                    continue
                assert sums["sum"][0, s, k] == pytest.approx(want, rel=tol, abs=tol)
                assert sums["area"][0, s, k] == pytest.approx(area, rel=1e-12, abs=1e-12)


def test_constant_image_gives_pi_r_squared_and_zero_net_flux():
    image = np.full((60, 60), 7.0)
    table = engine.aperture_photometry(image, [30.2], [29.6], [2.0, 5.5], annulus=(9, 14))
    d = table.to_pydict()
    np.testing.assert_allclose(d["area"], [4 * math.pi, 5.5 ** 2 * math.pi], rtol=1e-13)
    np.testing.assert_allclose(d["flux"], [0.0, 0.0], atol=1e-10)
    assert d["background"] == [7.0, 7.0] and d["flags"] == [0, 0]


def test_annulus_background_equals_astropy_sigma_clip_with_neighbours_masked():
    rng = np.random.default_rng(3)
    image = rng.normal(200.0, 8.0, size=(70, 70))
    image[rng.integers(0, 70, 40), rng.integers(0, 70, 40)] += 500.0  # outliers to clip
    x = np.array([35.3, 44.0, 20.5])
    y = np.array([34.8, 30.0, 50.2])
    sums = aperture_sums(image[None], x[None], y[None], [3.0], annulus=(8.0, 15.0),
                         mask_radius=4.0)
    for s in range(3):
        others = [(x[o], y[o]) for o in range(3) if o != s]
        median, std, count = reference.annulus_background(image, x[s], y[s], 8.0, 15.0,
                                                          others, mask_radius=4.0)
        assert sums["background"][0, s] == pytest.approx(median, rel=1e-12)
        assert sums["background_std"][0, s] == pytest.approx(std, rel=1e-10)
        assert sums["background_pixels"][0, s] == count


def test_sigma_clipped_median_matches_astropy():
    from astropy.stats import sigma_clipped_stats

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 101, 1000):
        values = np.concatenate([rng.normal(10, 2, n), rng.uniform(50, 90, n // 10)])
        mean, median, std = sigma_clipped_stats(values, sigma=2.5, maxiters=4)
        ours = engine.cext.sigma_clipped_median(values, sigma=2.5, iterations=4)
        assert ours[0] == pytest.approx(median, rel=1e-13)
        assert ours[1] == pytest.approx(std, rel=1e-10, abs=1e-13)


def test_flags_saturated_bad_edge_off_frame_blended_background():
    image = np.full((50, 50), 10.0)
    pixel_flags = np.zeros(image.shape, dtype=np.uint8)
    pixel_flags[20, 20] = PixelFlag.SATURATED
    pixel_flags[30, 30] = PixelFlag.BAD
    image[30, 30] = 1e9  # a bad pixel's value must not reach the sum
    x = np.array([20.0, 30.0, 1.0, -40.0, 40.0, 42.0, np.nan])
    y = np.array([20.0, 30.0, 25.0, 10.0, 10.0, 10.0, 5.0])
    d = engine.aperture_photometry(image, x, y, [3.0], annulus=(5, 8), pixel_flags=pixel_flags,
                                   blend_radius=3.0).to_pydict()
    flags = [MeasurementFlag(f) for f in d["flags"]]
    assert MeasurementFlag.SATURATED in flags[0]
    assert MeasurementFlag.BAD_PIXEL in flags[1]
    assert d["area"][1] == pytest.approx(9 * math.pi - 1.0)  # the bad pixel's area is left out
    assert d["flux"][1] == pytest.approx(0.0, abs=1e-9)
    assert flags[2] & MeasurementFlag.NEAR_EDGE and not flags[2] & MeasurementFlag.OFF_FRAME
    assert flags[3] & MeasurementFlag.OFF_FRAME and math.isnan(d["flux"][3])
    assert flags[4] & MeasurementFlag.BLENDED and flags[5] & MeasurementFlag.BLENDED
    assert flags[6] & MeasurementFlag.OFF_FRAME and math.isnan(d["flux"][6])
    assert not flags[0] & (MeasurementFlag.BLENDED | MeasurementFlag.NEAR_EDGE)
    # An annulus wholly masked by a neighbour's mask radius has no background.
    lonely = engine.aperture_photometry(image, [25.0, 25.5], [25.0, 25.0], [2.0], annulus=(3, 4),
                                        mask_radius=10.0).to_pydict()
    assert all(f & MeasurementFlag.BACKGROUND_FAILED for f in lonely["flags"])


def test_nan_pixels_are_left_out_and_flagged():
    image = np.full((30, 30), 5.0)
    image[15, 15] = np.nan
    d = engine.aperture_photometry(image, [15.0], [15.0], [2.0]).to_pydict()
    assert d["flags"][0] & MeasurementFlag.BAD_PIXEL
    assert d["flux"][0] == pytest.approx(5.0 * (4 * math.pi - 1.0))


def test_threads_give_identical_results():
    rng = np.random.default_rng(9)
    frames = rng.normal(100, 10, size=(4, 128, 128)).astype(np.float32)
    x = rng.uniform(0, 128, (4, 300))
    y = rng.uniform(0, 128, (4, 300))
    one = aperture_sums(frames, x, y, [2, 4, 6], annulus=(8, 12), mask_radius=3, threads=1)
    two = aperture_sums(frames, x, y, [2, 4, 6], annulus=(8, 12), mask_radius=3, threads=2)
    many = aperture_sums(frames, x, y, [2, 4, 6], annulus=(8, 12), mask_radius=3, threads=7)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
        np.testing.assert_array_equal(one[key], many[key])


def test_flux_errors_predict_the_scatter():
    # A constant star on a Poisson sky, measured in electrons, over many noise draws.
    rng = np.random.default_rng(21)
    gain, sky, read_noise = 2.0, 300.0, 6.0
    jj, ii = np.indices((41, 41))
    star = 20000.0 * np.exp(-((ii - 20.3) ** 2 + (jj - 19.8) ** 2) / (2 * 1.5 ** 2)) / (2 * np.pi * 1.5 ** 2)
    electrons = star + sky
    frames = (rng.poisson(electrons, size=(400, 41, 41)) + rng.normal(0, read_noise, (400, 41, 41))) / gain
    x = np.full((400, 1), 20.3)
    y = np.full((400, 1), 19.8)
    d = engine.aperture_photometry_frames(frames, x, y, [5.0], annulus=(9, 18), gain=gain).to_pydict()
    achieved = np.std(d["flux"])
    predicted = np.median(d["flux_err"])
    assert achieved == pytest.approx(predicted, rel=0.1)
    assert np.mean(d["flux"]) == pytest.approx(np.sum(star * (np.hypot(ii - 20.3, jj - 19.8) < 5)), rel=0.02)


def test_flag_values_agree_between_python_and_cpp():
    for name, value in _core.MEASUREMENT_FLAGS.items():
        assert MeasurementFlag[name] == value
    for name, value in _core.PIXEL_FLAGS.items():
        assert PixelFlag[name] == value


@pytest.mark.parametrize("kwargs, message", [
    (dict(image=np.zeros(5), x=[1], y=[1], radii=[1]), "2-d"),
    (dict(image=np.zeros((5, 5)), x=[1, 2], y=[1], radii=[1]), "equal length"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[0.0]), "radii"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[np.nan]), "radii"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[1], annulus=(5, 3)), "annulus"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[1], gain=0.0), "gain"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[1], pixel_flags=np.zeros((4, 4))), "pixel_flags"),
    (dict(image=np.zeros((5, 5)), x=[1], y=[1], radii=[1], threads=0), "threads"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    with pytest.raises(engine.EngineValueError, match=message):
        engine.aperture_photometry(**kwargs)


def test_binding_refuses_mismatched_outputs():
    frames = np.zeros((1, 10, 10))
    xy = np.zeros((1, 3))
    good = dict(sum=np.empty((1, 3, 1)), area=np.empty((1, 3, 1)),
                flags=np.empty((1, 3, 1), dtype=np.uint32), background=np.empty((1, 3)),
                background_std=np.empty((1, 3)), background_pixels=np.empty((1, 3), dtype=np.int64))
    args = (frames, None, xy, xy, np.array([1.0]), 0.0, 0.0, 3.0, 5, 0.0, 0.0, 5, 1)
    _core.aperture_photometry(*args, **good)
    with pytest.raises(ValueError):
        _core.aperture_photometry(*args, **{**good, "sum": np.empty((1, 2, 1))})
    with pytest.raises(ValueError):
        _core.aperture_photometry(frames, np.zeros((1, 10, 9), dtype=np.uint8), *args[2:], **good)

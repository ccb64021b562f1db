"""The PSF core (engine/cext/psf.py): pixel integrals against a slow quadrature, the
independent renderer (engine.kernels.psf) and analytic answers; fits against
scipy.optimize.least_squares (tests/reference.py); flags, threads and bad inputs."""

import math

import numpy as np
import pytest
import reference

from engine.cext import _core
from engine.cext.psf import psf_fit, psf_fit_shape, psf_pixel_grid
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.kernels.psf import add_stars
from engine.psf import (PSFModel, fit_psf_model, parameters_from_shape, psf_photometry,
                        shape_from_parameters)

# (model, fwhm, beta, ellipticity, angle): round and elliptical, wide and undersampled, shallow
# and steep wings.
PROFILES = [
    ("gaussian", 3.0, 2.5, 0.0, 0.0),
    ("gaussian", 1.8, 2.5, 0.3, 1.1),
    ("moffat", 3.0, 2.5, 0.0, 0.0),
    ("moffat", 2.4, 3.5, 0.25, -0.6),
    ("moffat", 5.0, 1.8, 0.1, 0.3),
    ("moffat", 1.6, 8.0, 0.4, 2.0),
]


def _shape(model, fwhm, beta, ellipticity, angle):
    return shape_from_parameters(model, fwhm, beta, ellipticity, angle)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p[0]}-{p[1]}-{p[3]}")
def test_pixel_integrals_equal_fixed_high_order_quadrature(profile):
    model = profile[0]
    shape = _shape(*profile)
    ours = psf_pixel_grid(model, shape, 12.3, 11.6, (25, 26), allow_separable=False)
    jj, ii = np.mgrid[0:25, 0:26]
    slow = reference.psf_pixels(model, shape, 12.3, 11.6, ii.ravel(), jj.ravel()).reshape(25, 26)
    # Each pixel to 1e-10 of its value or 1e-13 of the flux, whichever is larger.
    np.testing.assert_allclose(ours, slow, rtol=1e-10, atol=1e-13)


# The renderer aims at 1e-9 per pixel; for the last, undersampled steep profile its own rule falls
# short (~5e-8 at the core, where the slow quadrature above confirms the core's values).
@pytest.mark.parametrize("profile", PROFILES[:-1], ids=lambda p: f"{p[0]}-{p[1]}-{p[3]}")
def test_pixel_integrals_equal_the_renderer(profile):
    model, fwhm, beta, ellipticity, angle = profile
    ours = psf_pixel_grid(model, _shape(*profile), 20.4, 19.7, (41, 41))
    rendered = np.zeros((41, 41))
    add_stars(rendered, [20.4], [19.7], [1.0], fwhm, profile=model, beta=beta,
              ellipticity=ellipticity, angle=angle, radius=60.0, threads=1)
    np.testing.assert_allclose(ours, rendered, rtol=0, atol=2e-9 * ours.max())


def test_profiles_are_normalised_to_one():
    # A Gaussian, and a Moffat steep enough to keep all but ~1e-13 of its flux on the grid.
    for model, shape in (("gaussian", (0.6, 0.1, 0.4, 0.0)), ("gaussian", (0.3, 0.0, 0.5, 0.0)),
                         ("moffat", (0.05, -0.01, 0.07, 8.0))):
        total = psf_pixel_grid(model, shape, 80.3, 79.6, (161, 161)).sum()
        assert total == pytest.approx(1.0, abs=1e-11)
    # A shallow Moffat: what the grid misses is the analytic flux outside it, bracketed by the
    # circles inscribed in and circumscribing the grid: (1 + (r / alpha)^2)^(1 - beta).
    alpha, beta, half = 2.0, 2.5, 80.5
    total = psf_pixel_grid("moffat", (alpha ** -2, 0, alpha ** -2, beta), 80.0, 80.0, (161, 161)).sum()
    outside = [(1 + (r / alpha) ** 2) ** (1 - beta) for r in (half, half * math.sqrt(2))]
    assert 1 - outside[0] < total < 1 - outside[1]


def test_separable_gaussian_equals_quadrature():
    shape = (0.45, 0.0, 0.9, 0.0)
    exact = psf_pixel_grid("gaussian", shape, 7.3, 8.9, (18, 15))
    quadrature = psf_pixel_grid("gaussian", shape, 7.3, 8.9, (18, 15), allow_separable=False)
    np.testing.assert_allclose(exact, quadrature, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_jacobian_equals_central_differences(model):
    p = np.array([6.3, 5.8, 0.31, 0.06, 0.22, 2.7])  # x0, y0, a, b, c, beta
    _, jac = psf_pixel_grid(model, p[2:], p[0], p[1], (13, 12), jacobian=True)
    for k in range(6 if model == "moffat" else 5):
        h = 1e-5 * max(abs(p[k]), 0.1)
        up, down = p.copy(), p.copy()
        up[k] += h
        down[k] -= h
        numeric = (psf_pixel_grid(model, up[2:], up[0], up[1], (13, 12), allow_separable=False)
                   - psf_pixel_grid(model, down[2:], down[0], down[1], (13, 12), allow_separable=False)) / (2 * h)
        np.testing.assert_allclose(jac[k], numeric, rtol=0, atol=1e-7 * np.abs(numeric).max())
    if model == "gaussian":
        assert np.all(jac[5] == 0)


@pytest.mark.parametrize("profile", PROFILES[1:4], ids=lambda p: f"{p[0]}-{p[1]}-{p[3]}")
def test_shape_parameters_round_trip(profile):
    model, fwhm, beta, ellipticity, angle = profile
    back = parameters_from_shape(model, _shape(*profile))
    assert back["fwhm"] == pytest.approx(fwhm, rel=1e-12)
    assert back["ellipticity"] == pytest.approx(ellipticity, abs=1e-12)
    if ellipticity > 0:
        assert math.remainder(back["angle"] - angle, math.pi) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("profile", PROFILES[:-1], ids=lambda p: f"{p[0]}-{p[1]}-{p[3]}")
def test_noiseless_rendered_star_recovers_its_flux(profile):
    model, fwhm, beta, ellipticity, angle = profile
    image = np.full((64, 64), 30.0)
    add_stars(image, [31.3], [30.8], [5e4], fwhm, profile=model, beta=beta,
              ellipticity=ellipticity, angle=angle, tolerance=1e-12, threads=1)
    shape = _shape(*profile)
    box = int(math.ceil(3 * fwhm))
    fixed = psf_fit(image[None], [[31.3]], [[30.8]], shape, model=model, box=box, read_noise=3.0,
                    tolerance=1e-16)
    assert fixed["flux"][0, 0] == pytest.approx(5e4, rel=1e-8)
    assert fixed["background"][0, 0] == pytest.approx(30.0, rel=1e-8)
    moved = psf_fit(image[None], [[31.6]], [[30.5]], shape, model=model, box=box, read_noise=3.0,
                    fit_positions=True, tolerance=1e-16, max_iterations=200)
    assert moved["flux"][0, 0] == pytest.approx(5e4, rel=1e-8)
    assert moved["x"][0, 0] == pytest.approx(31.3, abs=1e-8)
    assert moved["y"][0, 0] == pytest.approx(30.8, abs=1e-8)
    assert moved["flags"][0, 0] == 0


def _noisy_field(rng, model, background):
    """Three isolated stars and a blended pair, elliptical PSF, Poisson + read noise."""
    x = np.array([9.3, 30.2, 33.1, 38.4, 24.9])
    y = np.array([10.1, 20.4, 22.6, 36.5, 37.2])
    flux = np.array([2e4, 1.5e4, 8e3, 5e3, 1.2e4])
    shape = _shape(model, 3.0, 2.7, 0.15, 0.7)
    sky = 80.0
    image = np.full((46, 48), sky)
    if background == "plane":
        jj, ii = np.indices(image.shape)
        image += 0.4 * ii - 0.3 * jj
    for s in range(x.size):
        image += flux[s] * psf_pixel_grid(model, shape, x[s], y[s], image.shape)
    image = rng.poisson(image) + rng.normal(0.0, 4.0, image.shape)
    if background == "none":
        image -= sky
    return image, x + rng.normal(0, 0.2, x.size), y + rng.normal(0, 0.2, x.size), np.tile(shape, (x.size, 1))


@pytest.mark.parametrize("model, background, fit_positions, model_variance", [
    ("gaussian", "constant", False, False),
    ("gaussian", "none", True, False),
    ("moffat", "plane", True, False),
    ("moffat", "constant", False, True),
])
def test_fits_equal_least_squares_reference(model, background, fit_positions, model_variance):
    rng = np.random.default_rng(17)
    image, x, y, shapes = _noisy_field(rng, model, background)
    ours = psf_fit(image[None], x[None], y[None], shapes, model=model, box=4, background=background,
                   fit_positions=fit_positions, read_noise=4.0, model_variance=model_variance,
                   max_shift=5.0, tolerance=1e-12, threads=1)
    slow = reference.psf_photometry(image, x, y, shapes, model=model, box=4, background=background,
                                    fit_positions=fit_positions, read_noise=4.0,
                                    model_variance=model_variance)
    assert np.all(ours["flags"] == 0)
    assert list(ours["group"][0]) == [0, 1, 1, 3, 4]  # the pair is fitted jointly
    for key in ("flux", "flux_err", "chi2_reduced"):
        np.testing.assert_allclose(ours[key][0], slow[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(ours["background"][0], slow["background"], rtol=1e-6, atol=1e-5)
    if fit_positions:
        np.testing.assert_allclose(ours["x"][0], slow["x"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours["y"][0], slow["y"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours["x_err"][0], slow["x_err"], rtol=1e-6)
    else:
        assert np.all(np.isnan(ours["x_err"]))
        np.testing.assert_array_equal(ours["x"][0], x)


def test_default_tolerance_stops_within_a_thousandth_of_the_errors():
    rng = np.random.default_rng(19)
    image, x, y, shapes = _noisy_field(rng, "moffat", "constant")
    ours = psf_fit(image[None], x[None], y[None], shapes, model="moffat", box=4,
                   fit_positions=True, read_noise=4.0, max_shift=5.0)
    slow = reference.psf_photometry(image, x, y, shapes, model="moffat", box=4,
                                    fit_positions=True, read_noise=4.0)
    assert np.all(np.abs(ours["flux"][0] - slow["flux"]) < 2e-3 * slow["flux_err"])
    assert np.all(np.abs(ours["x"][0] - slow["x"]) < 2e-3 * slow["x_err"])


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_shape_fit_equals_least_squares_reference(model):
    rng = np.random.default_rng(23)
    x = np.array([8.3, 33.2, 11.9])
    y = np.array([9.1, 12.4, 32.7])
    truth = _shape(model, 3.2, 3.0, 0.1, 0.3)
    image = np.full((44, 44), 50.0)
    for s, f in enumerate([3e4, 2e4, 4e4]):
        image += f * psf_pixel_grid(model, truth, x[s], y[s], image.shape)
    image = rng.poisson(image).astype(np.float64)
    start = _shape(model, 2.8, 2.5, 0.0, 0.0)
    ours = psf_fit_shape(image[None], (x + 0.1)[None], (y - 0.1)[None], start, model=model, box=5,
                         reject=0.0, tolerance=1e-14)
    slow_shape, slow_flux = reference.psf_fit_shape(image, x + 0.1, y - 0.1, start, model=model, box=5)
    assert ours["flags"][0] == 0 and ours["stars_used"][0] == 3
    coefficients = ours["coefficients"][0]
    np.testing.assert_allclose(coefficients[[0, 3, 6]], slow_shape[:3], rtol=0, atol=1e-7 * slow_shape[0])
    if model == "moffat":
        assert coefficients[9] == pytest.approx(slow_shape[3], rel=1e-6)
    np.testing.assert_allclose(ours["flux"][0], slow_flux, rtol=1e-6)
    assert np.all(coefficients[[1, 2, 4, 5, 7, 8]] == 0)  # a constant PSF was asked for


def test_threads_give_identical_results():
    rng = np.random.default_rng(4)
    shape = _shape("moffat", 2.8, 2.5, 0.1, 0.4)
    x = rng.uniform(-2, 98, (3, 150))  # crowded: many groups, some off the frame
    y = rng.uniform(-2, 98, (3, 150))
    frames = rng.normal(100.0, 10.0, size=(3, 96, 96))
    for f in range(3):
        add_stars(frames[f], x[f] + 0.3, y[f] - 0.2, 10 ** rng.uniform(2, 4.5, 150), 2.8,
                  profile="moffat", beta=2.5, ellipticity=0.1, angle=0.4, radius=12.0, threads=1)
    frames = frames.astype(np.float32)
    runs = [psf_fit(frames, x, y, shape, model="moffat", box=3, fit_positions=True,
                    read_noise=5.0, max_group=12, threads=t) for t in (1, 2, 5)]
    for other in runs[1:]:
        for key in runs[0]:
            np.testing.assert_array_equal(runs[0][key], other[key], err_msg=key)
    flags = runs[0]["flags"]
    assert np.any(flags & MeasurementFlag.BLENDED)  # groups beyond max_group were cut
    assert np.any(flags & MeasurementFlag.OFF_FRAME)
    assert np.sum(np.isfinite(runs[0]["x_err"])) > 100  # most positions were fitted


def test_calls_from_several_python_threads_equal_serial_calls():
    # The core releases the GIL: concurrent calls on different inputs run side by side and give
    # the serial results.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    shape = _shape("gaussian", 2.6, 2.5, 0.2, 0.3)
    jobs = []
    for _ in range(4):
        image = rng.normal(20.0, 3.0, (1, 80, 80))
        x, y = rng.uniform(5, 75, (1, 40)), rng.uniform(5, 75, (1, 40))
        for s in range(40):
            image[0] += 3e3 * psf_pixel_grid("gaussian", shape, x[0, s], y[0, s], (80, 80))
        jobs.append((image, x, y))

    def run(job):
        return psf_fit(job[0], job[1], job[2], shape, model="gaussian", box=3, fit_positions=True,
                       threads=1)

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs))
    for a, b in zip(serial, concurrent):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_float32_input_equals_float64_of_the_same_values():
    rng = np.random.default_rng(8)
    image = rng.normal(50.0, 5.0, (40, 40)).astype(np.float32)
    shape = _shape("gaussian", 3.0, 2.5, 0.2, 0.5)
    a = psf_fit(image[None], [[15.2, 24.9]], [[20.1, 19.3]], shape, model="gaussian", box=4, fit_positions=True)
    b = psf_fit(image.astype(np.float64)[None], [[15.2, 24.9]], [[20.1, 19.3]], shape,
                model="gaussian", box=4, fit_positions=True)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_flags_off_frame_edges_pixels_and_failures():
    shape = _shape("gaussian", 2.5, 2.5, 0.0, 0.0)
    image = np.full((40, 40), 10.0)
    for xs, ys in ((10.0, 10.0), (30.0, 10.0), (1.0, 30.0), (30.0, 30.0)):
        image += 5000.0 * psf_pixel_grid("gaussian", shape, xs, ys, image.shape)
    pixel_flags = np.zeros(image.shape, dtype=np.uint8)
    pixel_flags[10, 10] = PixelFlag.SATURATED
    image[10, 10] = 1e30  # a saturated pixel is left out of the fit
    pixel_flags[11, 30] = PixelFlag.COSMIC_RAY
    image[11, 30] = np.nan
    pixel_flags[26:35, 26:35] = PixelFlag.BAD  # every pixel of the fourth star's box
    x = np.array([10.0, 30.0, 1.0, 30.0, np.nan, 1e300, -0.51, 20.0])
    y = np.array([10.0, 10.0, 30.0, 30.0, 5.0, 5.0, 5.0, np.inf])
    r = psf_fit(image[None], x[None], y[None], shape, model="gaussian", box=4,
                pixel_flags=pixel_flags[None])
    flags = [MeasurementFlag(int(f)) for f in r["flags"][0]]
    flux = r["flux"][0]
    assert flags[0] == MeasurementFlag.SATURATED and flux[0] == pytest.approx(5000.0, rel=1e-9)
    assert flags[1] == MeasurementFlag.BAD_PIXEL and flux[1] == pytest.approx(5000.0, rel=1e-9)
    assert r["pixels"][0, 1] == 80
    assert flags[2] == MeasurementFlag.NEAR_EDGE and flux[2] == pytest.approx(5000.0, rel=1e-6)
    assert flags[3] & MeasurementFlag.FIT_FAILED and math.isnan(flux[3])
    for s in (4, 5, 6, 7):
        assert flags[s] == MeasurementFlag.OFF_FRAME and math.isnan(flux[s]) and r["group"][0, s] == -1
    # A position that runs into its bound; a fit stopped at its iteration limit.
    bounded = psf_fit(image[None], [[10.9]], [[10.0]], shape, model="gaussian", box=4,
                      fit_positions=True, max_shift=0.3)
    assert bounded["flags"][0, 0] & MeasurementFlag.CENTROID_FAILED
    assert bounded["x"][0, 0] == pytest.approx(10.6)
    stopped = psf_fit(image[None], [[30.4]], [[10.3]], shape, model="gaussian", box=4,
                      fit_positions=True, max_iterations=1)
    assert stopped["flags"][0, 0] & MeasurementFlag.FIT_NOT_CONVERGED
    assert np.isfinite(stopped["flux"][0, 0])


def test_coincident_stars_fail_without_crashing():
    image = np.full((30, 30), 10.0)
    shape = _shape("moffat", 3.0, 2.5, 0.0, 0.0)
    image += 1e4 * psf_pixel_grid("moffat", shape, 15.0, 15.0, image.shape)
    for fit_positions in (False, True):
        r = psf_fit(image[None], [[15.0, 15.0]], [[15.0, 15.0]], shape, model="moffat", box=4,
                    fit_positions=fit_positions)
        assert np.all(r["flags"][0] & MeasurementFlag.FIT_FAILED)
        assert np.all(np.isnan(r["flux"][0]))


def test_flag_values_agree_between_python_and_cpp():
    for name in ("FIT_FAILED", "FIT_NOT_CONVERGED", "CENTROID_FAILED"):
        assert name in _core.MEASUREMENT_FLAGS
    for name, value in _core.MEASUREMENT_FLAGS.items():
        assert MeasurementFlag[name] == value


_IMAGE = np.zeros((20, 20))


@pytest.mark.parametrize("call, message", [
    (lambda: psf_photometry(np.zeros(5), [1], [1], psf=PSFModel.from_parameters()), "2-d"),
    (lambda: psf_photometry(_IMAGE, [1, 2], [1], psf=PSFModel.from_parameters()), "equal length"),
    (lambda: psf_photometry(_IMAGE, [1], [1], model="airy"), "model"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), box=0), "box"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), box=2.5), "box"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), background="sky"), "background"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), gain=0.0), "gain"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), read_noise=-1), "read_noise"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), threads=0), "threads"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(), max_shift=np.nan), "max_shift"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf=PSFModel.from_parameters(),
                            pixel_flags=np.zeros((4, 4))), "pixel_flags"),
    (lambda: psf_photometry(_IMAGE, [1], [1], psf="moffat"), "PSFModel"),
    (lambda: PSFModel.from_parameters("moffat", fwhm=-1.0), "fwhm"),
    (lambda: PSFModel.from_parameters("moffat", beta=1.0), "beta"),
    (lambda: PSFModel("moffat", np.zeros(10)), "shape"),
    (lambda: fit_psf_model(_IMAGE, [10.0], [10.0], fwhm=3.0), "no moffat PSF"),
    (lambda: psf_fit(_IMAGE[None], [[1.0]], [[1.0]], (1.0, 2.0, 1.0, 2.5)), "shape"),
    (lambda: psf_fit(_IMAGE[None], [[1.0]], [[1.0]], np.ones((2, 4))), "shapes"),
    (lambda: psf_pixel_grid("moffat", (1.0, 0.0, 1.0, 0.5), 0, 0, (3, 3)), "beta"),
    (lambda: psf_fit_shape(_IMAGE[None], [[1.0]], [[1.0]], (1.0, 0.0, 1.0, 2.5), field=(0, 0, 0, 1)), "x_scale"),
])
def test_bad_arguments_raise_value_errors(call, message):
    with pytest.raises(EngineValueError, match=message):
        call()


def test_binding_refuses_mismatched_outputs():
    frames = np.zeros((1, 10, 10))
    xy = np.full((1, 2), 5.0)
    shapes = np.tile([1.0, 0.0, 1.0, 2.5], (1, 2, 1))
    shape2 = (1, 2)

    def outputs(**changes):
        out = dict(flux=np.empty(shape2), flux_err=np.empty(shape2), x_fit=np.empty(shape2),
                   y_fit=np.empty(shape2), x_err=np.empty(shape2), y_err=np.empty(shape2),
                   background_out=np.empty(shape2), chi2_reduced=np.empty(shape2),
                   iterations=np.empty(shape2, dtype=np.int32), pixels=np.empty(shape2, dtype=np.int64),
                   group_pixels=np.empty(shape2, dtype=np.int64), group=np.empty(shape2, dtype=np.int64),
                   flags=np.empty(shape2, dtype=np.uint32))
        out.update(changes)
        return out

    args = (frames, None, xy, xy, shapes, 1, 2, 1, False, 1.0, 3.0, 1.0, 0.0, False, 10, 1e-10, 50, 1)
    _core.psf_photometry(*args, **outputs())
    with pytest.raises(ValueError):
        _core.psf_photometry(*args, **outputs(flux=np.empty((1, 3))))
    with pytest.raises((ValueError, TypeError)):  # a wrong dtype is refused, never converted
        _core.psf_photometry(*args, **outputs(flags=np.empty(shape2, dtype=np.int32)))
    with pytest.raises(ValueError):  # an invalid shape never reaches the core
        _core.psf_photometry(frames, None, xy, xy, np.tile([1.0, 2.0, 1.0, 2.5], (1, 2, 1)),
                             *args[5:], **outputs())
    with pytest.raises(ValueError):
        _core.psf_photometry(frames, np.zeros((1, 10, 9), dtype=np.uint8), *args[2:], **outputs())

"""The pixel-integrated PSF kernel against adaptive quadrature and against analytic answers."""

import math

import numpy as np
import pytest
from scipy.special import erf

import reference
from engine.errors import EngineValueError
from engine.kernels import psf


@pytest.mark.parametrize("kind, fwhm, beta, ellipticity, angle, x0, y0", [
    ("moffat", 2.4, 2.5, 0.0, 0.0, 5.3, 4.8),
    ("moffat", 1.3, 3.7, 0.25, 0.6, 5.0, 5.0),      # undersampled and elliptical, on a centre
    ("moffat", 4.0, 1.8, 0.1, 2.0, 4.5, 5.5),       # on a pixel corner, heavy wings
    ("gaussian", 1.8, 0.0, 0.0, 0.0, 5.2, 4.9),
    ("gaussian", 2.6, 0.0, 0.35, -0.7, 4.7, 5.4),
])
def test_matches_adaptive_quadrature(kind, fwhm, beta, ellipticity, angle, x0, y0):
    shape = (11, 11)
    fast = np.zeros(shape)
    psf.add_stars(fast, [x0], [y0], [1.0], fwhm, profile=kind, beta=beta or 2.5,
                  ellipticity=ellipticity, angle=angle, radius=50.0)
    slow = reference.psf_kernel_pixel_grid(kind, shape, x0, y0, 1.0, fwhm, beta or 2.5, ellipticity,
                                    angle)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=2e-10)


def test_circular_gaussian_equals_erf_products():
    # A circular Gaussian is separable: each pixel is a product of two erf differences.
    x0, y0, fwhm = 7.37, 6.81, 2.2
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    grid = psf.gaussian_stamp((15, 16), x0, y0, 1000.0, fwhm, radius=40.0)

    def edges(n, c):
        e = (np.arange(n + 1) - 0.5 - c) / (math.sqrt(2.0) * sigma)
        return 0.5 * np.diff(erf(e))

    exact = 1000.0 * np.outer(edges(15, y0), edges(16, x0))
    np.testing.assert_allclose(grid, exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["moffat", "gaussian"])
@pytest.mark.parametrize("fwhm", [0.9, 2.0, 3.5, 6.0])
@pytest.mark.parametrize("beta, ellipticity", [(2.5, 0.0), (3.0, 0.3), (4.5, 0.15)])
def test_flux_summed_over_a_large_box_is_the_flux(kind, fwhm, beta, ellipticity):
    if kind == "moffat":
        radius = float(psf.moffat_box_radius(fwhm, beta, ellipticity, tolerance=1e-7))
        outside = 1e-7  # at most this much lies beyond the box
    else:
        radius = float(psf.gaussian_box_radius(fwhm, ellipticity, tolerance=1e-12))
        outside = 0.0
    n = int(2 * radius) + 5
    image = np.zeros((n, n))
    psf.add_stars(image, [n / 2 + 0.31], [n / 2 - 0.27], [5000.0], fwhm, profile=kind, beta=beta,
                  ellipticity=ellipticity, angle=0.4, radius=radius)
    assert image.sum() / 5000.0 == pytest.approx(1.0, abs=1e-6 + outside)


def test_moments_give_position_and_width():
    x0, y0, fwhm = 20.3, 18.6, 3.0
    image = psf.gaussian_stamp((40, 42), x0, y0, 1.0, fwhm, radius=20.0)
    yy, xx = np.mgrid[0:40, 0:42]
    total = image.sum()
    cx = (image * xx).sum() / total
    cy = (image * yy).sum() / total
    assert cx == pytest.approx(x0, abs=1e-9) and cy == pytest.approx(y0, abs=1e-9)
    # Pixel integration adds the variance of a unit box, 1/12, to sigma^2.
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    var_x = (image * (xx - cx) ** 2).sum() / total
    assert var_x == pytest.approx(sigma ** 2 + 1.0 / 12.0, rel=1e-7)


def test_ellipticity_and_angle_turn_the_profile():
    # A profile elongated along +x, turned by 90 degrees, is the transposed image.
    a = psf.moffat_stamp((31, 31), 15.0, 15.0, 1.0, 3.0, 3.0, ellipticity=0.4, angle=0.0)
    b = psf.moffat_stamp((31, 31), 15.0, 15.0, 1.0, 3.0, 3.0, ellipticity=0.4,
                         angle=math.pi / 2.0)
    np.testing.assert_allclose(a, b.T, atol=1e-12)
    assert a[15, 20] > a[20, 15]  # longer along x


def test_encircled_energy_formula_and_image():
    from scipy.integrate import quad

    from engine.cext import circle_overlap_grid

    fwhm, beta = 3.2, 2.8
    for r in (1.0, 4.0, 11.0):
        radial, _ = quad(lambda t: 2 * math.pi * t * reference.psf_kernel_profile(
            "moffat", t, 0.0, 0.0, 0.0, 1.0, fwhm, beta), 0.0, r, epsabs=1e-13)
        assert float(psf.moffat_encircled_energy(r, fwhm, beta)) == pytest.approx(radial, rel=1e-10)
    image = psf.moffat_stamp((81, 81), 40.0, 40.0, 1.0, fwhm, beta, radius=40.0)
    for r in (6.0, 11.0, 15.0):
        # Integrating over pixels blurs the profile slightly; far out the two agree.
        inside = (circle_overlap_grid(40.0, 40.0, r, image.shape) * image).sum()
        assert inside == pytest.approx(float(psf.moffat_encircled_energy(r, fwhm, beta)),
                                       rel=0.1 / r ** 2)


def test_stars_add_and_thread_count_does_not_matter():
    rng = np.random.default_rng(4)
    x = rng.uniform(-10, 140, 60)
    y = rng.uniform(-10, 110, 60)
    flux = rng.uniform(10, 1e5, 60)
    fwhm = rng.uniform(1.5, 4.0, 60)
    one = psf.add_stars(np.zeros((100, 130)), x, y, flux, fwhm, beta=2.7, threads=1)
    two = psf.add_stars(np.zeros((100, 130)), x, y, flux, fwhm, beta=2.7, threads=2)
    np.testing.assert_array_equal(one, two)
    separate = np.zeros((100, 130))
    for k in range(60):
        psf.add_stars(separate, x[k:k + 1], y[k:k + 1], flux[k:k + 1], fwhm[k], beta=2.7)
    np.testing.assert_allclose(one, separate, rtol=1e-12, atol=1e-9)


def test_boxes_clip_at_the_edges_and_far_stars_add_nothing():
    image = np.zeros((20, 20))
    psf.add_stars(image, [-500.0, 30.0], [5.0, 700.0], [1e6, 1e6], 2.0, radius=10.0)
    assert not image.any()
    psf.add_stars(image, [-0.5], [10.0], [1.0], 2.0, profile="gaussian", radius=15.0)
    assert image.sum() == pytest.approx(0.5, abs=1e-7)  # half of it lies right of x = -0.5


def test_negative_flux_subtracts_a_model():
    model = psf.moffat_stamp((25, 25), 12.2, 11.7, 300.0, 2.5, 3.0)
    psf.add_stars(model, [12.2], [11.7], [-300.0], 2.5, beta=3.0)
    assert np.abs(model).max() < 1e-12


def test_default_box_holds_all_but_tolerance():
    fwhm, beta = 2.5, 2.5
    r = float(psf.moffat_box_radius(fwhm, beta, tolerance=1e-3))
    assert 1.0 - float(psf.moffat_encircled_energy(r, fwhm, beta)) == pytest.approx(1e-3, rel=1e-9)
    image = psf.moffat_stamp((151, 151), 75.0, 75.0, 1.0, fwhm, beta, tolerance=1e-3)
    assert 1.0 - 2e-3 < image.sum() < 1.0 - 1e-4 * 0  # box includes the circle's corners


def test_accuracy_argument_trades_nodes_for_precision():
    exact = psf.moffat_stamp((21, 21), 10.4, 9.8, 1.0, 2.2, 2.5, radius=10.0)
    rough = np.zeros((21, 21))
    psf.add_stars(rough, [10.4], [9.8], [1.0], 2.2, beta=2.5, radius=10.0, accuracy=1e-5)
    np.testing.assert_allclose(rough, exact, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(fwhm=0.0),
    dict(fwhm=-1.0),
    dict(beta=1.0),
    dict(ellipticity=1.0),
    dict(ellipticity=-0.1),
    dict(radius=0.0),
    dict(x=[np.nan]),
    dict(y=[1.0, 2.0]),
    dict(profile="lorentz"),
    dict(tolerance=0.0),
    dict(accuracy=1.0),
])
def test_bad_arguments_raise(kwargs):
    args = dict(x=[3.0], y=[3.0], flux=[1.0], fwhm=2.0)
    args.update(kwargs)
    image = np.zeros((7, 7))
    with pytest.raises(EngineValueError):
        psf.add_stars(image, **args)


@pytest.mark.parametrize("image", [
    np.zeros((7, 7), dtype=np.float32),
    np.zeros((7, 14))[:, ::2],
    np.zeros(49),
])
def test_bad_images_raise(image):
    with pytest.raises(EngineValueError):
        psf.add_stars(image, [3.0], [3.0], [1.0], 2.0)

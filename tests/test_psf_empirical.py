"""The empirical PSF (engine.psf.empirical) on simulated stars whose PSF no analytic profile
fits: a coma-like sum of two Gaussians offset by 1.3 px (70% and 30% of the light). Held to the
simulator's truth (fluxes, the pixel-integrated PSF), to analytic answers (the noise-equivalent
area of a Gaussian) and to photutils' EPSFBuilder on the same stars."""

import math
import time
import warnings

import numpy as np
import pytest

from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.kernels.psf import add_stars
from engine.psf import choose_psf_model, fit_psf_model, psf_photometry
from engine.psf.empirical import EmpiricalPSF, fit_stars

SKY, READ_NOISE, FWHM = 100.0, 5.0, 3.0
# The second Gaussian's offset and share of the light; the light's centroid is at
# SHARE x OFFSET from the first one's centre.
OFFSET, SHARE = np.array([1.2, 0.6]), 0.3


def _render(image, x, y, flux):
    add_stars(image, x, y, (1 - SHARE) * flux, FWHM, profile="gaussian", radius=20.0, threads=1)
    add_stars(image, x + OFFSET[0], y + OFFSET[1], SHARE * flux, FWHM, profile="gaussian",
              radius=20.0, threads=1)
    return image


def _coma_field(seed=7, n=100, size=400, noise=True):
    """Stars of 2e4-3e5 e- on a flat sky; returns the image, the light's centroids, fluxes."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(20, size - 20, n)
    y = rng.uniform(20, size - 20, n)
    flux = 10 ** rng.uniform(4.3, 5.5, n)
    image = _render(np.full((size, size), SKY), x, y, flux)
    if noise:
        image = rng.poisson(image) + rng.normal(0.0, READ_NOISE, image.shape)
    return image, x + SHARE * OFFSET[0], y + SHARE * OFFSET[1], flux


@pytest.fixture(scope="module")
def coma():
    image, x, y, flux = _coma_field()
    start = time.perf_counter()
    psf = fit_psf_model(image, x, y, model="empirical", read_noise=READ_NOISE)
    return image, x, y, flux, psf, time.perf_counter() - start


def _robust_std(values):
    return 1.4826 * np.median(np.abs(values - np.median(values)))


def test_the_grid_is_the_true_pixel_integrated_psf(coma):
    *_, psf, _ = coma
    assert psf.model == "empirical" and not psf.failed and psf.stars_used >= 30
    for phase in (0.0, 0.25, 0.5):
        x0 = 20.0 + SHARE * OFFSET[0] + phase
        y0 = 20.0 + SHARE * OFFSET[1] - phase
        truth = _render(np.zeros((41, 41)), np.array([x0 - SHARE * OFFSET[0]]),
                        np.array([y0 - SHARE * OFFSET[1]]), np.array([1.0]))
        stamp = psf.stamp(x0, y0, (41, 41))
        # Flux is conserved at every sub-pixel phase; the shape within 2% of the peak.
        assert stamp.sum() == pytest.approx(1.0, abs=2e-3)
        assert np.abs(stamp - truth).max() < 0.02 * truth.max()


def test_fluxes_are_unbiased_and_their_errors_match_their_scatter(coma):
    image, x, y, flux, psf, _ = coma
    table = psf_photometry(image, x, y, psf=psf, read_noise=READ_NOISE).to_pydict()
    assert not any(table["flags"])
    ratio = np.array(table["flux"]) / flux
    pull = (np.array(table["flux"]) - flux) / np.array(table["flux_err"])
    assert abs(np.median(ratio) - 1) < 3e-3  # the grid holds the light within 2.5 FWHM
    assert 0.8 < np.std(pull - np.median(pull)) < 1.3
    assert np.median(table["chi2_reduced"]) < 1.1


def test_fitted_positions_return_the_light_centroid(coma):
    image, x, y, flux, psf, _ = coma
    rng = np.random.default_rng(1)
    table = psf_photometry(image, x + rng.uniform(-0.5, 0.5, x.size),
                           y + rng.uniform(-0.5, 0.5, y.size), psf=psf, fit_positions=True,
                           read_noise=READ_NOISE).to_pydict()
    bright = flux > 1e5
    assert np.abs(np.array(table["x"]) - x)[bright].max() < 0.05
    assert np.abs(np.array(table["y"]) - y)[bright].max() < 0.05


@pytest.mark.slow
def test_better_and_faster_than_photutils_epsfbuilder_on_the_same_stars(coma):
    from astropy.nddata import NDData
    from astropy.table import Table
    from photutils.psf import EPSFBuilder, PSFPhotometry, extract_stars

    image, x, y, flux, psf, ours_seconds = coma
    stars = extract_stars(NDData(image - SKY), Table({"x": x[psf.stars], "y": y[psf.stars]}),
                          size=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        built = EPSFBuilder(oversampling=4, maxiters=10, progress_bar=False)(stars)
        theirs_seconds = time.perf_counter() - start
        fitted = PSFPhotometry(built.epsf, (11, 11), aperture_radius=5)(
            image - SKY, init_params=Table({"x": x, "y": y}))
    ours = np.array(psf_photometry(image, x, y, psf=psf, read_noise=READ_NOISE)
                    .column("flux")) / flux
    theirs = np.array(fitted["flux_fit"]) / flux
    # Measured (2 shared cores): ours -0.24% and 0.39% robust scatter, built in 3.0 s;
    # photutils (oversampling 4, its PSFPhotometry with positions free) +2.8% and 12.5%, 53 s.
    assert ours_seconds < theirs_seconds
    assert abs(np.median(ours) - 1) < abs(np.median(theirs) - 1)
    assert _robust_std(ours) < _robust_std(theirs)


def test_choose_psf_model_takes_the_grid_where_no_profile_fits(coma):
    """Scored on held-out stars, the grid needs enough of them: with 80 stars on 300 x 300
    (28 PSF stars) the elliptical Gaussian's 1.16 still beats its 1.19; here 60 PSF stars."""
    image, x, y, *_ = coma
    model, report = choose_psf_model(image, x, y, read_noise=READ_NOISE)
    chi2 = report["chi2_reduced"]
    assert report["model"] == model.model == "empirical"
    assert chi2["empirical"] < 0.98 * min(v for k, v in chi2.items() if k != "empirical")
    assert chi2["empirical"] < 1.3  # held-out stars: the grid's own noise adds a little
    assert report["beta"] is None and not report["varying"]
    assert report["fwhm"] == pytest.approx(model.fwhm)


def test_noise_area_of_a_grid_from_gaussian_stars_is_the_gaussians():
    """4 pi (sigma^2 + 1/12) for a pixel-integrated Gaussian, to within the grid's reach."""
    rng = np.random.default_rng(2)
    x, y = rng.uniform(20, 280, 60), rng.uniform(20, 280, 60)
    image = np.full((300, 300), SKY)
    add_stars(image, x, y, np.full(60, 1e5), FWHM, profile="gaussian", radius=20.0, threads=1)
    psf = fit_psf_model(image, x, y, model="empirical", read_noise=READ_NOISE)
    sigma = FWHM / (2 * math.sqrt(2 * math.log(2)))
    assert psf.noise_area(6) == pytest.approx(4 * math.pi * (sigma ** 2 + 1 / 12), rel=0.02)
    assert psf.fwhm == pytest.approx(FWHM, rel=0.1)


def test_edges_and_failures_are_flagged(coma):
    image, x, y, _, psf, _ = coma
    table = psf_photometry(image, [x[0], -30.0, 1.0], [y[0], 50.0, 200.0], psf=psf,
                           read_noise=READ_NOISE).to_pydict()
    assert table["flags"][0] == 0
    assert table["flags"][1] & MeasurementFlag.OFF_FRAME and math.isnan(table["flux"][1])
    assert table["flags"][2] & MeasurementFlag.NEAR_EDGE
    failed = psf_photometry(image, x[:3], y[:3], psf=EmpiricalPSF.failure(),
                            read_noise=READ_NOISE).to_pydict()
    assert all(f & MeasurementFlag.FIT_FAILED for f in failed["flags"])
    assert all(math.isnan(f) for f in failed["flux"])


@pytest.mark.parametrize("spoil, expected", [
    ("saturated", MeasurementFlag.SATURATED), ("bad", MeasurementFlag.BAD_PIXEL),
    ("nan", MeasurementFlag.BAD_PIXEL)])
def test_a_spoilt_pixel_in_a_box_is_left_out_and_flagged(coma, spoil, expected):
    """One pixel of a star's box flagged (SATURATED, BAD) or not finite: the fit leaves it out
    (one pixel fewer, the flux within its error of the clean fit's) and flags the star."""
    image, x, y, _, psf, _ = coma
    clean = fit_stars(image, x[:1], y[:1], psf, box=4, read_noise=READ_NOISE)
    image = image.copy()
    pixel_flags = np.zeros(image.shape, dtype=np.uint8)
    row, column = math.ceil(y[0] - 0.5) + 2, math.ceil(x[0] - 0.5) - 1
    if spoil == "nan":
        image[row, column] = np.nan
    else:
        pixel_flags[row, column] = PixelFlag.SATURATED if spoil == "saturated" else PixelFlag.BAD
    spoilt = fit_stars(image, x[:1], y[:1], psf, box=4, read_noise=READ_NOISE,
                       pixel_flags=pixel_flags)
    assert clean["flags"][0] == 0 and spoilt["flags"][0] == expected
    assert spoilt["pixels"][0] == clean["pixels"][0] - 1 == 80
    assert abs(spoilt["flux"][0] - clean["flux"][0]) < spoilt["flux_err"][0]


def test_bad_inputs_are_clear_errors():
    image, x, y, _ = _coma_field(n=3, size=200)
    with pytest.raises(EngineValueError, match="no empirical PSF could be fitted"):
        fit_psf_model(image, x, y, model="empirical")
    with pytest.raises(EngineValueError, match="odd side"):
        EmpiricalPSF(np.ones((4, 4)), 2)
    with pytest.raises(EngineValueError, match="oversampling"):
        EmpiricalPSF(np.ones((5, 5)), 3)
    with pytest.raises(EngineValueError, match="model must be one of"):
        fit_psf_model(image, x, y, model="airy")

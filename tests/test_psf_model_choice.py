"""The PSF model chosen by the data (engine.psf.choose_psf_model): Gaussian stars get the
Gaussian (and unbiased fluxes, where the Moffat default was 0.77% low), Moffat stars the Moffat,
a field whose seeing changes across it a linear shape; the fit's noise-equivalent area against
the profiles' analytic integrals."""

import math

import numpy as np
import pytest

from engine.errors import EngineValueError
from engine.kernels.psf import add_stars
from engine.psf import (PSFModel, choose_psf_model, fit_psf_model, psf_photometry,
                        psf_residual_fraction)

FWHM, BETA, SKY, READ_NOISE = 3.0, 2.5, 100.0, 5.0


def _field(rng, profile, *, n=60, size=300, noise=True, fwhm=FWHM):
    """n stars of 1e4-1e5 e- on a flat sky; `fwhm` a number or a function of (x, y)."""
    x = rng.uniform(15, size - 15, n)
    y = rng.uniform(15, size - 15, n)
    flux = rng.uniform(1e4, 1e5, n)
    image = np.full((size, size), SKY)
    widths = fwhm(x, y) if callable(fwhm) else fwhm
    add_stars(image, x, y, flux, widths, profile=profile, beta=BETA, radius=25.0, threads=1)
    if noise:
        image = rng.poisson(image) + rng.normal(0.0, READ_NOISE, image.shape)
    return image, x, y, flux


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
def test_the_stars_choose_their_own_profile(profile):
    image, x, y, _ = _field(np.random.default_rng(3), profile)
    model, report = choose_psf_model(image, x, y, read_noise=READ_NOISE)
    assert model.model == report["model"] == profile
    assert not report["varying"]
    assert set(report["chi2_reduced"]) >= {"gaussian", "moffat"}
    # Noise-limited: the chosen model's reduced chi^2 is ~1, the other's is not lower.
    assert 0.8 < report["chi2_reduced"][profile] < 1.3
    assert abs(report["fwhm"] - FWHM) < 0.05 * FWHM
    assert report["stars_used"] >= 20
    assert (report["beta"] is None) == (profile == "gaussian")


def test_gaussian_stars_get_unbiased_fluxes_where_the_moffat_was_biased():
    image, x, y, flux = _field(np.random.default_rng(4), "gaussian", noise=False)
    model, report = choose_psf_model(image, x, y, read_noise=READ_NOISE)
    moffat = fit_psf_model(image, x, y, model="moffat", read_noise=READ_NOISE)

    def bias(psf):
        table = psf_photometry(image, x, y, psf=psf, read_noise=READ_NOISE).to_pydict()
        alone = np.array(table["flags"]) == 0
        return np.median(np.array(table["flux"])[alone] / flux[alone]) - 1.0

    assert report["model"] == "gaussian"
    assert abs(bias(model)) < 1e-4
    assert abs(bias(moffat)) > 3e-3  # the old default's bias, for contrast
    assert report["residual_fraction"] < 1e-4
    assert psf_residual_fraction(image, x, y, moffat, read_noise=READ_NOISE) > 1e-3


def test_a_field_whose_seeing_changes_across_it_gets_a_linear_shape():
    rng = np.random.default_rng(5)

    def seeing(x, y):
        return 2.5 + 1.5 * x / 300.0  # 2.5 px on the left edge, 4 px on the right

    image, x, y, _ = _field(rng, "gaussian", n=120, fwhm=seeing)
    model, report = choose_psf_model(image, x, y, read_noise=READ_NOISE)
    assert report["varying"] and model.varying
    assert report["chi2_reduced"]["gaussian varying"] < 0.98 * report["chi2_reduced"]["gaussian"]
    for px in (40.0, 260.0):
        assert model.parameters(px, 150.0)["fwhm"] == pytest.approx(seeing(px, 0), rel=0.05)
    flat, x, y, _ = _field(rng, "gaussian", n=120)
    assert not choose_psf_model(flat, x, y, read_noise=READ_NOISE)[1]["varying"]


def test_a_configured_profile_is_the_only_candidate():
    image, x, y, _ = _field(np.random.default_rng(6), "gaussian", n=30)
    model, report = choose_psf_model(image, x, y, profiles=("moffat",), read_noise=READ_NOISE)
    assert model.model == "moffat" and set(report["chi2_reduced"]) <= {"moffat", "moffat varying"}


def test_no_stars_to_fit_is_a_clear_error():
    with pytest.raises(EngineValueError, match="no PSF model could be fitted"):
        choose_psf_model(np.zeros((50, 50)), [25.0], [25.0])
    with pytest.raises(EngineValueError, match="no candidate profiles"):
        choose_psf_model(np.zeros((50, 50)), [25.0], [25.0], profiles=())


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
def test_noise_area_equals_the_profiles_integral_of_p_squared(profile):
    """1 / integral(p^2): 4 pi sigma^2 (Gaussian; integrating over pixels adds the pixel's
    variance 1/12 to sigma^2), pi alpha^2 (2 beta - 1) / (beta - 1)^2 (Moffat). A wide PSF in a
    box far larger makes the box edge negligible."""
    fwhm, box = 12.0, 60
    psf = PSFModel.from_parameters(profile, fwhm, BETA)
    if profile == "gaussian":
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        expected = 4 * math.pi * (sigma ** 2 + 1 / 12)
    else:
        alpha = fwhm / (2 * math.sqrt(2 ** (1 / BETA) - 1))
        expected = math.pi * alpha ** 2 * (2 * BETA - 1) / (BETA - 1) ** 2
    assert psf.noise_area(box) == pytest.approx(expected, rel=3e-3)
    # A sharper PSF concentrates the light: a smaller area.
    assert PSFModel.from_parameters(profile, 3.0, BETA).noise_area(box) < 0.1 * expected

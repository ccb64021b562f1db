"""Scintillation (Young 1967 / Osborn et al. 2015) and the CCD equation, against hand values."""

import math

import numpy as np
import pytest

from engine.errors import EngineValueError
from engine.noise import aperture_noise, scintillation_sigma


def test_scintillation_hand_computed():
    # D = 0.2 m, X = 1.5, h = 2326 m, t = 60 s, C_Y = 1.5 (Osborn et al. 2015, eq. 7):
    # sigma^2 = 1e-5 * 1.5^2 * 0.2^(-4/3) / 60 * 1.5^3 * exp(-2 * 2326 / 8000)
    #         = 1e-5 * 2.25 * 8.5499 / 60 * 3.375 * 0.55906 = 6.0496e-6  ->  sigma = 2.4596e-3
    assert scintillation_sigma(0.2, 1.5, 2326.0, 60.0) == pytest.approx(2.4596e-3, rel=2e-4)


def test_scintillation_scalings():
    base = scintillation_sigma(0.4, 1.2, 1000.0, 30.0)
    assert scintillation_sigma(0.8, 1.2, 1000.0, 30.0) == pytest.approx(base * 2 ** (-2 / 3))
    assert scintillation_sigma(0.4, 1.2, 1000.0, 120.0) == pytest.approx(base / 2.0)
    assert scintillation_sigma(0.4, 2.4, 1000.0, 30.0) == pytest.approx(base * 2 ** 1.5)
    assert scintillation_sigma(0.4, 1.2, 9000.0, 30.0) == pytest.approx(base * math.exp(-1.0))
    assert scintillation_sigma(0.4, 1.2, 1000.0, 30.0, c_y=3.0) == pytest.approx(base * 2.0)


def test_scintillation_agrees_with_youngs_original_at_zenith():
    # Young (1967): 0.09 D_cm^(-2/3) X^1.75 exp(-h / 8000) / sqrt(2 t). With C_Y = 1 the
    # Osborn form carries the same coefficient to the precision of Young's "0.09" (~7%).
    d, h, t = 0.35, 500.0, 45.0
    young = 0.09 * (100 * d) ** (-2 / 3) * math.exp(-h / 8000) / math.sqrt(2 * t)
    assert scintillation_sigma(d, 1.0, h, t, c_y=1.0) == pytest.approx(young, rel=0.08)


def test_scintillation_broadcasts():
    x = np.array([1.0, 1.5, 2.0])
    out = scintillation_sigma(0.3, x, 100.0, np.array([10.0, 20.0, 40.0]))
    assert out.shape == (3,)
    assert out[1] == pytest.approx(scintillation_sigma(0.3, 1.5, 100.0, 20.0))


@pytest.mark.parametrize("args", [
    (0.0, 1.0, 0.0, 10.0), (-1.0, 1.0, 0.0, 10.0), (0.2, 0.5, 0.0, 10.0),
    (0.2, 1.0, 0.0, 0.0), (0.2, np.nan, 0.0, 10.0), (0.2, 1.0, np.inf, 10.0),
])
def test_scintillation_bad_arguments(args):
    with pytest.raises(EngineValueError):
        scintillation_sigma(*args)


def test_aperture_noise_hand_computed():
    # F = 1e5 e-, 50 pixels, background from 500 pixels -> effective area 50 * 1.1 = 55.
    b = aperture_noise(1e5, 50, sky_e_per_pixel=100, dark_e_per_pixel=5, read_noise_e=8,
                       scintillation=0.002, n_sky_pixels=500, adc_step_e=2)
    assert b.star == pytest.approx(1 / math.sqrt(1e5))
    assert b.sky == pytest.approx(math.sqrt(55 * 100) / 1e5)
    assert b.dark == pytest.approx(math.sqrt(55 * 5) / 1e5)
    assert b.read == pytest.approx(math.sqrt(55) * 8 / 1e5)
    assert b.quantisation == pytest.approx(math.sqrt(55 / 12) * 2 / 1e5)
    assert b.scintillation == 0.002
    assert b.total == pytest.approx(3.8641e-3, rel=1e-4)
    assert b.snr == pytest.approx(1 / 3.8641e-3, rel=1e-4)
    assert set(b.terms()) == {"star", "sky", "dark", "read", "quantisation", "scintillation"}
    assert b.as_dict()["total"] == pytest.approx(b.total)


def test_aperture_noise_limits_and_arrays():
    bright = aperture_noise(np.array([1e4, 1e6, 1e9]), 30, 50, 0, 5, scintillation=0.003)
    assert bright.total[-1] == pytest.approx(0.003, rel=1e-3)  # scintillation floor
    assert np.all(np.diff(bright.total) < 0)
    faint = aperture_noise(10.0, 100, 0, 0, 10.0)               # read-noise limited
    assert faint.total == pytest.approx(math.sqrt(10 + 100 * 100) / 10)


def test_aperture_noise_matches_monte_carlo():
    # Star + sky + dark as Poisson counts, read noise as Gaussian, summed over the aperture,
    # with the background known: the scatter of the sums is the CCD equation's.
    rng = np.random.default_rng(11)
    n_pix, star, sky, dark, rn = 40, 3000.0, 60.0, 4.0, 7.0
    trials = 20000
    per_pixel = np.full(n_pix, star / n_pix)
    counts = rng.poisson(per_pixel + sky + dark, size=(trials, n_pix)) + rng.normal(
        0.0, rn, size=(trials, n_pix))
    flux = counts.sum(axis=1) - n_pix * (sky + dark)
    expected = aperture_noise(star, n_pix, sky, dark, rn).total
    assert np.std(flux) / star == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("kwargs", [
    dict(star_e=0.0), dict(star_e=-5.0), dict(n_pixels=0.0), dict(sky_e_per_pixel=-1.0),
    dict(read_noise_e=np.nan), dict(scintillation=-0.1), dict(n_sky_pixels=0.0),
])
def test_aperture_noise_bad_arguments(kwargs):
    args = dict(star_e=100.0, n_pixels=10.0)
    args.update(kwargs)
    with pytest.raises(EngineValueError):
        aperture_noise(**args)

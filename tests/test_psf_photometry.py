"""PSF photometry at the table level (engine.psf): close pairs, where apertures fail;
the fitted PSF model; the table's columns; blocks of frames; errors against the scatter."""

import math

import numpy as np
import pytest

import engine
from engine.flags import MeasurementFlag
from engine.kernels.psf import add_stars
from engine.psf import (PSFModel, fit_psf_model, fit_psf_models, psf_photometry,
                                   psf_photometry_frames)

FWHM, BETA = 3.0, 2.5
SKY, READ_NOISE = 150.0, 5.0


def _pairs_field(rng, separation_fwhm, n_side=8, cell=40):
    """Close pairs (fluxes 2e4 and 1e4, random orientation) and, on every fourth cell, an isolated
    star of 3e4 e-; Moffat PSF, Poisson sky and read noise. kind: 0 isolated, 1 primary,
    2 secondary."""
    size = n_side * cell
    image = np.full((size, size), SKY)
    x, y, flux, kind = [], [], [], []
    for j in range(n_side):
        for i in range(n_side):
            cx = (i + 0.5) * cell + rng.uniform(-1, 1)
            cy = (j + 0.5) * cell + rng.uniform(-1, 1)
            if (i + j) % 4 == 0:
                x.append(cx), y.append(cy), flux.append(3e4), kind.append(0)
                continue
            angle = rng.uniform(0, 2 * math.pi)
            half = 0.5 * separation_fwhm * FWHM
            x += [cx - half * math.cos(angle), cx + half * math.cos(angle)]
            y += [cy - half * math.sin(angle), cy + half * math.sin(angle)]
            flux += [2e4, 1e4]
            kind += [1, 2]
    x, y, flux, kind = (np.array(v) for v in (x, y, flux, kind))
    # Rendered out to 20 px: the wings beyond fall outside every fit box and aperture.
    add_stars(image, x, y, flux, FWHM, profile="moffat", beta=BETA, radius=20.0, threads=1)
    image = rng.poisson(image) + rng.normal(0.0, READ_NOISE, image.shape)
    return image, x, y, flux, kind


def _aperture_fluxes(image, x, y, flux, kind):
    """Aperture fluxes (radius 1.5 FWHM, annulus 4-6 FWHM, neighbours masked), corrected to total
    flux by the isolated stars' median ratio, and their errors."""
    table = engine.aperture_photometry(image, x, y, [1.5 * FWHM], annulus=(4 * FWHM, 6 * FWHM),
                                       read_noise=READ_NOISE).to_pydict()
    measured = np.array(table["flux"])
    correction = np.median(measured[kind == 0] / flux[kind == 0])
    return measured / correction, np.array(table["flux_err"]) / correction


@pytest.mark.parametrize("separation", [1.5, 2.0, 2.5])
def test_close_pairs_psf_fluxes_unbiased_where_apertures_are_biased(separation):
    rng = np.random.default_rng(int(separation * 10))
    psf = PSFModel.from_parameters("moffat", FWHM, BETA)
    psf_pulls, aperture_pulls, psf_ratio, aperture_ratio = [], [], [], []
    for _ in range(2):
        image, x, y, flux, kind = _pairs_field(rng, separation)
        pair = kind > 0
        table = psf_photometry(image, x, y, psf=psf, read_noise=READ_NOISE).to_pydict()
        assert not any(table["flags"])
        fitted, error = np.array(table["flux"]), np.array(table["flux_err"])
        psf_pulls.append(((fitted - flux) / error)[pair])
        psf_ratio.append((fitted / flux)[pair])
        aperture, aperture_error = _aperture_fluxes(image, x, y, flux, kind)
        aperture_pulls.append(((aperture - flux) / aperture_error)[pair])
        aperture_ratio.append((aperture / flux)[pair])
    psf_pulls, aperture_pulls = np.concatenate(psf_pulls), np.concatenate(aperture_pulls)
    standard_error = 1.0 / math.sqrt(psf_pulls.size)
    # PSF fluxes: unbiased within the noise, and their errors describe their scatter.
    assert abs(psf_pulls.mean()) < 4 * standard_error
    assert psf_pulls.std() == pytest.approx(1.0, abs=0.15)
    assert abs(np.mean(psf_ratio) - 1.0) < 0.004
    # Aperture fluxes of the same stars: biased high by the neighbour's light, far beyond noise.
    assert aperture_pulls.mean() > 10 * standard_error
    assert np.mean(aperture_ratio) - 1.0 > 0.03


def test_close_pairs_with_a_fitted_psf_and_fitted_positions():
    rng = np.random.default_rng(99)
    image, x, y, flux, kind = _pairs_field(rng, 1.5)
    psf = fit_psf_model(image, x, y, read_noise=READ_NOISE)
    assert set(psf.stars) <= set(np.flatnonzero(kind == 0))  # only isolated stars define the PSF
    assert psf.fwhm == pytest.approx(FWHM, rel=0.01)
    assert psf.parameters()["beta"] == pytest.approx(BETA, rel=0.05)
    x0 = x + rng.normal(0, 0.1, x.size)
    y0 = y + rng.normal(0, 0.1, y.size)
    table = psf_photometry(image, x0, y0, psf=psf, fit_positions=True, read_noise=READ_NOISE).to_pydict()
    pair = kind > 0
    ratio = (np.array(table["flux"]) / flux)[pair]
    assert abs(np.median(ratio) - 1.0) < 0.01  # the fitted PSF's own error, not the neighbour's
    offsets = np.hypot(np.array(table["x"]) - x, np.array(table["y"]) - y)
    assert np.median(offsets) < 0.03 and np.max(offsets) < 0.2
    assert np.all(np.array(table["iterations"]) > 1)


def test_table_has_the_aperture_columns_and_method():
    rng = np.random.default_rng(1)
    image, x, y, flux, kind = _pairs_field(rng, 2.0, n_side=4)
    psf_table = psf_photometry(image, x, y, psf=PSFModel.from_parameters("moffat", FWHM, BETA), box=5)
    aperture_table = engine.aperture_photometry(image, x, y, [4.0], annulus=(10, 15))
    for field in aperture_table.schema:
        assert psf_table.schema.field(field.name).type == field.type, field.name
    assert psf_table.column_names[:len(aperture_table.column_names)] == aperture_table.column_names
    d = psf_table.to_pydict()
    assert set(d["method"]) == {"psf"}
    assert set(d["radius"]) == {5.0}  # the fitting box half-width
    assert d["star"] == list(range(x.size))
    assert all(a == 121.0 for a in d["area"])  # every box whole and unflagged
    assert all(1.0 / 3 < c < 3.0 for c in d["chi2_reduced"])
    pair_pixels = [p for p, k in zip(d["background_pixels"], kind) if k > 0]
    assert min(pair_pixels) > 121  # pairs are fitted jointly on the union of their boxes


@pytest.mark.parametrize("model", ["moffat", "gaussian"])
def test_fit_psf_model_recovers_an_elliptical_psf(model):
    rng = np.random.default_rng(5)
    image = np.full((200, 200), 120.0)
    x = rng.uniform(12, 188, 40)
    y = rng.uniform(12, 188, 40)
    add_stars(image, x, y, 10 ** rng.uniform(3.8, 5.0, 40), 3.4, profile=model, beta=3.0,
              ellipticity=0.15, angle=0.6, threads=1)
    image = rng.poisson(image) + rng.normal(0, READ_NOISE, image.shape)
    psf = fit_psf_model(image, x, y, model=model, read_noise=READ_NOISE)
    p = psf.parameters()
    assert psf.flags == 0 and psf.stars_used >= 5
    assert p["fwhm"] == pytest.approx(3.4, rel=0.01)
    assert p["ellipticity"] == pytest.approx(0.15, abs=0.01)
    assert p["angle"] == pytest.approx(0.6, abs=0.05)
    if model == "moffat":
        assert p["beta"] == pytest.approx(3.0, rel=0.05)
    assert psf.chi2_reduced == pytest.approx(1.0, abs=0.1)
    assert not psf.varying


def test_field_varying_psf_is_recovered():
    # A Gaussian whose quadratic form is linear across the field: a = c = (1 + 0.4 u) / sigma^2,
    # u = (x - centre) / half-width, so the model can represent it exactly.
    rng = np.random.default_rng(6)
    size = 256
    image = np.full((size, size), 100.0)
    grid = np.arange(16, size - 15, 28, dtype=float)
    gx, gy = np.meshgrid(grid, grid)
    x = gx.ravel() + rng.uniform(-2, 2, gx.size)
    y = gy.ravel() + rng.uniform(-2, 2, gx.size)
    u = (x - (size - 1) / 2) / ((size - 1) / 2)
    sigma = 1.3 / np.sqrt(1 + 0.4 * u)
    add_stars(image, x, y, np.full(x.size, 5e4), 2 * math.sqrt(2 * math.log(2)) * sigma,
              profile="gaussian", threads=1)
    image = rng.poisson(image).astype(np.float64)
    constant = fit_psf_model(image, x, y, model="gaussian", max_stars=len(x))
    varying = fit_psf_model(image, x, y, model="gaussian", varying=True, max_stars=len(x))
    assert varying.varying and varying.stars_used >= 40
    a0, ax, ay, b0, bx, by, c0, cx, cy, _ = varying.coefficients
    assert a0 == pytest.approx(1 / 1.3 ** 2, rel=0.003) and c0 == pytest.approx(a0, rel=0.003)
    assert ax / a0 == pytest.approx(0.4, abs=0.01) and cx / c0 == pytest.approx(0.4, abs=0.01)
    assert max(abs(ay), abs(by), abs(cy), abs(b0), abs(bx)) < 0.005 * a0
    assert varying.chi2_reduced < 1.1 < constant.chi2_reduced
    # Photometry evaluates the PSF at each star.
    table = psf_photometry(image, x, y, psf=varying).to_pydict()
    pulls = (np.array(table["flux"]) - 5e4) / np.array(table["flux_err"])
    assert abs(pulls.mean()) < 4 / math.sqrt(pulls.size) and pulls.std() == pytest.approx(1, abs=0.25)


def test_frames_fit_each_psf_and_survive_a_blank_frame():
    rng = np.random.default_rng(8)
    n_frames, n_stars = 3, 30
    frames = np.full((n_frames, 160, 160), 80.0)
    x = rng.uniform(12, 148, (n_frames, n_stars))
    y = rng.uniform(12, 148, (n_frames, n_stars))
    flux = 10 ** rng.uniform(3.5, 4.7, n_stars)
    for f, fwhm in enumerate((2.8, 3.6)):
        add_stars(frames[f], x[f], y[f], flux, fwhm, profile="moffat", beta=BETA, threads=1)
    frames = rng.poisson(frames) + rng.normal(0, READ_NOISE, frames.shape)
    frames[2] = rng.normal(80.0, 9.0, frames.shape[1:])  # clouds: no star at all
    models = fit_psf_models(frames, x, y, read_noise=READ_NOISE)
    assert models[0].fwhm == pytest.approx(2.8, rel=0.02)
    assert models[1].fwhm == pytest.approx(3.6, rel=0.02)
    assert models[2].failed
    table = psf_photometry_frames(frames, x, y, read_noise=READ_NOISE).to_pydict()
    assert table["frame"] == [f for f in range(n_frames) for _ in range(n_stars)]
    fitted = np.array(table["flux"]).reshape(n_frames, n_stars)
    flags = np.array(table["flags"]).reshape(n_frames, n_stars)
    for f in (0, 1):
        assert np.all(flags[f] == 0)
        assert np.median(np.abs(fitted[f] / flux - 1)) < 0.02
    assert np.all(flags[2] == MeasurementFlag.FIT_FAILED) and np.all(np.isnan(fitted[2]))


def test_flux_errors_predict_the_scatter_and_gain_gives_electrons():
    rng = np.random.default_rng(21)
    gain = 2.0
    clean = np.full((41, 41), 300.0)
    add_stars(clean, [20.3], [19.8], [2e4], FWHM, profile="moffat", beta=BETA, threads=1)
    electrons = rng.poisson(np.broadcast_to(clean, (300, 41, 41))) + rng.normal(0, 6.0, (300, 41, 41))
    frames = electrons / gain
    psf = PSFModel.from_parameters("moffat", FWHM, BETA)
    table = psf_photometry_frames(frames, np.full((300, 1), 20.3), np.full((300, 1), 19.8), psf=psf,
                                  gain=gain, read_noise=6.0, model_variance=True).to_pydict()
    assert np.mean(table["flux"]) == pytest.approx(2e4, rel=0.003)
    assert np.std(table["flux"]) == pytest.approx(np.median(table["flux_err"]), rel=0.1)
    assert np.mean(table["background"]) == pytest.approx(300.0, rel=0.01)
    same = psf_photometry(electrons[0], [20.3], [19.8], psf=psf, read_noise=6.0, model_variance=True)
    assert same.column("flux")[0].as_py() == pytest.approx(table["flux"][0], rel=1e-9)

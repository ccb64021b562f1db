"""PSF photometry in the photometry stage (engine.photometry_stage with psf_photometry on): close
pairs (1.5-2.5 FWHM) that detection merges are found in the reference frame's PSF residual, and
the PSF light curves of both stars of every pair reach the noise their rows predict; the rows
carry the aperture rows' noise terms; the aperture rows are the same whether PSF is on or off."""

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial import cKDTree

from engine.photometry_stage import measure_run
from engine.kernels.psf import add_stars
from engine.settings.photometry import PhotometryConfig

FWHM, SKY, READ_NOISE = 3.0, 200.0, 5.0
SEPARATIONS = (1.5, 2.0, 2.5)


def _pairs_run(seed=0, n_frames=20, size=240, cell=30, pairs=True):
    """A run of Gaussian-seeing frames (FWHM 3 +- 7%, pointing jitter 0.3 px, gain 1) with
    pairs (2e4 + 1e4 e-, 1.5, 2 or 2.5 FWHM apart) and, on every third cell, an isolated star
    of 3e4 e- (every cell without pairs). Constant sky and stars: a star's flux scatters by
    its noise alone."""
    rng = np.random.default_rng(seed)
    x, y, flux, separation = [], [], [], []
    for j in range(size // cell):
        for i in range(size // cell):
            cx, cy = (i + 0.5) * cell, (j + 0.5) * cell
            if not pairs or (i + j) % 3 == 0:
                x.append(cx), y.append(cy), flux.append(3e4), separation.append(0.0)
                continue
            s = SEPARATIONS[len(separation) % 3]
            angle = rng.uniform(0, math.pi)
            half = 0.5 * s * FWHM
            x += [cx - half * math.cos(angle), cx + half * math.cos(angle)]
            y += [cy - half * math.sin(angle), cy + half * math.sin(angle)]
            flux += [2e4, 1e4]
            separation += [s, s]
    x, y, flux, separation = (np.array(v) for v in (x, y, flux, separation))
    cube = np.empty((n_frames, size, size), np.float32)
    for f in range(n_frames):
        dx, dy = rng.normal(0.0, 0.3, 2)
        image = np.full((size, size), SKY)
        add_stars(image, x + dx, y + dy, flux, FWHM * rng.uniform(0.93, 1.07),
                  profile="gaussian", radius=20.0, threads=1)
        cube[f] = rng.poisson(image) + rng.normal(0.0, READ_NOISE, image.shape)
    frames = pa.table({"gain": [1.0] * n_frames, "read_noise": [READ_NOISE] * n_frames,
                       "exptime": [300.0] * n_frames, "airmass": [1.0] * n_frames,
                       "site_height_m": [2000.0] * n_frames, "run_id": ["pairs"] * n_frames})
    return cube, frames, x, y, flux, separation


@pytest.fixture(scope="module")
def pairs_run():
    cube, frames, x, y, flux, separation = _pairs_run()
    # A large telescope and long exposures: scintillation, which the frames lack, is negligible.
    config = PhotometryConfig(psf_photometry=True, aperture_diameter_m=4.0)
    return measure_run(cube, frames, config=config), (cube, frames, x, y, flux, separation)


def _columns(table, *names):
    return [np.asarray(table.column(n).to_numpy(zero_copy_only=False)) for n in names]


def test_both_stars_of_close_pairs_reach_their_expected_noise(pairs_run):
    result, (_, _, x, y, flux, separation) = pairs_run
    assert result.psf["model"] == "gaussian"
    star_xy = np.c_[result.stars.column("x").to_numpy(), result.stars.column("y").to_numpy()]
    distance, star = cKDTree(star_xy).query(np.c_[x, y])
    assert np.all(distance < 0.6), "every star of every pair is in the star list"
    psf = result.photometry.filter(pa.compute.equal(result.photometry.column("method"), "psf"))
    number, value, error, flags = _columns(psf, "star", "flux", "flux_err", "flags")
    for s in SEPARATIONS:
        for brightness in (2e4, 1e4):
            ratios = []
            for k in np.flatnonzero((separation == s) & (flux == brightness)):
                rows = (number == star[k]) & (flags == 0)
                assert rows.sum() == len(result.registration)
                ratios.append(np.std(value[rows], ddof=1) / np.median(error[rows]))
                assert np.median(value[rows]) == pytest.approx(brightness, rel=0.05)
            # 20 frames: one star's ratio scatters by ~16%; the median over 13-15 stars by ~5%.
            assert np.median(ratios) == pytest.approx(1.0, abs=0.2), (s, brightness, ratios)


def test_psf_rows_carry_the_noise_terms_and_sum_to_their_error(pairs_run):
    result, _ = pairs_run
    table = result.photometry
    method = np.asarray(table.column("method").to_pylist())
    terms = ["var_star", "var_background", "var_background_error", "var_scintillation"]
    values = {t: _columns(table, t)[0] for t in terms + ["var_read", "flux_err", "flags"]}
    for name in ("psf", "aperture"):
        rows = (method == name) & (values["flags"] == 0)
        total = sum(values[t][rows] for t in terms)
        np.testing.assert_allclose(values["flux_err"][rows] ** 2, total, rtol=1e-12)
        assert np.all(values["var_read"][rows] > 0) and np.all(values["var_star"][rows] > 0)
    # The sky's share follows the PSF's noise-equivalent area (4 pi sigma^2 ~ 21 px^2 at 3 px).
    psf = (method == "psf") & (values["flags"] == 0)
    area = values["var_read"][psf] / READ_NOISE ** 2
    assert np.all((area > 15) & (area < 30))


def test_aperture_rows_do_not_change_when_psf_is_on():
    """Where the PSF residual finds no star the list missed, turning PSF photometry on adds
    rows and changes none (where it finds some, they join the list: their aperture rows are
    measured too, and the neighbours' annuli mask them)."""
    isolated, frames, *_ = _pairs_run(seed=1, n_frames=6, pairs=False)
    plain = measure_run(isolated, frames, config=PhotometryConfig(aperture_diameter_m=4.0))
    both = measure_run(isolated, frames,
                       config=PhotometryConfig(aperture_diameter_m=4.0, psf_photometry=True))
    assert plain.psf is None and both.psf is not None
    aperture = both.photometry.filter(pa.compute.equal(both.photometry.column("method"),
                                                       "aperture"))
    assert aperture.select(plain.photometry.column_names).equals(plain.photometry)
    assert both.stars.equals(plain.stars)


def test_the_ensemble_runs_on_psf_fluxes_and_their_errors_hold(pairs_run):
    """aperture='psf' once found 0 usable comparison stars (PSF rows had no noise terms): now
    the comparisons' PSF light curves scatter as their noise model says."""
    from engine.ensemble import build_run_lightcurve
    from engine.settings.ensemble import EnsembleConfig

    result, (_, frames, *_) = pairs_run
    n_frames = frames.num_rows
    frame_table = pa.table({"frame": np.arange(n_frames), "exptime": [300.0] * n_frames,
                            "airmass": [1.0] * n_frames,
                            "time_bjd_tdb": 2460000.5 + np.arange(n_frames) / 288.0})
    method = result.photometry.column("method")
    apertures = result.photometry.filter(pa.compute.equal(method, "aperture"))
    psf = result.photometry.filter(pa.compute.equal(method, "psf"))
    light_curve = build_run_lightcurve(apertures, frame_table, result.stars, target=0, psf=psf,
                                       config=EnsembleConfig(aperture="psf"))
    diagnostics = light_curve.diagnostics
    assert diagnostics["aperture"]["chosen"] == "psf"
    comparisons = diagnostics["weights"]["comparisons"]
    assert len(comparisons) >= 5
    ratios = [c["rms_mag"] / c["expected_rms_mag"] for c in comparisons]
    assert np.median(ratios) == pytest.approx(1.0, abs=0.25), ratios

"""PSF photometry on the real SAAO bulge series (../shared/data/real/saao_microlensing_bulge):
the two nights with many frames (2013-08-02, 13 frames; 2013-08-03, 22) and the series' first
frame (whose target pixel places the target). The ensemble scores PSF against every radius by
the check stars' scatter; the report holds the chosen PSF model and its fit quality.

Measured (this commit): the check stars' scatter, best aperture vs PSF, is 0.0084 vs 0.0135 mag
(08-02) and 0.0047 vs 0.0072 mag (08-03): PSF does not beat the best aperture on these frames
(1.6x and 1.5x its scatter).
The analytic profiles fit the bulge stars poorly (reduced chi^2 3-30, residual fraction
0.1-0.3; see report.json). The empirical grid, offered as a third candidate and scored on
held-out PSF stars, fits them no better (reduced chi^2 19.4 vs the Moffat's 10.3 on the first
frame, 9.5 vs 2.9 on 08-02, 24.1 vs 21.4 on 08-03: crowding, not the profile's shape, dominates
the misfit), so the Moffat stays chosen and the scatter is unchanged. The test holds PSF to
within a factor 2 of the best aperture so that a regression shows, and the grid's score to the
report."""

import json
from pathlib import Path

import pytest
from astropy.io import fits

from engine.pipeline import reduce
from engine.settings import PhotometryConfig, PipelineConfig

BULGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / \
    "saao_microlensing_bulge"
NIGHTS = ("2013-08-02", "2013-08-03")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BULGE.is_dir(), reason="../shared/data is not present")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    files = [BULGE / "AKB13475I0001.fits"] + [
        f for f in sorted(BULGE.glob("*.fits")) if fits.getheader(f)["DATE-OBS"] in NIGHTS]
    config = PipelineConfig(photometry=PhotometryConfig(psf_photometry=True))
    result = reduce(files, tmp_path_factory.mktemp("bulge"), target=("18:15:29", "-25:17:06"),
                    target_xy=(257.0, 243.5), config=config)
    return result.report["runs"]


def test_psf_light_curves_of_check_stars_against_the_best_aperture(report):
    long_runs = [d for run_id, d in report.items() if any(n in run_id for n in NIGHTS)]
    assert len(long_runs) == 2
    for diagnostics in long_runs:
        scatter = diagnostics["aperture"]["scatter_mag"]
        assert "check stars" in diagnostics["aperture"]["how"], json.dumps(diagnostics["aperture"])
        best = min(v for k, v in scatter.items() if k != "psf")
        assert 0 < scatter["psf"] < 2.0 * best, scatter


def test_the_report_holds_the_psf_model_and_its_fit_quality(report):
    for diagnostics in report.values():
        psf = diagnostics["photometry"]["psf"]
        assert psf["model"] in ("gaussian", "moffat", "empirical")
        assert psf["chi2_reduced"][psf["model"]] > 0
        assert psf["chi2_reduced"]["empirical"] > 0  # the grid was built and scored
        assert 0 < psf["residual_fraction"] < 1
        assert 2 < psf["fwhm"] < 9  # the README's seeing: 4.5-8 px PFWHM
